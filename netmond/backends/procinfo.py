"""Process name and user per pid, cached per (pid, create_time).

Keying on create_time as well as pid means a recycled pid is never given the
previous owner's name. Lookups that fail because the process exited or access
was denied return (None, None) and are not fatal: a tick must never break on one
process.
"""

from __future__ import annotations

import psutil


class ProcessCache:
    """Caches (name, user) per pid; revalidates pid reuse by create time."""

    def __init__(self, max_entries: int = 65536) -> None:
        # pid -> (create_time, name, user)
        self._entries: dict[int, tuple[float, str | None, str | None]] = {}
        self._max = max_entries

    def lookup(self, pid: int | None) -> tuple[str | None, str | None]:
        """Return (process_name, user) for pid, or (None, None) if unknown."""
        if pid is None:
            return None, None
        try:
            proc = psutil.Process(pid)
            ctime = proc.create_time()
        except (psutil.Error, OSError):
            self._entries.pop(pid, None)
            return None, None
        hit = self._entries.get(pid)
        if hit is not None and hit[0] == ctime:
            return hit[1], hit[2]
        name = user = None
        try:
            with proc.oneshot():
                name = proc.name()
                try:
                    user = proc.username()
                except (KeyError, psutil.Error):
                    # uid with no passwd entry: show the number rather than nothing
                    user = str(proc.uids().real)
        except (psutil.Error, OSError, KeyError):
            pass
        if len(self._entries) >= self._max:
            self._entries.clear()  # bounded; refilling is cheap
        self._entries[pid] = (ctime, name, user)
        return name, user

    def forget_missing(self, alive: set[int]) -> None:
        """Drop entries of pids that are no longer alive (bounds memory)."""
        for pid in [p for p in self._entries if p not in alive]:
            del self._entries[pid]
