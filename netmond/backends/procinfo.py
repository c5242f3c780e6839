"""Process name and user per pid, cached per (pid, create_time, comm).

Keying on create_time as well as pid means a recycled pid is never given the
previous owner's name; on Linux the kernel's short name (comm) is checked
too, from the same read of /proc/<pid>/stat, so that a process that took a
new name since (exec after fork, prctl, a program setting its title) is
named anew instead of keeping the old one for its whole life. Lookups that fail because the process exited or access
was denied return (None, None) and are not fatal: a tick must never break on one
process.

Names and users are decoded with common.ostext.os_text: any user can give a
process a name that is not UTF-8, and such a name must still travel in
replies, notifications, logs and metrics (shown with U+FFFD where the bytes
were invalid).
"""

from __future__ import annotations

import os
import pwd

import psutil

from common.ostext import os_text


class UserNames:
    """uid -> user name, cached (bounded); the uid as text if it has no name."""

    def __init__(self, limit: int = 4096) -> None:
        self._names: dict[int, str] = {}
        self._limit = limit

    def __call__(self, uid: int) -> str:
        name = self._names.get(uid)
        if name is None:
            try:
                name = os_text(pwd.getpwuid(uid).pw_name)
            except KeyError:
                name = str(uid)
            if len(self._names) >= self._limit:
                self._names.clear()
            self._names[uid] = name
        return name


_PROC_STAT = "/proc/{}/stat"
_HAVE_PROC = os.path.exists("/proc/self/stat")


def _stat_identity(pid: int) -> tuple[bytes, bytes] | None:
    """(start time, comm) of pid as /proc/<pid>/stat says them: both change
    when the pid is reused, comm when the process takes a new name. None:
    no such process (or no /proc)."""
    try:
        with open(_PROC_STAT.format(pid), "rb") as f:
            stat = f.read()
    except OSError:
        return None
    close = stat.rfind(b")")  # comm may hold spaces and parentheses
    fields = stat[close + 2:].split()
    if close < 0 or len(fields) < 20:
        return None
    return fields[19], stat[stat.find(b"(") + 1:close]  # field 22: starttime


def _identity(pid: int) -> object | None:
    """What tells this process from another with its pid, and says when it
    was renamed where the OS lets us see it: /proc's (start time, comm) on
    Linux, psutil's create_time elsewhere. None: no such process."""
    if _HAVE_PROC:
        return _stat_identity(pid)
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


class ProcessCache:
    """Caches (name, user) per pid; revalidates pid reuse by create time."""

    def __init__(self, max_entries: int = 65536, user_names: UserNames | None = None) -> None:
        # pid -> (identity, name, user); identity: (start time, comm) from
        # /proc on Linux, psutil's create_time elsewhere.
        self._entries: dict[int, tuple[object, str | None, str | None]] = {}
        self._max = max_entries
        #: uid -> name, shared with whoever names socket owners without a pid.
        self.user_names = user_names if user_names is not None else UserNames()

    def lookup(self, pid: int | None) -> tuple[str | None, str | None]:
        """Return (process_name, user) for pid, or (None, None) if unknown."""
        if pid is None:
            return None, None
        identity = _identity(pid)
        if identity is None:
            self._entries.pop(pid, None)
            return None, None
        hit = self._entries.get(pid)
        if hit is not None and hit[0] == identity:
            return hit[1], hit[2]
        try:
            proc = psutil.Process(pid)
        except (psutil.Error, OSError):
            self._entries.pop(pid, None)
            return None, None
        name = user = None
        try:
            with proc.oneshot():
                name = os_text(proc.name())
                # What psutil's username() does, through the shared cache: a
                # uid with no passwd entry shows as the number.
                user = self.user_names(proc.uids().real)
        except (psutil.Error, OSError):
            pass
        if len(self._entries) >= self._max:
            self._entries.clear()  # bounded; refilling is cheap
        self._entries[pid] = (identity, name, user)
        return name, user

    def forget_missing(self, alive: set[int]) -> None:
        """Drop entries of pids that are no longer alive (bounds memory)."""
        for pid in [p for p in self._entries if p not in alive]:
            del self._entries[pid]
