#!/usr/bin/env python3
"""The daemon under load: cadence and `status` latency at 10,000 to 100,000 sockets.

    python bench/load.py [--sockets 10000 50000 100000] [--size small|large]
                         [--seconds 30] [--interval 1] [--quick]

For each socket count N, holders open N loopback TCP sockets (spread over
several processes: one may open 20,000 here), a real `netmond` starts at a
1 s interval and, once it has sampled a few times, a window starts in which
a probe asks it for `status` every 0.1 s over one connection, as a user
would. Measured for netmond over the window:

    samples/s      ticks taken per second (1.00 at a 1 s interval: the
                   cadence is held)
    max age        the oldest data a `status` answer reported (sample_age)
    tick s         median wall time of a tick (last_tick_seconds)
    backed off     the interval the daemon backed off to, when it could not
                   hold the configured one (status: effective_interval)
    status p50/p99/max   latency of the `status` answers, ms
    cpu %, peak RSS      as in steady.py

Then, in a second window of the same length, the peer alone: a Python
process polling psutil.net_connections("inet") once per interval (sockets
and pids, no bytes); its samples/s is the polls it managed. The peer runs
after netmond, not beside it: at 100,000 sockets each poll takes seconds
of CPU, and two cores shared by both would measure the competition.
Targets: status p99 < 50 ms while ticking, cadence held or backed off
visibly, RSS < 150 MB at 100,000 sockets.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    Daemon, Holder, StatusProbe, Usage, holdable, machine_line, mb, ms, popen, raise_fd_limit, ratio,
    sizes, table,
)

# Polls once per interval for `seconds`, then prints how many polls it made.
_PSUTIL_LOOP = """
import sys, time, psutil
interval, seconds = float(sys.argv[1]), float(sys.argv[2])
t0 = next_at = time.monotonic()
polls = 0
while time.monotonic() - t0 < seconds:
    psutil.net_connections("inet")
    polls += 1
    next_at += interval
    time.sleep(max(0.0, next_at - time.monotonic()))
print(polls, time.monotonic() - t0, flush=True)
"""


def bench(sockets: int, seconds: float, interval: float) -> None:
    import subprocess

    with Holder(sockets), Daemon(interval) as daemon:
        daemon.wait_ticks(3, timeout=180)
        with StatusProbe(daemon.socket) as probe:
            usage = Usage({"netmond": daemon.pid}).run(seconds)
        peer = popen([sys.executable, "-c", _PSUTIL_LOOP, str(interval), str(seconds)],
                     stdout=subprocess.PIPE, text=True)
        try:
            peer_usage = Usage({"psutil loop": peer.pid}).run(seconds)
            out, _ = peer.communicate(timeout=seconds * 10 + 60)
        finally:
            if peer.poll() is None:
                peer.kill()
                peer.wait()
    replies = probe.replies
    ticks = replies[-1]["ticks"] - replies[0]["ticks"] if len(replies) > 1 else 0
    span = replies[-1]["uptime"] - replies[0]["uptime"] if len(replies) > 1 else 0
    rate = ticks / span if span else None
    ages = [r["sample_age"] for r in replies if r.get("sample_age") is not None]
    tick_s = [r["last_tick_seconds"] for r in replies if r.get("last_tick_seconds") is not None]
    backed = max((r.get("effective_interval") or interval for r in replies), default=interval)
    try:
        polls, elapsed = out.split()
        peer_rate = int(polls) / float(elapsed)
    except ValueError:
        peer_rate = None
    ours_cpu, ours_rss = usage.cpu_percent["netmond"], usage.peak_rss["netmond"]
    peer_cpu, peer_rss = peer_usage.cpu_percent["psutil loop"], peer_usage.peak_rss["psutil loop"]
    rows = [
        ("netmond", f"{rate:.2f}" if rate is not None else "-",
         f"{max(ages):.1f}" if ages else "-", f"{statistics.median(tick_s):.2f}" if tick_s else "-",
         f"{backed:g}" if backed > interval + 1e-9 else "no",
         ms(probe.percentile(50)), ms(probe.percentile(99)), ms(max(probe.latencies, default=None)),
         f"{ours_cpu:.1f}", mb(ours_rss), "", ""),
        ("psutil loop", f"{peer_rate:.2f}" if peer_rate is not None else "-", "", "", "", "", "", "",
         f"{peer_cpu:.1f}", mb(peer_rss), ratio(ours_cpu, peer_cpu), ratio(ours_rss, peer_rss)),
    ]
    table(
        f"Under load, {sockets} TCP sockets held, {interval:g} s interval, {usage.seconds:.0f} s windows "
        f"({len(probe.latencies)} status calls{f', {probe.errors} failed' if probe.errors else ''})",
        ("process", "samples/s", "max age s", "tick s", "backed off", "status p50 ms", "p99 ms", "max ms",
         "cpu % of 1 core", "peak RSS MB", "ours/it cpu", "ours/it RSS"),
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, nargs="+")
    parser.add_argument("--size", choices=("small", "large"), default="large",
                        help="small: 10,000 sockets only; large: also 50,000 and 100,000")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="100 sockets, 3 s: a smoke run")
    args = parser.parse_args()
    if args.sockets is None:
        args.sockets = sizes(args.size, [10000], [50000, 100000])
    if args.quick:
        args.sockets, args.seconds = [100], 3.0
    raise_fd_limit()
    print(f"# load: {machine_line()}")
    for n in holdable(args.sockets):
        bench(n, args.seconds, args.interval)


if __name__ == "__main__":
    main()
