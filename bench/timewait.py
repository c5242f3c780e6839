#!/usr/bin/env python3
"""TIME_WAIT remnants: what they add to a tick, seen closing or not, against psutil.

    python bench/timewait.py [--live 10000] [--timewait 20000] [--ticks 10] [--quick]

A holder keeps `live` loopback TCP sockets open. Measured in one run:

    live only           the tick with the live sockets alone
    + TW, seen closing  a backend runs while `timewait` connections open
                        and close (the client closes first: each leaves one
                        TIME_WAIT remnant), so it takes each one's destroy
                        event: the remnants are not rows
    + TW, not seen      a backend started after they closed: each remnant
                        is a row of its own (TIME_WAIT, no counters)
    psutil              psutil.net_connections("inet") (it lists remnants
                        too), live only and with the remnants

The netmond tick is LinuxBackend.sample() + MonitorState.apply(); its CPU
is the mean over `ticks` consecutive ticks after a warm-up, a multiple of
the cadence at which the backend lists remnants (linux.py:
TIMEWAIT_DUMP_EVERY_TICKS), so that the ticks that do list them count as
often as they happen. "per TW / per live" is what one remnant adds to a
tick over what one live socket costs: ((tick with remnants - tick live
only) / remnants) / (tick live only / live sockets). Target: <= 0.2.
Remnants live 60 s: everything with them is measured within that. Linux only.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Holder, machine_line, max_sockets, raise_fd_limit, ratio, table  # noqa: E402

import psutil  # noqa: E402

from netmond.backends import linux  # noqa: E402
from netmond.backends.linux import LinuxBackend  # noqa: E402
from netmond.state import MonitorState  # noqa: E402

#: Listener addresses the remnants are spread over (a client port can serve
#: each once): 20,000 remnants on one would nearly exhaust the ephemeral ports.
_ADDRESSES = ("127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")


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
    return sum(1 for c in psutil.net_connections("tcp") if c.status == psutil.CONN_TIME_WAIT)


class Ticker:
    """A backend and its state, ticked as the daemon does."""

    def __init__(self) -> None:
        self.backend = LinuxBackend()  # root mode off: its cost is bench/ebpf.py's
        self.state = MonitorState()
        self.backend.start()

    def tick(self) -> None:
        self.state.apply(self.backend.sample())

    def mean_cpu(self, ticks: int) -> float:
        """Mean CPU seconds of `ticks` consecutive ticks, after warming up."""
        for _ in range(linux.TIMEWAIT_DUMP_EVERY_TICKS):
            self.tick()
        c0 = time.process_time()
        for _ in range(ticks):
            self.tick()
        return (time.process_time() - c0) / ticks

    def close(self) -> None:
        self.backend.close()


def psutil_cpu(runs: int) -> float:
    """Median CPU seconds of psutil.net_connections("inet")."""
    psutil.net_connections("inet")
    cpus = []
    for _ in range(runs):
        c0 = time.process_time()
        psutil.net_connections("inet")
        cpus.append(time.process_time() - c0)
    return statistics.median(cpus)


def bench(live: int, timewait: int, ticks: int, runs: int) -> None:
    with Holder(live):
        before = count_time_wait()
        alone = Ticker()
        try:
            ours_live = alone.mean_cpu(ticks)
            rows_live = len(alone.state.open)
        finally:
            alone.close()
        psutil_live = psutil_cpu(runs)

        seen = Ticker()
        try:
            seen.tick()
            t0 = time.monotonic()
            # Its reader thread takes every destroy event meanwhile (up to
            # 50,000 wait for the next tick): it sees them all close.
            made = make_time_wait(timewait)
            remnants = count_time_wait() - before
            ours_seen = seen.mean_cpu(ticks)
            rows_seen = len(seen.state.open)
            tw_rows_seen = seen.state.connection_counts()["time_wait"]
        finally:
            seen.close()
        unseen = Ticker()
        try:
            unseen.tick()  # the first tick builds the inode index
            ours_unseen = unseen.mean_cpu(ticks)
            rows_unseen = len(unseen.state.open)
            tw_rows_unseen = unseen.state.connection_counts()["time_wait"]
        finally:
            unseen.close()
        psutil_tw = psutil_cpu(runs)
        elapsed = time.monotonic() - t0

    def per_remnant(with_tw: float, alone_cpu: float) -> str:
        if remnants <= 0 or alone_cpu <= 0:
            return "-"
        return f"{((with_tw - alone_cpu) / remnants) / (alone_cpu / live):.2f}"

    table(
        f"TIME_WAIT remnants: {live} live sockets + {remnants} remnants ({made} connections closed; "
        f"netmond: mean of {ticks} ticks, psutil: median of {runs}; all within {elapsed:.0f} s)",
        ("method", "rows", "TIME_WAIT rows", "cpu ms", "x live only", "per TW / per live", "ours/psutil cpu"),
        [
            ("netmond, live only", rows_live, "", f"{ours_live * 1000:.1f}", "", "", ratio(ours_live, psutil_live)),
            ("netmond + TW, seen closing", rows_seen, tw_rows_seen, f"{ours_seen * 1000:.1f}",
             ratio(ours_seen, ours_live), per_remnant(ours_seen, ours_live), ratio(ours_seen, psutil_tw)),
            ("netmond + TW, not seen", rows_unseen, tw_rows_unseen, f"{ours_unseen * 1000:.1f}",
             ratio(ours_unseen, ours_live), per_remnant(ours_unseen, ours_live), ratio(ours_unseen, psutil_tw)),
            ("psutil, live only", "", "", f"{psutil_live * 1000:.1f}", "", "", ""),
            ("psutil + TW", "", "", f"{psutil_tw * 1000:.1f}", ratio(psutil_tw, psutil_live),
             per_remnant(psutil_tw, psutil_live), ""),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", type=int, default=10000)
    parser.add_argument("--timewait", type=int, default=20000)
    parser.add_argument("--ticks", type=int, default=2 * linux.TIMEWAIT_DUMP_EVERY_TICKS)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100 live, 200 remnants, 5 ticks: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.live, args.timewait, args.runs, args.ticks = 100, 200, 2, linux.TIMEWAIT_DUMP_EVERY_TICKS
    raise_fd_limit()
    print(f"# timewait: {machine_line()}")
    if args.live > max_sockets():
        print(f"\n{args.live} sockets: n/a (RLIMIT_NOFILE allows at most {max_sockets()})")
        return
    bench(args.live, args.timewait, args.ticks, args.runs)


if __name__ == "__main__":
    main()
