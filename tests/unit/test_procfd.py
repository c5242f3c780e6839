"""procfd.SocketOwners: the inode -> pid index, over a fake /proc tree.
"""

from __future__ import annotations

import os

from netmond.backends.procfd import SocketOwners

from tests.linux_fakes import Clock


def test_owner_index_maps_inodes_to_pids(fake_proc) -> None:
    fake_proc.add(10, 3, "socket:[100]")
    fake_proc.add(10, 4, "/dev/null")
    fake_proc.add(20, 5, "socket:[200]")
    fake_proc.add(20, 6, "pipe:[300]")
    index = SocketOwners(str(fake_proc.root), clock=Clock())
    index.refresh({100, 200})
    assert (index.owner(100), index.owner(200)) == (10, 20)
    assert index.full_scans == 1


def test_owner_index_reads_a_process_holding_many_sockets_only_when_it_must(fake_proc) -> None:
    # pid 10 holds many sockets; new ones keep appearing in pids 20 and 30.
    clock = Clock()
    for fd in range(50):
        fake_proc.add(10, 100 + fd, f"socket:[{1000 + fd}]")
    fake_proc.add(20, 3, "socket:[2000]")
    index = SocketOwners(str(fake_proc.root), min_full_scan_interval=1.0, clock=clock)
    read: list[int] = []
    real_socket_fds = index._socket_fds
    index._socket_fds = lambda pid, live: read.append(pid) or real_socket_fds(pid, live)
    live = set(range(1000, 1050)) | {2000}
    index.refresh(live)
    assert index.owner(1000) == 10 and index.owner(2000) == 20
    # A socket of another process: pid 10, the biggest recent owner, is
    # searched first once, for nothing; then walks read it last.
    fake_proc.add(30, 3, "socket:[3000]")
    clock.now += 1.0
    read.clear()
    index.refresh(live | {3000})
    assert index.owner(3000) == 30
    fake_proc.add(30, 4, "socket:[3001]")
    clock.now += 1.0
    read.clear()
    index.refresh(live | {3000, 3001})
    assert index.owner(3001) == 30 and 10 not in read  # pid 30 is the recent owner now
    fake_proc.add(20, 4, "socket:[2001]")
    clock.now += 1.0
    read.clear()
    index.refresh(live | {3000, 3001, 2001})
    assert index.owner(2001) == 20 and 10 not in read  # a walk, fewest sockets first
    # A new socket of the big process itself is still found.
    fake_proc.add(10, 200, "socket:[1100]")
    clock.now += 1.0
    index.refresh(live | {3000, 3001, 2001, 1100})
    assert index.owner(1100) == 10


def test_owner_index_rescans_only_for_new_inodes_and_at_a_bounded_rate(fake_proc) -> None:
    clock = Clock()
    fake_proc.add(10, 3, "socket:[100]")
    index = SocketOwners(str(fake_proc.root), min_full_scan_interval=1.0, clock=clock)
    index.refresh({100})
    index.refresh({100})
    assert index.full_scans == 1  # nothing new: no walk
    # a new socket of a known owner is found without walking all of /proc
    fake_proc.add(10, 4, "socket:[101]")
    index.refresh({100, 101})
    assert index.owner(101) == 10 and index.full_scans == 1
    # a socket of a new process needs a full walk: not twice within a second
    fake_proc.add(30, 3, "socket:[300]")
    clock.now += 0.1
    index.refresh({100, 101, 300})
    assert index.owner(300) is None and index.full_scans == 1
    clock.now += 1.0
    index.refresh({100, 101, 300})
    assert index.owner(300) == 30 and index.full_scans == 2


def test_owner_index_walks_on_ticks_a_little_short_of_the_interval(fake_proc) -> None:
    # Ticks every second, each refresh a few ms early or late (after dumps
    # of varying length): every tick gets its walk.
    clock = Clock()
    fake_proc.add(10, 3, "socket:[100]")
    index = SocketOwners(str(fake_proc.root), min_full_scan_interval=1.0, clock=clock)
    index.refresh({100})
    for n, offset in enumerate([-0.02, 0.01, -0.03], start=2):
        fake_proc.add(10 * n, 3, f"socket:[{100 * n}]")
        clock.now += 1.0 + offset
        index.refresh({100 * k for k in range(1, n + 1)})
        assert index.full_scans == n and index.owner(100 * n) == 10 * n


def test_owner_index_does_not_chase_unfindable_inodes(fake_proc) -> None:
    clock = Clock()
    fake_proc.add(10, 3, "socket:[100]")
    index = SocketOwners(str(fake_proc.root), min_full_scan_interval=1.0, retry_unfound=30.0, clock=clock)
    index.refresh({100, 999})  # 999: held by no fd we can see
    for _ in range(5):
        clock.now += 2.0
        index.refresh({100, 999})
    assert index.full_scans == 1
    clock.now += 30.0
    index.refresh({100, 999})
    assert index.full_scans == 2  # retried after retry_unfound


def test_owner_index_resumes_a_walk_cut_short_by_its_time_budget(fake_proc) -> None:
    class SlowClock(Clock):
        step = 1.0  # every look at the clock: a second later

        def __call__(self) -> float:
            self.now += self.step
            return self.now

    clock = SlowClock()
    clock.step = 0.0
    fake_proc.add(5, 3, "socket:[50]")
    index = SocketOwners(str(fake_proc.root), scan_time_budget=0.5, retry_unfound=30.0, clock=clock)
    index.refresh({50})  # the first walk: never cut short
    assert index.owner(50) == 5
    clock.step = 1.0
    clock.now += 2.0
    fake_proc.add(10, 3, "socket:[100]")
    index.refresh({50, 100})
    assert index.owner(100) is None  # out of time before reaching pid 10
    clock.step = 0.0
    clock.now += 2.0
    index.refresh({50, 100})  # not written off as unfindable: searched again at once
    assert index.owner(100) == 10


def test_the_first_walk_of_proc_is_never_cut_short(fake_proc) -> None:
    class SlowClock(Clock):
        def __call__(self) -> float:
            self.now += 1.0  # every look at the clock: a second later
            return self.now

    for pid in (10, 11, 12):
        fake_proc.add(pid, 3, f"socket:[{pid * 10}]")
    index = SocketOwners(str(fake_proc.root), scan_time_budget=0.5, clock=SlowClock())
    index.refresh({100, 110, 120})
    assert (index.owner(100), index.owner(110), index.owner(120)) == (10, 11, 12)


class _TickingClock(Clock):
    """Every look at the clock a tenth of a second later: a walk with a 0.5 s
    budget searches 3 processes (two looks each), as on a loaded machine
    where a walk never gets through all of /proc."""

    def __call__(self) -> float:
        self.now += 0.1
        return self.now


def _refresh_until(index: SocketOwners, clock: Clock, live: set[int], done, refreshes: int = 30) -> int:
    """Refresh once a second (a tick) until done(); returns how many it took."""
    for n in range(1, refreshes + 1):
        index.refresh(live)
        if done():
            return n
        clock.now += 1.0
    raise AssertionError(f"not done after {refreshes} refreshes")


def _after_the_first_walk(index: SocketOwners, clock: Clock) -> None:
    """The first walk, which no budget cuts short (at start), is over: the
    next ones have their budget."""
    index.refresh({1})  # held by nobody: walked to the end, written off
    assert index._walked_all and 1 in index._unfound
    clock.now += 1.0


def test_owner_index_gets_through_all_of_proc_when_no_walk_fits_its_budget(fake_proc) -> None:
    # 30 processes without sockets and one holding socket 5000; each walk
    # has time for 3. Begun afresh each time, walks searched the same first
    # processes for ever: a new process' sockets (the test's peers under
    # load) had no owner for as long as the load lasted.
    for pid in range(100, 130):
        fake_proc.add(pid, 0, "/dev/null")
    fake_proc.add(200, 3, "socket:[5000]")
    clock = _TickingClock()
    index = SocketOwners(str(fake_proc.root), min_full_scan_interval=1.0, scan_time_budget=0.5, clock=clock)
    _after_the_first_walk(index, clock)
    assert _refresh_until(index, clock, {5000}, lambda: index.owner(5000) == 200, refreshes=15) > 1
    # Every process searched once (a walk to its end writes 9999 off), the
    # last of the walk's order gets a socket: found as well.
    _refresh_until(index, clock, {5000, 9999}, lambda: 9999 in index._unfound, refreshes=15)
    last = [int(name) for name in os.listdir(fake_proc.root) if name.isdigit() and name != "200"][-1]
    fake_proc.add(last, 3, "socket:[6000]")
    _refresh_until(index, clock, {5000, 9999, 6000}, lambda: index.owner(6000) == last, refreshes=15)


def test_owner_index_writes_off_only_what_a_walk_looked_for_from_its_start(fake_proc) -> None:
    for pid in range(100, 110):
        fake_proc.add(pid, 0, "/dev/null")
    clock = _TickingClock()
    index = SocketOwners(str(fake_proc.root), min_full_scan_interval=1.0, scan_time_budget=0.5, clock=clock)
    read: list[int] = []
    real_socket_fds = index._socket_fds
    _after_the_first_walk(index, clock)
    index._socket_fds = lambda pid, live: read.append(pid) or real_socket_fds(pid, live)
    index.refresh({9999})  # held by nobody: a walk begins, cut short
    assert index.full_scans == 2 and 9999 not in index._unfound
    # A socket of a process that walk has searched already: when it ends it
    # has not seen it, yet must not write it off (30 s without an owner).
    fake_proc.add(read[0], 3, "socket:[7000]")
    clock.now += 1.0
    _refresh_until(index, clock, {9999, 7000}, lambda: 9999 in index._unfound)
    assert 7000 not in index._unfound
    _refresh_until(index, clock, {9999, 7000}, lambda: index.owner(7000) == read[0])


def test_owner_index_forgets_dead_sockets_and_vanished_processes(fake_proc) -> None:
    clock = Clock()
    fake_proc.add(10, 3, "socket:[100]")
    fake_proc.add(20, 3, "socket:[200]")
    index = SocketOwners(str(fake_proc.root), clock=clock)
    index.refresh({100, 200})
    index.refresh({200})
    assert index.owner(100) is None and len(index.owners) == 1
    fake_proc.remove_process(20)
    index.forget_pid(20)
    clock.now += 5
    index.refresh({200})  # must not raise though /proc/20 is gone
    assert index.owner(200) is None


def test_owner_index_rereads_a_reused_fd_number(fake_proc) -> None:
    clock = Clock()
    fake_proc.add(10, 3, "socket:[100]")
    index = SocketOwners(str(fake_proc.root), clock=clock)
    index.refresh({100})
    # socket 100 closed, fd 3 reused by socket 101
    fake_proc.add(10, 3, "socket:[101]")
    index.refresh({101})
    assert index.owner(101) == 10


def test_owner_index_survives_an_fd_dir_that_is_not_a_directory(fake_proc) -> None:
    (fake_proc.root / "40").mkdir()
    (fake_proc.root / "40" / "fd").write_text("not a dir")
    fake_proc.add(10, 3, "socket:[100]")
    index = SocketOwners(str(fake_proc.root), clock=Clock())
    index.refresh({100})
    assert index.owner(100) == 10


def test_owner_index_notes_every_inode_whose_owner_changed(fake_proc) -> None:
    # LinuxBackend hands unchanged sockets on in bulk but for these inodes.
    fake_proc.add(10, 3, "socket:[100]")
    clock = Clock()
    index = SocketOwners(str(fake_proc.root), clock=clock)
    index.refresh({100})
    assert index.changed == {100}
    index.changed = set()
    index.refresh({100})
    assert index.changed == set()  # nothing new: nothing changed
    fake_proc.add(20, 4, "socket:[200]")
    clock.now += 2
    index.refresh({100, 200})
    assert index.owner(200) == 20 and index.changed == {200}
    index.changed = set()
    index.forget_pid(20)
    assert index.owner(200) is None and index.changed == {200}
