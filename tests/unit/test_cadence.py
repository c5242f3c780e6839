"""The sampler's schedule (netmond/cadence.py): late ticks, back-off, recovery.

Pure: a simulated clock drives the Cadence the way the sampler does (tick,
then wait until the time it gives, or not at all when that time is past).
"""

from __future__ import annotations

import pytest

from netmond.cadence import BACK_OFF_AFTER, HEADROOM, RECOVER_AFTER, Cadence


def run(cadence: Cadence, durations: list[float], start: float = 100.0) -> list[float]:
    """Start times of the ticks, as the sampler would take them."""
    now, starts = start, []
    for took in durations:
        starts.append(now)
        due = cadence.after_tick(now, took)
        now = max(due, now + took)  # due already past: the next tick starts at once
    return starts


def test_ticks_that_fit_keep_the_interval():
    c = Cadence(1.0)
    starts = run(c, [0.2] * 10)
    assert [round(b - a, 6) for a, b in zip(starts, starts[1:])] == [1.0] * 9
    assert not c.backed_off and c.warning() is None


def test_a_late_tick_is_followed_at_once():
    c = Cadence(1.0)
    starts = run(c, [0.2, 1.7, 0.2, 0.2])
    # 1.7 s tick: the next one starts as it ends, not a full interval later.
    assert starts[2] - starts[1] == pytest.approx(1.7)
    assert starts[3] - starts[2] == pytest.approx(1.0)
    assert not c.backed_off  # one late tick is a spike, not a trend


def test_late_ticks_in_a_row_back_off_visibly():
    c = Cadence(1.0)
    run(c, [1.3] * (BACK_OFF_AFTER - 1))
    assert not c.backed_off
    run(c, [1.3])
    assert c.backed_off
    assert c.current == pytest.approx(2.0)  # 1.3 * 1.5 = 1.95, up to a tenth
    assert c.current >= 1.3 * HEADROOM
    text = c.warning()
    assert text is not None and "cannot be held" in text and "2s" in text and "1.30s" in text and "take" in text
    # Backed off: the ticks are spaced, no longer back to back.
    starts = run(c, [1.3] * 3, start=200.0)
    assert [round(b - a, 6) for a, b in zip(starts, starts[1:])] == [2.0, 2.0]


def test_back_off_grows_while_ticks_keep_outrunning_it():
    c = Cadence(1.0)
    run(c, [1.3] * BACK_OFF_AFTER)
    run(c, [3.0] * BACK_OFF_AFTER)
    assert c.current == pytest.approx(4.5)


def test_spread_out_late_ticks_never_back_off():
    c = Cadence(1.0)
    run(c, [1.5, 0.2] * 20)
    assert not c.backed_off


def test_recovery_steps_back_to_the_configured_interval_when_load_drops():
    c = Cadence(1.0)
    run(c, [3.0] * BACK_OFF_AFTER)
    assert c.current == pytest.approx(4.5)
    run(c, [0.2] * (RECOVER_AFTER - 1))
    assert c.current == pytest.approx(4.5)  # not on the first calm ticks
    seen = [c.current]
    for _ in range(10):
        run(c, [0.2] * RECOVER_AFTER)
        seen.append(c.current)
    # Halving steps, never below the configured interval, then held there.
    assert seen[:4] == pytest.approx([4.5, 2.3, 1.2, 1.0])
    assert not c.backed_off and c.warning() is None and c.slow_tick is None


def test_recovery_stops_where_the_ticks_still_need_room():
    c = Cadence(1.0)
    run(c, [3.0] * BACK_OFF_AFTER)
    for _ in range(10):
        run(c, [0.9] * RECOVER_AFTER)  # fits 1 s, but not with headroom
    assert c.current == pytest.approx(1.4)  # 0.9 * 1.5 = 1.35, up to a tenth
    assert c.backed_off


def test_a_calm_streak_is_broken_by_a_slow_tick():
    c = Cadence(1.0)
    run(c, [3.0] * BACK_OFF_AFTER)
    run(c, [0.2] * (RECOVER_AFTER - 1) + [3.5] + [0.2] * (RECOVER_AFTER - 1))
    assert c.current == pytest.approx(4.5)


def test_a_new_interval_forgets_the_back_off():
    c = Cadence(1.0)
    run(c, [1.3] * BACK_OFF_AFTER)
    assert c.backed_off
    c.set_interval(5.0)
    assert c.current == 5.0 and not c.backed_off and c.warning() is None
    starts = run(c, [1.3] * 4)
    assert [round(b - a, 6) for a, b in zip(starts, starts[1:])] == [5.0] * 3


def test_the_warning_quotes_the_ticks_that_set_the_current_interval():
    c = Cadence(1.0)
    run(c, [3.0] * BACK_OFF_AFTER)
    assert "ticks take 3.00s; sampling every 4.5s" in c.warning()
    run(c, [1.0] * RECOVER_AFTER)
    assert c.current == pytest.approx(2.3)
    assert "ticks take 1.00s; sampling every 2.3s" in c.warning()
