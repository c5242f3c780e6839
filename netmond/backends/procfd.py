"""Socket inode -> owning pid, from the links in /proc/PID/fd.

A socket's fd link reads "socket:[INODE]", and inet_diag reports the same
inode, so walking every process's fd directory maps each socket to a pid.
Walking all of /proc is the expensive part of attribution, so `SocketOwners`
does it as little as possible:

* only when the dump shows inodes it does not know yet, and never again for
  an inode that a full walk could not find (until `retry_unfound` seconds);
* the few processes that most recently opened sockets are searched first
  (every tick if need be; one searched for nothing stops being one), and the
  search stops as soon as every new inode is found: a new connection almost
  always belongs to a process that has just opened others;
* a full walk reads the processes it never searched first (new ones: a new
  socket is most likely theirs), then those holding the fewest sockets, so
  that one holding thousands is read only when the new socket is really there;
* a walk cut short by its time budget (`scan_time_budget`) goes on where it
  stopped at the next one, processes started since first, rather than begin
  again: on a loaded machine no walk gets through all of /proc in its budget,
  and walks begun afresh each time never reached the processes at the end of
  their order (among equals /proc's, ascending pids: the newest), whose
  sockets then had no process for as long as the load lasted;
* for each process it remembers which fd held which live socket, so a
  repeated search reads only the links of fds it has not seen (a socket fd is
  re-read once its socket is gone, since the fd number may be reused);
* a walk of all of /proc happens at most once per `min_full_scan_interval`
  (less a tenth: see _INTERVAL_SLACK).

Processes that vanish mid-walk and fd directories we may not read (other
users' processes when not root) are skipped silently: their sockets simply
have no known owner.
"""

from __future__ import annotations

import os
import time
from array import array
from itertools import filterfalse
from typing import Callable, Collection, Iterable, Sequence

#: A walk may begin this share of `min_full_scan_interval` early. The
#: daemon's ticks come at a fixed cadence, but refresh() is called after the
#: tick's dumps, whose duration varies: with walks spaced by exactly the
#: interval, a tick a few ms short of it skipped its walk (15 of 51 ticks
#: needing one, in a LinuxBackend at a 1 s cadence under load; 7 of 55 with
#: this slack), which made a walk cut short by its budget finish ticks later.
_INTERVAL_SLACK = 0.1

_SOCKET_LINK_PREFIX = "socket:["
_INODE_START = len(_SOCKET_LINK_PREFIX)


class _FdSockets:
    """One process's socket fds at its last search: fd numbers and their
    socket inodes, as two parallel arrays (16 bytes a socket, where a dict
    of fd name -> inode costs some 100: at 100,000 sockets, 9 MB)."""

    __slots__ = ("built_at", "fds", "inodes")

    def __init__(self, built_at: float) -> None:
        self.built_at = built_at
        self.fds = array("q")
        self.inodes = array("Q")

    def __len__(self) -> int:
        return len(self.fds)

    def by_fd(self) -> dict[int, int]:
        """fd -> inode, made for one search of the process (not kept)."""
        return dict(zip(self.fds, self.inodes))


_NO_FDS = _FdSockets(0.0)


class SocketOwners:
    """An inode -> pid index over /proc/*/fd, refreshed on demand."""

    def __init__(
        self,
        proc_root: str = "/proc",
        min_full_scan_interval: float = 1.0,
        recent_owners_searched: int = 8,
        retry_unfound: float = 30.0,
        fd_cache_max_age: float = 60.0,
        scan_time_budget: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._proc = proc_root
        self._min_full_scan_interval = min_full_scan_interval
        self._recent_owners_searched = recent_owners_searched
        self._retry_unfound = retry_unfound
        self._fd_cache_max_age = fd_cache_max_age
        self._scan_time_budget = scan_time_budget
        self._clock = clock
        self._owner: dict[int, int] = {}  # socket inode -> pid
        #: Inodes found held by more than one process (a listener shared by
        #: forked workers): their pid in `owners` is just one of them.
        self.shared: set[int] = set()
        # pid -> that process's socket fds and their inodes at its last search
        self._fd_sockets: dict[int, _FdSockets] = {}
        # pids that were last found with a new socket, oldest first (a dict as
        # an ordered set; bounded)
        self._recent_owners: dict[int, None] = {}
        self._unfound: set[int] = set()  # inodes a full walk could not place
        self._unfound_since = 0.0
        self._last_full_scan = float("-inf")
        self._walked_all = False  # a full walk of /proc has finished once
        # The walk cut short by its time budget, if any: the pids it has yet
        # to search in order, every pid it has listed (to tell processes
        # started since), and the inodes missing when it began (the only ones
        # it may write off as unfindable once it has searched every process).
        self._walk_left: list[int] = []
        self._walk_listed: set[int] = set()
        self._walk_for: set[int] = set()
        #: Number of full walks of /proc so far, each part of one cut short
        #: by its time budget counted (for tests and profiling).
        self.full_scans = 0
        #: Inodes that got an owner or another one, or lost it with their
        #: process, since the caller last emptied it: every other live
        #: socket's pid is what it was (a caller may skip looking it up).
        #: The caller empties it (LinuxBackend does, every tick).
        self.changed: set[int] = set()

    def owner(self, inode: int) -> int | None:
        """The pid holding socket `inode`, if known."""
        return self._owner.get(inode)

    @property
    def owners(self) -> dict[int, int]:
        """The whole inode -> pid map (read-only use: hot loops call .get)."""
        return self._owner

    def refresh(self, inodes: Collection[int]) -> None:
        """Bring the index up to date with the socket inodes of the latest dump.

        `inodes`: every non-zero inode the dump listed (a list: a socket the
        kernel listed twice may be there twice). Inodes no longer live are
        forgotten (bounded memory); new ones are searched for. The dump's
        inodes are made a set only when that is needed: to forget or to
        search. At 100,000 sockets the set is 4 MB, 6 while it grows, most of
        a tick's peak memory, and an idle host needs neither.
        """
        owner = self._owner
        live: set[int] | None = None
        if len(owner) + len(self._unfound) > len(inodes):
            live = self._forget_gone(inodes)  # more known than listed: some are gone
        now = self._clock()
        if self._unfound and now - self._unfound_since >= self._retry_unfound:
            self._unfound.clear()  # maybe the fd was passed, or the walk raced: try again
        missing = set(filterfalse(owner.__contains__, inodes))
        missing -= self._unfound
        if not missing:
            self._walk_left = []  # nothing left to look for: the next walk begins afresh
            return
        # A search needs every live inode (a fd whose socket is gone is read
        # again), and it is when one closed and one opened since that the
        # counts above balance: what is gone is forgotten now.
        if live is None:
            live = self._forget_gone(inodes)
        # The first walk is not cut short: at start every socket is new, and
        # one finished walk attributes them all at once. Cut into several
        # ticks, each would rebuild the rows of the sockets it placed, and at
        # 100,000 sockets those waves leave the daemon ~7 MB larger for good
        # (freed objects scattered over memory the allocator keeps).
        deadline = now + self._scan_time_budget if self._walked_all else float("inf")
        recent = list(self._recent_owners)[-self._recent_owners_searched:][::-1]
        missing, _ = self._search(recent, missing, live, deadline, recent=True)
        if missing and now - self._last_full_scan >= self._min_full_scan_interval * (1 - _INTERVAL_SLACK):
            self._last_full_scan = now
            self.full_scans += 1
            missing, unfindable = self._full_scan(missing, live, deadline, skip=set(recent))
            if unfindable:
                # Every readable process was searched: these are not ours to
                # find (other users', the kernel's, in flight between processes).
                if not self._unfound:
                    self._unfound_since = now
                self._unfound |= unfindable

    def _forget_gone(self, inodes: Collection[int]) -> set[int]:
        """Drop what the index holds of inodes not in `inodes`; returns them as a set."""
        live = inodes if isinstance(inodes, set) else set(inodes)
        owner = self._owner
        if len(owner) > len(live):
            for inode in owner.keys() - live:
                del owner[inode]
        if self.shared:
            self.shared &= live
        if self._unfound:
            self._unfound &= live
        return live

    def forget_pid(self, pid: int) -> None:
        """The process is gone (or its pid was reused): drop what it owned."""
        self._fd_sockets.pop(pid, None)
        self._recent_owners.pop(pid, None)
        for inode in [i for i, p in self._owner.items() if p == pid]:
            del self._owner[inode]
            self.changed.add(inode)

    # -- walking /proc -------------------------------------------------------
    def _full_scan(
        self, missing: set[int], live: set[int], deadline: float, skip: set[int]
    ) -> tuple[set[int], set[int]]:
        """Search every process but those in `skip` (just searched), going on
        with the walk cut short last time if there is one.

        Returns (inodes still missing, inodes to write off as unfindable):
        the latter only once a walk has searched every process, and only
        those missing since it began (a socket made since may be held by a
        process it searched before)."""
        try:
            pids = [int(name) for name in os.listdir(self._proc) if name.isdigit()]
        except OSError:
            return missing, set()
        present = set(pids)
        fd_sockets = self._fd_sockets
        for pid in [p for p in fd_sockets if p not in present]:
            del fd_sockets[pid]  # exited: bound the cache
        if self._walk_left:
            # Going on: the processes started since it began first, then
            # those it has not reached, in its order.
            started = [p for p in pids if p not in self._walk_listed and p not in skip]
            self._walk_listed.update(started)
            order = started + [p for p in self._walk_left if p in present and p not in skip]
        else:
            # Never searched first (new processes), then the fewest sockets
            # (at their last search): reading the fd directory of a process
            # holding 10,000 sockets costs ~10 ms, and a new socket is rarely
            # there (it would have been found as recent).
            order = sorted((p for p in pids if p not in skip),
                           key=lambda p: (p in fd_sockets, len(fd_sockets.get(p, _NO_FDS))))
            self._walk_listed, self._walk_for = present, set(missing)
        missing, searched = self._search(order, missing, live, deadline)
        if missing and searched < len(order):  # out of time: on from here next time
            self._walk_left = order[searched:]
            return missing, set()
        self._walk_left = []
        self._walked_all = True
        return missing, missing & self._walk_for

    def _search(
        self,
        pids: Sequence[int],
        missing: set[int],
        live: set[int],
        deadline: float,
        recent: bool = False,
    ) -> tuple[set[int], int]:
        """Scan the fd dirs of `pids` until no inode of `missing` is left.

        Returns (inodes still missing, how many of `pids` were searched): the
        search stops at `deadline`, and what is left is searched for again at
        a later refresh. `recent`: these are the recent owners, searched
        first; one that holds none of the missing inodes stops being one.
        """
        clock = self._clock
        for searched, pid in enumerate(pids):
            if not missing:
                return missing, searched
            if clock() > deadline:
                return missing, searched
            try:
                found = self._socket_fds(pid, live)
            except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
                self._fd_sockets.pop(pid, None)
                self._recent_owners.pop(pid, None)
                continue
            except OSError:  # PermissionError: another user's process
                continue
            owner = self._owner
            for inode in found:
                if inode in live:
                    held_by = owner.get(inode)
                    if held_by is not None and held_by != pid:
                        self.shared.add(inode)
                    if held_by != pid:
                        owner[inode] = pid
                        self.changed.add(inode)
            before = len(missing)
            missing.difference_update(found)
            if len(missing) < before:
                self._note_recent_owner(pid)
            elif recent:
                # Searched first for nothing: not the process opening sockets
                # now. A full walk finds it again when it is.
                self._recent_owners.pop(pid, None)
        return missing, len(pids)

    def _note_recent_owner(self, pid: int) -> None:
        recent = self._recent_owners
        recent.pop(pid, None)
        recent[pid] = None  # now the newest
        if len(recent) > 4 * self._recent_owners_searched:
            del recent[next(iter(recent))]

    def _socket_fds(self, pid: int, live: set[int]) -> Iterable[int]:
        """Socket inodes held by `pid` (raises OSError if it cannot be read).

        Uses the per-process memory of fd -> live socket so that only fds not
        seen before, or whose socket has gone, are read again.
        """
        now = self._clock()
        cached = self._fd_sockets.get(pid)
        # Rebuilt from scratch now and then: a fd number closed and reused
        # while its old socket lives on elsewhere (dup, fork) would otherwise
        # hide the new socket forever.
        if cached is not None and now - cached.built_at < self._fd_cache_max_age:
            built_at, known = cached.built_at, cached.by_fd()
        else:
            built_at, known = now, {}
        sockets = _FdSockets(built_at)
        fds, inodes = sockets.fds, sockets.inodes
        dir_fd = os.open(f"{self._proc}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in os.listdir(dir_fd):
                fd = int(name)
                inode = known.get(fd)
                if inode is None or inode not in live:
                    try:
                        link = os.readlink(name, dir_fd=dir_fd)
                    except OSError:
                        continue  # fd closed since listdir
                    if not link.startswith(_SOCKET_LINK_PREFIX):
                        continue
                    inode = int(link[_INODE_START:-1])
                fds.append(fd)
                inodes.append(inode)
        finally:
            os.close(dir_fd)
        self._fd_sockets[pid] = sockets
        return inodes
