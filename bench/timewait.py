#!/usr/bin/env python3
"""TIME_WAIT remnants: what they add to a tick, seen closing or not, against psutil.

    python bench/timewait.py [--live 10000] [--timewait 20000] [--cycles 20]
                             [--ticks 10] [--quick]

Three netmond tickers (LinuxBackend.sample() + MonitorState.apply(), as the
daemon ticks) are compared, each beside `live` loopback TCP sockets a holder
keeps open:

    live only           a backend that sees the live sockets alone
    + TW, seen closing  a backend running while `timewait` connections open
                        and close (the client closes first: each leaves one
                        TIME_WAIT remnant), so it takes each one's destroy
                        event: the remnants are not rows
    + TW, not seen      a backend started after they closed: each remnant
                        is a row of its own (TIME_WAIT, no counters)
    its kernel dumps    the TCP dumps a backend asks for, live only and with
                        the remnants, read and not parsed: the kernel's part,
                        which no code of ours can cut
    psutil              psutil.net_connections("inet") (it lists remnants
                        too), live only and with the remnants

This machine's speed drifts by up to a third from one run to the next (and
within one), so the tickers are not measured one after the other: their
ticks are interleaved (A B C, B C A, C A B, ...), and drift hits them alike.
The live-only ones must not see the remnants, so, as root, they live in a
network namespace of their own (their holder, their netlink sockets), and
the others with their holder and the remnants in a second one; with
`net.ipv4.tcp_child_ehash_entries` set when the two are made (Linux >= 6.1;
set back after), each has a TCP hash table of its own, the size of the
host's, so the live-only dumps do not walk past the remnants either. Each
namespace has a thread, which opens its sockets, starts its holder and runs
its ticks; a tick's CPU is that thread's (time.thread_time). Without
namespaces (not root, or unshare refused) the live-only ticks are taken
before the remnants are made, seconds apart, and the table says so.

A cycle is `ticks` ticks of each, a multiple of the cadence at which the
backend lists remnants (linux.py: TIMEWAIT_DUMP_EVERY_TICKS), so that the
ticks that do list them count as often as they happen; one such period of
warm-up comes first. "per TW / per live" is what one remnant adds to a tick
over what one live socket costs, per cycle: ((tick with remnants - tick live
only, of the same cycle) / remnants) / (tick live only / live sockets); the
table gives its median over the cycles and its spread (min..max), and "cpu
ms" the median of the cycles' mean ticks. Target: <= 0.2. Remnants live
60 s: the cycles stop 45 s after the first one was made (fewer cycles on a
slow machine), and the remnants still there after the last measurement are
counted. psutil is the peer, measured live only before the remnants are
made and with them after the live-only holder is gone (one holder's fds to
walk each time), median of `runs`, not interleaved. Linux only.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import queue
import socket
import statistics
import struct
import sys
import threading
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Holder, machine_line, max_sockets, raise_fd_limit, ratio, table  # noqa: E402

import psutil  # noqa: E402

from netmond.backends import linux  # noqa: E402
from netmond.backends.linux import LinuxBackend  # noqa: E402
from netmond.backends.netlink import (  # noqa: E402
    ALL_STATES_MASK,
    INET_DIAG_EXT_INFO,
    NLMSG_DONE,
    NLMSG_ERROR,
    TCP_TIME_WAIT,
    build_tcp_dump_request,
)
from netmond.backends.sockdiag import SockDiagDumper, open_sock_diag_socket  # noqa: E402
from netmond.state import MonitorState  # noqa: E402

#: Listener addresses the remnants are spread over (a client port can serve
#: each once): 20,000 remnants on one would nearly exhaust the ephemeral ports.
_ADDRESSES = ("127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")
#: Remnants live 60 s (TCP_TIMEWAIT_LEN) from their close: the cycles stop
#: this long after the first one was made, leaving time for psutil's runs.
_CYCLES_WINDOW = 45.0

_CLONE_NEWNET = 0x40000000
_CHILD_EHASH = "/proc/sys/net/ipv4/tcp_child_ehash_entries"
_EHASH = "/proc/sys/net/ipv4/tcp_ehash_entries"
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def make_time_wait(count: int) -> int:
    """Open and close `count` loopback connections, the client first: each
    leaves its client end in TIME_WAIT. Returns how many were made."""
    listeners = []
    for addr in _ADDRESSES:
        lst = socket.socket()
        lst.bind((addr, 0))
        lst.listen(1024)
        listeners.append(lst)
    made = 0
    try:
        for i in range(count):
            lst = listeners[i % len(listeners)]
            client = socket.create_connection(lst.getsockname(), timeout=5)
            server, _ = lst.accept()
            client.sendall(b"ping")
            server.recv(16)
            client.close()  # active close: the client end goes to TIME_WAIT
            server.close()
            made += 1
    finally:
        for lst in listeners:
            lst.close()
    return made


def count_time_wait() -> int:
    """TIME_WAIT sockets of the calling thread's network namespace (a dump of
    its own: psutil would read the namespace of the process's main thread)."""
    dumper = SockDiagDumper()
    try:
        return sum(len(dumper.dump(family, socket.IPPROTO_TCP, 0, 1 << TCP_TIME_WAIT))
                   for family in (socket.AF_INET, socket.AF_INET6))
    finally:
        dumper.close()


# -- network namespaces ------------------------------------------------------


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enter_new_netns() -> None:
    """Move the calling thread (only it) into a new network namespace, loopback up."""
    _check(_libc.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = bytearray(struct.pack("16sH14x", b"lo", 0))
        fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, ifreq)
        flags = struct.unpack_from("16sH", ifreq)[1] | _IFF_UP
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags))


def _enter_netns(fd: int) -> None:
    _check(_libc.setns(fd, _CLONE_NEWNET), "setns(CLONE_NEWNET)")


class NetnsThread:
    """A thread living in a network namespace of its own, running what it is given.

    Sockets opened on it (a backend's netlink sockets, the remnants'
    connections) and processes started from it (a holder) belong to its
    namespace. `call(fn, *args)` runs fn there and returns its result (or
    raises its exception).
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue = queue.Queue()
        ready: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
        self._thread.start()
        error = ready.get()
        if error is not None:
            self._thread.join()
            raise error
        #: An fd of the namespace, for the main thread's setns (psutil).
        self.netns_fd = self.call(os.open, "/proc/thread-self/ns/net", os.O_RDONLY)

    def _run(self, ready: queue.Queue) -> None:
        try:
            _enter_new_netns()
        except OSError as exc:
            ready.put(exc)
            return
        ready.put(None)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, done = job
            try:
                done.put((True, fn(*args)))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.put((False, exc))

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        done: queue.Queue = queue.Queue(maxsize=1)
        self._jobs.put((fn, args, done))
        ok, value = done.get()
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(10)
        os.close(self.netns_fd)


def own_namespaces() -> tuple[NetnsThread, NetnsThread, str] | str:
    """Two namespace threads (live only; remnants) and how their TCP hash
    tables were made, or why there are none (the reason, a str)."""
    # A new namespace shares the host's TCP hash table unless this is set in
    # its parent (Linux >= 6.1): then the live-only dump would walk past the
    # other namespace's remnants. Sized as the host's, set back after.
    try:
        with open(_EHASH) as f:
            size = abs(int(f.read()))  # negative: a namespace sharing the host's
        with open(_CHILD_EHASH) as f:
            before = f.read().strip()
    except (OSError, ValueError):
        size, before = 0, ""
    tables = "one TCP hash table shared by both (no net.ipv4.tcp_child_ehash_entries: Linux < 6.1)"
    if before:
        try:
            with open(_CHILD_EHASH, "w") as f:
                f.write(str(size))
        except OSError as exc:
            tables = f"one TCP hash table shared by both (tcp_child_ehash_entries: {exc.strerror})"
            before = ""
    try:
        live_ns = NetnsThread("nm-live-only")
        try:
            remnants_ns = NetnsThread("nm-remnants")
        except BaseException:
            live_ns.close()
            raise
    except OSError as exc:
        return f"no network namespace of its own ({exc.strerror or exc}; needs root)"
    finally:
        if before:
            with open(_CHILD_EHASH, "w") as f:
                f.write(before)
    if before:
        # What the namespaces got: a positive size is a table of their own.
        sizes = {ns.call(_own_ehash_size) for ns in (live_ns, remnants_ns)}
        if all(sizes):
            tables = f"a TCP hash table of its own each ({'/'.join(f'{n:,}' for n in sizes)} buckets, as the host's)"
        else:
            tables = "one TCP hash table shared by both (the kernel ignored tcp_child_ehash_entries)"
    return live_ns, remnants_ns, tables


def _own_ehash_size() -> int:
    """The calling thread's namespace's TCP hash table size; 0 if it shares the host's (negative there)."""
    with open(_EHASH) as f:
        return max(0, int(f.read()))


class _Here:
    """A NetnsThread's `call` for the fallback: everything in this namespace."""

    netns_fd = -1

    @staticmethod
    def call(fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def close(self) -> None:
        pass


# -- the tickers ----------------------------------------------------------------


class Ticker:
    """A backend and its state, ticked as the daemon does; each tick's CPU kept."""

    def __init__(self) -> None:
        self.backend = LinuxBackend()  # root mode off: its cost is bench/ebpf.py's
        self.state = MonitorState()
        self.backend.start()
        self.cpu: list[float] = []

    def tick(self) -> None:
        self.state.apply(self.backend.sample())

    def timed_tick(self) -> None:
        # The thread's CPU: the ticker's own thread (its namespace's), not
        # the other tickers' nor the destroy-event readers'.
        c0 = time.thread_time()
        self.state.apply(self.backend.sample())
        self.cpu.append(time.thread_time() - c0)

    def close(self) -> None:
        self.backend.close()


class KernelDumps:
    """The kernel's share of a tick alone: the TCP dumps a backend asks for
    (TIME_WAIT on one tick in TIMEWAIT_DUMP_EVERY_TICKS, state-filtered out
    on the others), read into a buffer and not parsed. Its own netlink
    socket, opened on the thread (so in the namespace) that makes it."""

    def __init__(self) -> None:
        self.sock = open_sock_diag_socket()
        self.buf = bytearray(64 * 1024)
        self.seq = 0
        self.cpu: list[float] = []

    def tick(self) -> None:
        self.seq += 1
        every = self.seq % linux.TIMEWAIT_DUMP_EVERY_TICKS == 0
        states = ALL_STATES_MASK if every else ALL_STATES_MASK & ~(1 << TCP_TIME_WAIT)
        self.sock.send(build_tcp_dump_request(INET_DIAG_EXT_INFO, states, self.seq))
        view, buf = memoryview(self.buf), self.buf
        while True:
            n = self.sock.recv_into(view)
            # A dump's last datagram ends with NLMSG_DONE (or NLMSG_ERROR).
            off, kind = 0, 0
            while off + 6 <= n:
                length, kind = struct.unpack_from("=IH", buf, off)
                off += (length + 3) & ~3
            if n == 0 or kind in (NLMSG_ERROR, NLMSG_DONE):
                return

    def timed_tick(self) -> None:
        c0 = time.thread_time()
        self.tick()
        self.cpu.append(time.thread_time() - c0)

    def close(self) -> None:
        self.sock.close()


def interleave(tickers: list[tuple[Any, Ticker | KernelDumps]], ticks: int) -> None:
    """`ticks` ticks of each ticker, on its thread, in rotating order."""
    for r in range(ticks):
        for place, ticker in tickers[r % len(tickers):] + tickers[:r % len(tickers)]:
            place.call(ticker.timed_tick)


def psutil_cpu(runs: int, netns_fd: int = -1) -> float:
    """Median CPU seconds of psutil.net_connections("inet"), in the namespace
    of netns_fd (this thread enters it: psutil reads /proc/net, which is the
    main thread's namespace's)."""
    if netns_fd >= 0:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        _enter_netns(netns_fd)
    try:
        psutil.net_connections("inet")
        cpus = []
        for _ in range(runs):
            c0 = time.process_time()
            psutil.net_connections("inet")
            cpus.append(time.process_time() - c0)
        return statistics.median(cpus)
    finally:
        if netns_fd >= 0:
            _enter_netns(home)
            os.close(home)


# -- the bench ---------------------------------------------------------------------


class Result:
    """What one ticker (or KernelDumps) measured: per-cycle mean tick CPU (seconds)."""

    def __init__(self, ticker: Ticker | KernelDumps, ticks: int) -> None:
        c = ticker.cpu
        self.cycles = [statistics.fmean(c[i:i + ticks]) for i in range(0, len(c) - ticks + 1, ticks)]
        state = getattr(ticker, "state", None)
        self.rows = len(state.open) if state is not None else ""
        self.tw_rows = state.connection_counts()["time_wait"] if state is not None else ""

    @property
    def median(self) -> float:
        return statistics.median(self.cycles)


def bench(live: int, timewait: int, cycles: int, ticks: int, runs: int) -> None:
    spaces = own_namespaces()
    if isinstance(spaces, str):
        note = (f"{spaces}: live only measured BEFORE the remnants were made, not interleaved "
                "with them; drift between the two is not cancelled")
        live_ns: Any = _Here()
        tw_ns: Any = live_ns
    else:
        live_ns, tw_ns, tables = spaces
        note = f"interleaved; live only in a network namespace of its own, the remnants in another, {tables}"
    interleaved = tw_ns is not live_ns
    # (where it runs, what): live-only ticker, its kernel dumps; then, with
    # the remnants, the ticker that saw them close, the one that did not, and
    # their kernel dumps.
    probes: list[tuple[Any, Ticker | KernelDumps]] = []
    holders: list[Holder] = []
    try:
        # The live-only namespace: its holder and its ticker.
        holders.append(Holder(live))
        live_ns.call(holders[-1].__enter__)
        alone = live_ns.call(Ticker)
        live_ns.call(alone.tick)  # the first tick builds the inode index
        probes += [(live_ns, alone), (live_ns, live_ns.call(KernelDumps))]
        psutil_live = psutil_cpu(runs, live_ns.netns_fd)
        if not interleaved:  # the live-only ticks now, before the remnants
            interleave(probes, linux.TIMEWAIT_DUMP_EVERY_TICKS)
            for _, probe in probes:
                probe.cpu.clear()
            interleave(probes, cycles * ticks)
            before = count_time_wait()
        else:
            holders.append(Holder(live))
            tw_ns.call(holders[-1].__enter__)
            before = 0
        seen = tw_ns.call(Ticker)
        tw_ns.call(seen.tick)
        t0 = time.monotonic()
        # Its reader thread takes every destroy event meanwhile (up to
        # 50,000 wait for the next tick): it sees them all close.
        made = tw_ns.call(make_time_wait, timewait)
        remnants = tw_ns.call(count_time_wait) - before
        unseen = tw_ns.call(Ticker)
        tw_ns.call(unseen.tick)  # the first tick builds the inode index
        with_tw = [(tw_ns, seen), (tw_ns, unseen), (tw_ns, tw_ns.call(KernelDumps))]
        measured = probes + with_tw if interleaved else with_tw
        probes += with_tw
        interleave(measured, linux.TIMEWAIT_DUMP_EVERY_TICKS)  # warm-up, not kept
        for _, probe in measured:
            probe.cpu.clear()
        done = 0
        started = time.monotonic()
        for done in range(1, cycles + 1):
            interleave(measured, ticks)
            now = time.monotonic()
            if now + (now - started) / done > t0 + _CYCLES_WINDOW:
                break  # one more cycle would run too close to the first remnants' end
        if interleaved:  # psutil with the remnants, one holder's fds to walk as before
            holders.pop(0).__exit__(None, None, None)
        psutil_tw = psutil_cpu(runs, tw_ns.netns_fd)
        remnants_after = tw_ns.call(count_time_wait) - before
        elapsed = time.monotonic() - t0
        results = [Result(probe, ticks) for _, probe in probes]
    finally:
        for place, probe in probes:
            place.call(probe.close)
        for holder in holders:
            holder.__exit__(None, None, None)
        live_ns.close()
        if interleaved:
            tw_ns.close()
    title = (f"TIME_WAIT remnants: {live} live sockets + {remnants} remnants ({made} connections closed, "
             f"{remnants_after} still there at the end; netmond: {done} cycles of {ticks} ticks, {note}; "
             f"psutil: median of {runs}; all within {elapsed:.0f} s)")
    report(title, live, remnants, results, psutil_live, psutil_tw, paired=interleaved)


def report(title: str, live: int, remnants: int, results: list[Result], psutil_live: float,
           psutil_tw: float, paired: bool) -> None:
    alone, kernel_alone, seen, unseen, kernel_tw = results

    def per_remnant(with_tw: float, without: float, live_tick: float) -> float | None:
        """What a remnant adds over what a live socket costs a tick (all of the tick)."""
        if remnants <= 0 or live_tick <= 0:
            return None
        return ((with_tw - without) / remnants) / (live_tick / live)

    def spread(r: Result, base: Result) -> tuple[str, str]:
        """Median of the per-cycle ratios (over the same cycle's live-only
        tick when interleaved), and their min-max."""
        if paired:
            per = list(map(per_remnant, r.cycles, base.cycles, alone.cycles))
        else:  # measured apart: against the live-only median
            per = [per_remnant(x, base.median, alone.median) for x in r.cycles]
        values = [x for x in per if x is not None]
        if not values:
            return "-", ""
        return f"{statistics.median(values):.2f}", f"{min(values):.2f}..{max(values):.2f}"

    def ms(r: Result) -> str:
        return f"{r.median * 1000:.1f}"

    seen_ratio, seen_spread = spread(seen, alone)
    unseen_ratio, unseen_spread = spread(unseen, alone)
    kernel_ratio, kernel_spread = spread(kernel_tw, kernel_alone)
    psutil_per = per_remnant(psutil_tw, psutil_live, psutil_live)
    table(
        title,
        ("method", "rows", "TIME_WAIT rows", "cpu ms", "x live only", "per TW / per live", "spread",
         "ours/psutil cpu"),
        [
            ("netmond, live only", alone.rows, "", ms(alone), "", "", "", ratio(alone.median, psutil_live)),
            ("netmond + TW, seen closing", seen.rows, seen.tw_rows, ms(seen), ratio(seen.median, alone.median),
             seen_ratio, seen_spread, ratio(seen.median, psutil_tw)),
            ("netmond + TW, not seen", unseen.rows, unseen.tw_rows, ms(unseen), ratio(unseen.median, alone.median),
             unseen_ratio, unseen_spread, ratio(unseen.median, psutil_tw)),
            ("  its kernel dumps, live only", "", "", ms(kernel_alone), "", "", "", ""),
            ("  its kernel dumps + TW", "", "", ms(kernel_tw), ratio(kernel_tw.median, kernel_alone.median),
             kernel_ratio, kernel_spread, ""),
            ("psutil, live only", "", "", f"{psutil_live * 1000:.1f}", "", "", "", ""),
            ("psutil + TW", "", "", f"{psutil_tw * 1000:.1f}", ratio(psutil_tw, psutil_live),
             "-" if psutil_per is None else f"{psutil_per:.2f}", "", ""),
        ],
    )
    print("cpu ms: median over cycles of a cycle's mean tick. per TW / per live: median of the per-cycle\n"
          "ratios, spread: their min..max; the kernel dumps' (the backend's TCP dumps, read, not parsed)\n"
          "is over a live socket's whole tick: the share of a remnant's cost no code of ours can cut.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", type=int, default=10000)
    parser.add_argument("--timewait", type=int, default=20000)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--ticks", type=int, default=2 * linux.TIMEWAIT_DUMP_EVERY_TICKS,
                        help="ticks of each ticker per cycle (a multiple of the TIME_WAIT cadence)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100 live, 200 remnants, 2 cycles of 5 ticks: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.live, args.timewait, args.runs = 100, 200, 2
        args.cycles, args.ticks = 2, linux.TIMEWAIT_DUMP_EVERY_TICKS
    raise_fd_limit()
    print(f"# timewait: {machine_line()}")
    if args.live > max_sockets():
        print(f"\n{args.live} sockets: n/a (RLIMIT_NOFILE allows at most {max_sockets()})")
        return
    bench(args.live, args.timewait, args.cycles, args.ticks, args.runs)


if __name__ == "__main__":
    main()
