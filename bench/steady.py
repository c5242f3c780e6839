#!/usr/bin/env python3
"""The daemon at rest: CPU % of one core and RSS, at 100 and 10,000 sockets.

    python bench/steady.py [--sockets 100 10000] [--seconds 30] [--interval 1] [--quick]

For each socket count N a holder opens N loopback TCP sockets, a real
`netmond` starts on a temporary socket at a 1 s interval, and, once it has
sampled a few times (its first tick builds the inode index), the window
starts. In the same window, beside it, run two peers that poll the same
socket set once per interval:

    psutil loop    a Python process calling psutil.net_connections("inet")
                   every interval: the naive way to watch connections
                   (sockets and pids only, no bytes)
    ss loop        a shell running `ss -tin` every interval (sockets and
                   tcp_info, no pids); its children's CPU is counted (the
                   kernel accounts it in 10 ms ticks: coarse on short runs),
                   its RSS is not (each ss lives a few ms)

CPU is user + system of the whole process (all threads) over the window,
as a percentage of one core; RSS is the peak seen (read every 0.5 s).
Targets: under 1 % at 100 sockets; RSS under 80 MB at 10,000 (goal 40 MB).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    Daemon, Holder, Usage, holdable, machine_line, mb, popen, raise_fd_limit, ratio, table,
)

_PSUTIL_LOOP = """
import sys, time, psutil
interval = float(sys.argv[1])
next_at = time.monotonic()
while True:
    psutil.net_connections("inet")
    next_at += interval
    time.sleep(max(0.0, next_at - time.monotonic()))
"""


def bench(sockets: int, seconds: float, interval: float) -> None:
    shell_loop = f"while :; do ss -tin >/dev/null; sleep {interval}; done"
    with Holder(sockets), Daemon(interval) as daemon:
        daemon.wait_ticks(3)
        peers = [
            popen([sys.executable, "-c", _PSUTIL_LOOP, str(interval)]),
            popen(["sh", "-c", shell_loop]),
        ]
        try:
            usage = Usage(
                {"netmond": daemon.pid, "psutil loop": peers[0].pid, "ss loop": peers[1].pid},
                children=["ss loop"],
            ).run(seconds)
        finally:
            for p in peers:
                p.kill()
                p.wait()
    ours_cpu, ours_rss = usage.cpu_percent["netmond"], usage.peak_rss["netmond"]
    rows = []
    for name in ("netmond", "psutil loop", "ss loop"):
        cpu, rss = usage.cpu_percent[name], usage.peak_rss[name]
        if name == "ss loop":
            rss = None  # the shell's; each ss lives a few ms, too short to sample
        peer = name != "netmond"
        rows.append((
            name, f"{cpu:.2f}", mb(rss),
            ratio(ours_cpu, cpu) if peer else "", ratio(ours_rss, rss) if peer else "",
        ))
    table(
        f"Steady state, {sockets} TCP sockets held, {interval:g} s interval, {usage.seconds:.0f} s window",
        ("process", "cpu % of 1 core", "peak RSS MB", "ours/it cpu", "ours/it RSS"),
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, nargs="+", default=[100, 10000])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="100 sockets, 3 s: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.sockets, args.seconds = [100], 3.0
    raise_fd_limit()
    print(f"# steady: {machine_line()}")
    for n in holdable(args.sockets):
        bench(n, args.seconds, args.interval)


if __name__ == "__main__":
    main()
