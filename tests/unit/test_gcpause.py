"""netmond/gcpause.py: freeze after each tick, a full pass every period."""

from __future__ import annotations

import gc

from netmond.gcpause import GcPacer


class Recorder:
    """A stand-in for the gc module that records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def collect(self, generation: int = 2) -> int:
        self.calls.append(("collect", generation))
        return 0

    def freeze(self) -> None:
        self.calls.append(("freeze",))

    def unfreeze(self) -> None:
        self.calls.append(("unfreeze",))


def test_each_tick_collects_the_young_then_freezes_and_a_full_pass_comes_every_period():
    now = [0.0]
    rec = Recorder()
    pacer = GcPacer(full_every=60, clock=lambda: now[0], collector=rec)
    for t in (1, 2, 59):
        now[0] = t
        pacer.after_tick()
    assert rec.calls == [("collect", 1), ("freeze",)] * 3
    rec.calls.clear()
    now[0] = 60
    pacer.after_tick()
    assert rec.calls == [("unfreeze",), ("collect", 2), ("freeze",)]
    assert pacer.full_passes == 1
    rec.calls.clear()
    now[0] = 100
    pacer.after_tick()  # the period starts again from the full pass
    assert rec.calls == [("collect", 1), ("freeze",)]
    pacer.close()
    assert rec.calls[-1] == ("unfreeze",)


def test_with_the_real_collector_frozen_objects_are_skipped_and_handed_back():
    pacer = GcPacer(full_every=3600)
    try:
        pacer.after_tick()
        assert gc.get_freeze_count() > 0
    finally:
        pacer.close()
    assert gc.get_freeze_count() == 0
