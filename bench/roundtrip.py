#!/usr/bin/env python3
"""Round trips a user waits for: `netmonctl conns --json` and `netmonctl --version`.

    python bench/roundtrip.py [--sockets 1000 10000] [--size small|large] [--runs 5] [--quick]

For each socket count N a holder opens N loopback TCP sockets and a real
`netmond` watches them. Measured, as wall time of a fresh process each run
(median):

    netmonctl conns --json   every connection, as JSON, to /dev/null
    ss -tn                   the peer: every TCP socket, as text (no pids,
                             no bytes)
    ss -tinp                 the peer with what we show: tcp_info (bytes)
                             and processes (it walks every /proc/PID/fd)
    RPC only                 the `connections` call alone from this process
                             (daemon work + transfer + msgpack decode), to
                             show where the time goes

and once: `netmonctl --version` (start-up: imports must stay lazy) against
a bare `python -c pass` (the interpreter's own start-up, the floor) and
`ss -V`. The title line gives the daemon's RSS before one `conns --json`
and its peak during it (VmHWM, reset first through /proc/PID/clear_refs),
beside the growth over a window as long without the call (the ticks' own).
--size large (the default) adds 50,000 and 100,000 sockets. Targets:
conns --json under 1.5 s at 10,000 and no slower than `ss -tinp` at
100,000; the daemon's peak RSS grows by < 30 % during the reply;
--version under 150 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    Daemon, Holder, holdable, machine_line, mb, median_wall, memory_status, raise_fd_limit, ratio,
    reset_peak_rss, sizes, table,
)


def netmonctl() -> list[str]:
    """The installed console script beside this Python, else the module."""
    script = os.path.join(os.path.dirname(sys.executable), "netmonctl")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "netmonctl.cli"]


def rpc_only(socket_path: str, runs: int) -> tuple[float, int]:
    """Median wall seconds of one `connections` call from this process, and the rows."""
    from common.client import Client

    walls, rows = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        with Client.connect(socket_path, timeout=30) as c:
            c.hello()
            rows = len(c.call("connections", {"include_closed": False})["connections"])
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), rows


def reply_memory(pid: int, argv: list[str], env: dict[str, str]) -> tuple[int, int, int] | None:
    """(RSS before, peak RSS during one run of argv, peak RSS during as long
    a window without it) for the daemon `pid`: its VmHWM is reset to its
    RSS first, so the peak is the reply's; the second window tells what the
    ticks alone add over that time."""
    before = memory_status(pid).get("VmRSS")
    if before is None or not reset_peak_rss(pid):
        return None
    t0 = time.monotonic()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
    took = time.monotonic() - t0
    peak = memory_status(pid).get("VmHWM")
    reset_peak_rss(pid)
    idle_before = memory_status(pid).get("VmRSS")
    time.sleep(took)
    idle_peak = memory_status(pid).get("VmHWM")
    if peak is None or idle_before is None or idle_peak is None:
        return None
    return before, peak, idle_peak - idle_before


def bench_conns(sockets: int, runs: int) -> None:
    with Holder(sockets), Daemon(1.0) as daemon:
        daemon.wait_ticks(3, timeout=180)
        env = dict(os.environ, NETMON_SOCKET=daemon.socket)
        conns = [*netmonctl(), "--timeout", "120", "conns", "--json"]
        memory = reply_memory(daemon.pid, conns, env)
        ours = median_wall(conns, runs, env=env)
        out = subprocess.run(conns, env=env, stdout=subprocess.PIPE, check=True).stdout
        ss = median_wall(["ss", "-tn"], runs)
        ss_lines = subprocess.run(["ss", "-tn"], stdout=subprocess.PIPE, check=True).stdout.count(b"\n") - 1
        ssp = median_wall(["ss", "-tinp"], runs)
        rpc, rows = rpc_only(daemon.socket, runs)
    if memory is None:
        grew = "n/a (no /proc/PID/clear_refs)"
    else:
        before, peak, idle = memory
        grew = (f"{mb(before)} -> {mb(peak)} MB (+{100 * (peak - before) / before:.0f} %; "
                f"ticks alone over as long: +{100 * idle / before:.0f} %)")
    table(
        f"Round trip, {sockets} TCP sockets held (median of {runs}); "
        f"netmond's RSS during one conns --json: {grew}",
        ("command", "rows", "output KB", "wall ms", "ours/it"),
        [
            ("netmonctl conns --json", rows, f"{len(out) / 1e3:.0f}", f"{ours * 1000:.0f}", ""),
            ("ss -tn", ss_lines, "", f"{ss * 1000:.0f}", ratio(ours, ss)),
            ("ss -tinp", ss_lines, "", f"{ssp * 1000:.0f}", ratio(ours, ssp)),
            ("RPC only (connections)", rows, "", f"{rpc * 1000:.0f}", ""),
        ],
    )


def bench_version(runs: int) -> None:
    ours = median_wall([*netmonctl(), "--version"], runs)
    floor = median_wall([sys.executable, "-c", "pass"], runs)
    rows = [
        ("netmonctl --version", f"{ours * 1000:.0f}", ""),
        ("python -c pass", f"{floor * 1000:.0f}", ratio(ours, floor)),
    ]
    if shutil.which("ss"):
        ss = median_wall(["ss", "-V"], runs)
        rows.append(("ss -V", f"{ss * 1000:.0f}", ratio(ours, ss)))
    table(f"Start-up (median of {runs})", ("command", "wall ms", "ours/it"), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, nargs="+")
    parser.add_argument("--size", choices=("small", "large"), default="large",
                        help="small: up to 10,000 sockets; large: also 50,000 and 100,000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100 sockets, 2 runs: a smoke run")
    args = parser.parse_args()
    if args.sockets is None:
        args.sockets = sizes(args.size, [1000, 10000], [50000, 100000])
    if args.quick:
        args.sockets, args.runs = [100], 2
    raise_fd_limit()
    print(f"# roundtrip: {machine_line()}")
    bench_version(max(args.runs, 9) if not args.quick else 3)
    for n in holdable(args.sockets):
        bench_conns(n, args.runs)


if __name__ == "__main__":
    main()
