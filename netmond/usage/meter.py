"""What the ticks moved, per hour, until the recorder writes it.

`MonitorState` calls `begin_tick(wall)` at the start of each tick and
`count(...)` for every byte delta it adds to an app's totals (the same
deltas, so the store says what `apps` says). This runs on the event loop in
the tick: a dict update per socket that moved bytes, nothing more; the
recorder takes the batch every few seconds and writes it in its own thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .store import hour_of

#: Keys held at most per batch and kind; bytes of further keys are not kept
#: (counted in `dropped_bytes`), so a store that cannot be written, or a
#: scan touching a million addresses, never grows the daemon without bound.
MAX_KEYS = 200_000


@dataclass
class Batch:
    """Bytes per (hour, app) and per (hour, remote ip, app), names of remotes."""

    apps: dict[tuple[int, str | None], list[int]] = field(default_factory=dict)
    remotes: dict[tuple[int, str, str | None], list[int]] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.apps or self.remotes)

    def merge(self, other: "Batch", max_keys: int = MAX_KEYS) -> int:
        """Add `other` into this batch, within max_keys per kind; returns
        the bytes of the app lines that did not fit."""
        dropped = 0
        for key, (s, r) in other.apps.items():
            entry = self.apps.get(key)
            if entry is None:
                if len(self.apps) >= max_keys:
                    dropped += abs(s) + abs(r)
                    continue
                entry = self.apps[key] = [0, 0]
            entry[0] += s
            entry[1] += r
        for rkey, (s, r) in other.remotes.items():
            entry = self.remotes.get(rkey)
            if entry is None:
                if len(self.remotes) >= max_keys:
                    continue  # the app lines still have these bytes
                entry = self.remotes[rkey] = [0, 0]
            entry[0] += s
            entry[1] += r
        for ip, host in other.hosts.items():
            self.hosts[ip] = host  # the newer name
        return dropped


class UsageMeter:
    """Sums the ticks' byte deltas per hour; `take()` hands the sums over."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max_keys
        self.batch = Batch()
        self._hour = 0
        #: Bytes not kept because a batch was full (see MAX_KEYS).
        self.dropped_bytes = 0
        #: The daemon's remote names (a non-blocking cache read), or None.
        #: A name is usually found after a new connection's first bytes were
        #: counted; a short connection moves no bytes after that, so its
        #: remote would be stored without a name unless asked again here.
        self.names: Callable[[str], str | None] | None = None

    def begin_tick(self, wall: float) -> None:
        """The tick's bytes count in the hour of its sample."""
        self._hour = hour_of(wall)

    def count(self, app: str | None, remote_ip: str | None, remote_host: str | None,
              sent: int, received: int) -> None:
        """Add one socket's delta (negative: bytes moved to another app)."""
        batch = self.batch
        key = (self._hour, app)
        entry = batch.apps.get(key)
        if entry is None:
            if len(batch.apps) >= self.max_keys:
                self.dropped_bytes += abs(sent) + abs(received)
                return
            entry = batch.apps[key] = [0, 0]
        entry[0] += sent
        entry[1] += received
        if remote_ip is None:
            return
        rkey = (self._hour, remote_ip, app)
        entry = batch.remotes.get(rkey)
        if entry is None:
            if len(batch.remotes) >= self.max_keys:
                return  # the app's line above has these bytes
            entry = batch.remotes[rkey] = [0, 0]
        entry[0] += sent
        entry[1] += received
        if remote_host:
            batch.hosts[remote_ip] = remote_host

    def take(self) -> Batch:
        """The bytes counted since the last take; the meter starts afresh."""
        batch, self.batch = self.batch, Batch()
        names = self.names
        if names is not None:
            for ip in {rkey[1] for rkey in batch.remotes} - batch.hosts.keys():
                name = names(ip)
                if name:
                    batch.hosts[ip] = name
        return batch
