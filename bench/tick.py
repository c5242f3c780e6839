#!/usr/bin/env python3
"""How long one tick of the Linux backend takes, against its peers.

    python bench/tick.py [--sockets 1000 10000] [--runs 7]

For each socket count N, a holder process opens N/2 loopback TCP connections
(N sockets, both ends held open, a few bytes moved on each), then this
process measures, over several runs, the median wall-clock and CPU time of:

    linux     LinuxBackend.sample()   dumps + tcp_info + pids + interfaces
    psutil    psutil.net_connections("inet")   sockets + pids, no bytes
    ss        `ss -tin` in a subprocess        sockets + tcp_info, no pids

CPU is this process's (user + system) for the in-process calls and the
child's for ss. Ratios below 1 mean ours is faster. `ss -tin` lists neither
listeners nor TIME_WAIT sockets; the holder closes with RST so that it leaves
no TIME_WAIT behind for the next run. Linux only; run it on an otherwise idle
machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import psutil  # noqa: E402

from netmond.backends.linux import LinuxBackend  # noqa: E402

HOLDER_READY = "ready"


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def hold(sockets: int) -> None:
    """Holder process: open sockets/2 loopback pairs, say ready, wait for stdin EOF."""
    limit = raise_fd_limit()
    if sockets + 64 > limit:
        sys.exit(f"need {sockets + 64} file descriptors, RLIMIT_NOFILE allows {limit}")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    addr = listener.getsockname()
    held = []
    try:
        for _ in range(sockets // 2):
            client = socket.create_connection(addr, timeout=5)
            server, _ = listener.accept()
            client.sendall(b"ping")
            server.recv(16)
            held += (client, server)
        print(HOLDER_READY, flush=True)
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        # Reset, not FIN: no TIME_WAIT remnants left to skew the next run.
        linger_off = struct.pack("ii", 1, 0)
        for s in held:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_off)
            s.close()
        listener.close()


def start_holder(sockets: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--hold", str(sockets)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline().strip()
    if line != HOLDER_READY:
        proc.kill()
        proc.wait()
        raise SystemExit(f"holder failed to open {sockets} sockets")
    return proc


def stop_holder(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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


def bench(sockets: int, runs: int) -> list[tuple[str, float, float, int]]:
    holder = start_holder(sockets)
    backend = LinuxBackend()
    try:
        backend.start()
        t0 = time.perf_counter()
        first = backend.sample()
        cold = time.perf_counter() - t0
        rows = [("linux (first sample)", cold, float("nan"), len(first.sockets))]
        wall, cpu = measure_in_process(backend.sample, runs)
        rows.append(("linux", wall, cpu, len(backend.sample().sockets)))
        wall, cpu = measure_in_process(lambda: psutil.net_connections("inet"), runs)
        rows.append(("psutil", wall, cpu, len(psutil.net_connections("inet"))))
        wall, cpu = measure_subprocess(["ss", "-tin"], runs)
        rows.append(("ss -tin", wall, cpu, count_ss_sockets(["ss", "-tin"])))
    finally:
        backend.close()
        stop_holder(holder)
    return rows


def report(sockets: int, rows: list[tuple[str, float, float, int]]) -> None:
    by_name = {name: (wall, cpu) for name, wall, cpu, _ in rows}
    ours_wall, ours_cpu = by_name["linux"]
    print(f"\n{sockets} TCP sockets held (+ whatever else the machine has)")
    print(f"{'method':<22}{'listed':>8}{'wall ms':>10}{'cpu ms':>10}{'ours/it wall':>14}{'ours/it cpu':>13}")
    for name, wall, cpu, listed in rows:
        listed_text = str(listed)
        ratio_wall = ratio_cpu = ""
        if name in ("psutil", "ss -tin"):
            ratio_wall = f"{ours_wall / wall:.2f}"
            ratio_cpu = f"{ours_cpu / cpu:.2f}" if cpu > 0 else "-"
        cpu_text = f"{cpu * 1000:.1f}" if cpu == cpu else "-"
        print(f"{name:<22}{listed_text:>8}{wall * 1000:>10.1f}{cpu_text:>10}{ratio_wall:>14}{ratio_cpu:>13}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold is not None:
        hold(args.hold)
        return
    raise_fd_limit()
    print(f"Linux {os.uname().release}, Python {sys.version.split()[0]}, psutil {psutil.__version__}, "
          f"{os.cpu_count()} CPUs, median of {args.runs} runs")
    for n in args.sockets:
        report(n, bench(n, args.runs))


if __name__ == "__main__":
    main()
