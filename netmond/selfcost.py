"""The daemon's own CPU use over a fixed recent window, for `status`.

psutil's cpu_percent(None) measures since its previous call, so `status`
answered "since whoever asked last" (0.05 s after another client, or an
hour). Instead the daemon records its CPU time every second
(`CpuWindow.record`, from its event loop) and `percent()` compares now with
the newest record at least `window` seconds old: every caller gets the CPU
use of the last 5 to 6 seconds (less only in the first 5 s after start).
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Callable

#: Seconds the figure covers (at least).
WINDOW = 5.0
#: How often the event loop records the CPU time.
RECORD_EVERY = 1.0


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process (every thread)."""
    t = os.times()
    return t.user + t.system


class CpuWindow:
    """(time, cpu seconds) records of the last `window` seconds and a bit."""

    def __init__(
        self,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
        cpu_seconds: Callable[[], float] = process_cpu_seconds,
    ) -> None:
        self.window = window
        self._clock = clock
        self._cpu = cpu_seconds
        self._records: deque[tuple[float, float]] = deque()
        self.record()

    def record(self) -> None:
        now = self._clock()
        self._records.append((now, self._cpu()))
        # Keep exactly one record older than the window: the start of it.
        while len(self._records) > 2 and now - self._records[1][0] >= self.window:
            self._records.popleft()

    def percent(self) -> float | None:
        """CPU use (% of one core) from the start of the window to now."""
        now, cpu = self._clock(), self._cpu()
        start = None
        for t, c in reversed(self._records):
            if now - t >= self.window:
                start = (t, c)
                break
        if start is None:
            start = self._records[0]  # the daemon is younger than the window
        elapsed = now - start[0]
        if elapsed <= 0:
            return None
        return max(0.0, 100.0 * (cpu - start[1]) / elapsed)

    def covered_seconds(self) -> float:
        """How many seconds percent() covers now."""
        now = self._clock()
        for t, _ in reversed(self._records):
            if now - t >= self.window:
                return now - t
        return now - self._records[0][0]
