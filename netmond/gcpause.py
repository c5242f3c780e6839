"""Keep the garbage collector's full passes off the daemon's answers.

At 100,000 sockets the daemon keeps some 400,000 objects the collector
tracks (rows, samples, the backend's per-socket records); a full pass over
them holds the GIL for half a second or more, and any `status` asked
meanwhile waits that long. Those objects live for many ticks and hold no
reference cycles, so scanning them finds nothing.

After each tick, `after_tick()` collects the young generations (cheap: what
the tick left over) and then freezes every object still alive into the
collector's permanent generation (gc.freeze), which full passes skip.
Reference counting still frees frozen objects as usual; only garbage in
reference cycles among them would wait, so every `full_every` seconds
everything is unfrozen and collected once, bounding what could wait to
that long (one pause per period instead of one every few ticks).
"""

from __future__ import annotations

import gc
import time
from typing import Callable

#: Seconds between full collections of everything (frozen objects included).
FULL_EVERY = 600.0


class GcPacer:
    """gc.freeze after each tick, a full collection every `full_every` s."""

    def __init__(self, full_every: float = FULL_EVERY, clock: Callable[[], float] = time.monotonic,
                 collector=gc) -> None:
        self.full_every = full_every
        self.clock = clock
        self.gc = collector
        self.last_full = clock()
        self.full_passes = 0

    def after_tick(self) -> None:
        now = self.clock()
        if now - self.last_full >= self.full_every:
            self.gc.unfreeze()
            self.gc.collect()
            self.last_full = now
            self.full_passes += 1
        else:
            self.gc.collect(1)
        self.gc.freeze()

    def close(self) -> None:
        """Hand everything back to the collector (the daemon stops)."""
        self.gc.unfreeze()
