"""netmond.selfcost.CpuWindow: the daemon's CPU over a fixed window, whoever asks."""

from __future__ import annotations

import pytest

from netmond.selfcost import CpuWindow


class Fake:
    def __init__(self) -> None:
        self.now = 0.0
        self.cpu = 0.0


def test_percent_is_over_the_last_window_whoever_asked_before():
    f = Fake()
    w = CpuWindow(window=5.0, clock=lambda: f.now, cpu_seconds=lambda: f.cpu)
    for _ in range(20):  # 20 s at 10 %, recorded every second
        f.now += 1.0
        f.cpu += 0.1
        w.record()
    for _ in range(5):  # then 5 s at 50 %
        f.now += 1.0
        f.cpu += 0.5
        w.record()
    f.now += 0.5
    f.cpu += 0.25
    first = w.percent()
    f.now += 0.05  # another caller 50 ms later gets (nearly) the same figure
    f.cpu += 0.025
    second = w.percent()
    assert 5.0 <= w.covered_seconds() < 6.5
    assert first == pytest.approx(100 * (0.5 * 5 + 0.25) / 5.5, rel=0.01)  # from the record at 20 s
    assert second == pytest.approx(first, rel=0.05)


def test_a_young_daemon_reports_since_its_start_and_records_stay_bounded():
    f = Fake()
    w = CpuWindow(window=5.0, clock=lambda: f.now, cpu_seconds=lambda: f.cpu)
    f.now, f.cpu = 2.0, 0.5
    assert w.percent() == pytest.approx(25.0) and w.covered_seconds() == pytest.approx(2.0)
    for _ in range(1000):
        f.now += 1.0
        w.record()
    assert len(w._records) <= 8
