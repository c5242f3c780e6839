#!/usr/bin/env python3
"""How much one tick costs, against its peers, at 100 to 100,000 sockets.

    python bench/tick.py [--sockets 100 1000 10000] [--size small|large] [--runs 7] [--quick]

--size small stops at 10,000 sockets; large (the default) adds 50,000 and
100,000 (spread over several holder processes: one may open 20,000 here).

For each socket count N a holder process opens N/2 loopback TCP connections
(N sockets, both ends held open, a few bytes moved on each); this process
then measures, over several runs, the median CPU and wall time of:

    netmond tick   LinuxBackend.sample() + MonitorState.apply(): everything
                   the daemon does per tick (dumps with tcp_info, pids,
                   interfaces, per-socket bytes and rates)
    sample only    LinuxBackend.sample() alone
    psutil         psutil.net_connections("inet"): sockets + pids, no bytes
    ss -tin        `ss -tin` in a subprocess: sockets + tcp_info, no pids

CPU is this process's user + system time for the in-process calls and the
child's for ss. The ratio columns are ours (netmond tick) over each peer:
below 1 means we are cheaper; "core @1s" is the share of one core a tick
every second costs. Targets (issue 19): <= 0.15x psutil at 10,000 and
50,000 sockets; <= 2 % of a core at 10,000, <= 0.2 % at 100; < 0.5 s of CPU
at 100,000.
`ss -tin` lists neither listeners nor TIME_WAIT sockets. Linux only.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Holder, holdable, machine_line, raise_fd_limit, ratio, sizes, table  # noqa: E402

import psutil  # noqa: E402

from netmond.backends.linux import LinuxBackend  # noqa: E402
from netmond.state import MonitorState  # noqa: E402


def measure_in_process(fn, runs: int) -> tuple[float, float]:
    """Median (wall, cpu) seconds of fn() over runs, after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(runs):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def measure_subprocess(argv: list[str], runs: int) -> tuple[float, float]:
    """Median (wall, child cpu) seconds of running argv, output read in full."""
    walls, cpus = [], []
    for _ in range(runs):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        w0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.PIPE, check=True)
        walls.append(time.perf_counter() - w0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
    return statistics.median(walls), statistics.median(cpus)


def count_ss_sockets(argv: list[str]) -> int:
    """Sockets ss lists: lines not indented (-i puts its details on indented lines)."""
    out = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True).stdout.splitlines()
    return sum(1 for line in out[1:] if line and not line[0].isspace())


def bench(sockets: int, runs: int) -> list[tuple[str, int, float, float]]:
    """(method, sockets listed, median wall s, median cpu s) for each method."""
    rows = []
    with Holder(sockets):
        backend = LinuxBackend()  # root mode off: its cost is bench/ebpf.py's
        state = MonitorState()
        try:
            backend.start()
            state.apply(backend.sample())  # the first tick builds the inode index
            wall, cpu = measure_in_process(lambda: state.apply(backend.sample()), runs)
            rows.append(("netmond tick", len(state.open), wall, cpu))
            wall, cpu = measure_in_process(backend.sample, runs)
            rows.append(("sample only", len(backend.sample().sockets), wall, cpu))
        finally:
            backend.close()
        wall, cpu = measure_in_process(lambda: psutil.net_connections("inet"), runs)
        rows.append(("psutil", len(psutil.net_connections("inet")), wall, cpu))
        wall, cpu = measure_subprocess(["ss", "-tin"], runs)
        rows.append(("ss -tin", count_ss_sockets(["ss", "-tin"]), wall, cpu))
    return rows


def report(sockets: int, runs: int, rows: list[tuple[str, int, float, float]]) -> None:
    _, _, ours_wall, ours_cpu = rows[0]
    out = []
    for name, listed, wall, cpu in rows:
        peer = name in ("psutil", "ss -tin")
        out.append((
            name, listed, f"{cpu * 1000:.1f}", f"{wall * 1000:.1f}", f"{cpu * 100:.2f} %",
            ratio(ours_cpu, cpu) if peer else "",
            ratio(ours_wall, wall) if peer else "",
        ))
    table(
        f"Tick cost, {sockets} TCP sockets held (median of {runs})",
        ("method", "listed", "cpu ms", "wall ms", "core @1s", "ours/it cpu", "ours/it wall"),
        out,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, nargs="+")
    parser.add_argument("--size", choices=("small", "large"), default="large",
                        help="small: up to 10,000 sockets; large: also 50,000 and 100,000")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="100 sockets, 2 runs: a smoke run")
    args = parser.parse_args()
    if args.sockets is None:
        args.sockets = sizes(args.size, [100, 1000, 10000], [50000, 100000])
    if args.quick:
        args.sockets, args.runs = [100], 2
    raise_fd_limit()
    print(f"# tick: {machine_line()}")
    for n in holdable(args.sockets):
        report(n, args.runs, bench(n, args.runs))


if __name__ == "__main__":
    main()
