"""When the next tick is due: the sampling cadence, its back-off and recovery.

Pure (no clock, no sockets): the sampler tells it when each tick started and
how long it took, and asks when the next one is due.

- A tick that takes longer than the interval (a late tick) is followed at
  once: waiting a full interval after it would halve the sample rate for no
  reason (before: 100,000 sockets under load sampled at 0.4 ticks/s with a
  1 s interval, data aged to 4.7 s).
- Ticks that keep running late mean the interval cannot be held: after
  BACK_OFF_AFTER late ticks in a row the cadence backs off to an interval
  the ticks fit in with room to spare (HEADROOM times the tick, rounded up
  to a tenth of a second), so that the daemon does not sample back to back
  on a full core. `status` shows it (effective_interval, a warning).
- When ticks fit in the backed-off interval with room to spare (HEADROOM)
  for RECOVER_AFTER ticks in a row, the interval steps down, by at most
  half at a time and never below what the slowest of those ticks needs,
  back to the configured one.
"""

from __future__ import annotations

import math

#: Late ticks in a row before the cadence backs off.
BACK_OFF_AFTER = 3
#: A backed-off interval is at least this many times the tick that forced it.
HEADROOM = 1.5
#: Calm ticks in a row (fitting in half the interval) before stepping back.
RECOVER_AFTER = 5


def _tenths_up(seconds: float) -> float:
    return math.ceil(seconds * 10 - 1e-9) / 10


class Cadence:
    """The sampler's schedule: `interval` as configured, `current` as held."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.current = interval
        #: The tick that made the cadence back off (seconds), while it is.
        self.slow_tick: float | None = None
        self._late = 0
        self._calm = 0
        self._calm_worst = 0.0

    @property
    def backed_off(self) -> bool:
        """True while the configured interval cannot be held."""
        return self.current > self.interval

    def set_interval(self, interval: float) -> None:
        """A new configured interval: tried as it is, the back-off forgotten."""
        self.interval = self.current = interval
        self.slow_tick = None
        self._late = self._calm = 0
        self._calm_worst = 0.0

    def after_tick(self, started: float, took: float) -> float:
        """The monotonic time the next tick is due, given when this one started
        and how long it took (sample, state update, notifications). A time
        already past means: at once."""
        if took >= self.current:
            self._calm = 0
            self._calm_worst = 0.0
            self._late += 1
            if self._late >= BACK_OFF_AFTER:
                self._late = 0
                self.current = max(self.current, _tenths_up(took * HEADROOM))
                self.slow_tick = took
            return started + self.current
        self._late = 0
        if self.backed_off and took * HEADROOM < self.current:
            # Room to spare: after RECOVER_AFTER such ticks, step down by at
            # most half, never below what the slowest of them needs.
            self._calm += 1
            self._calm_worst = max(self._calm_worst, took)
            if self._calm >= RECOVER_AFTER:
                target = max(self.current / 2, self._calm_worst * HEADROOM)
                self.current = max(self.interval, _tenths_up(target))
                self.slow_tick = self._calm_worst  # what the warning quotes now
                self._calm = 0
                self._calm_worst = 0.0
                if not self.backed_off:
                    self.current = self.interval
                    self.slow_tick = None
        else:
            self._calm = 0
            self._calm_worst = 0.0
        return started + self.current

    def warning(self) -> str | None:
        """The status sentence while backed off, else None."""
        if not self.backed_off:
            return None
        took = f"{self.slow_tick:.2f}s" if self.slow_tick is not None else "longer"
        return (f"interval {self.interval:g}s cannot be held: ticks take {took}; sampling every "
                f"{self.current:g}s until they fit again (automatic back-off)")
