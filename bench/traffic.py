#!/usr/bin/env python3
"""Daemon CPU under a saturating loopback transfer, against nethogs.

    python bench/traffic.py [--seconds 15] [--sockets 100] [--quick]

A real `netmond` (1 s interval) watches a holder's loopback sockets. Beside
it runs `nethogs -t -a -d 1 lo` (Debian package nethogs; it captures packets,
so it needs root) when installed. Both are measured over two windows of the
same length: at rest, then while one loopback connection is pushed as fast
as this machine allows (1 MiB sendall()s, one thread each end).

netmond reads the kernel's per-socket counters, so its cost should not grow
with the bytes moved: target, CPU under traffic no higher than at rest plus
noise. nethogs sees every packet. The last line checks that netmond did
count the transfer: the bytes its row showed against the bytes moved.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Daemon, Holder, Transfer, Usage, machine_line, popen, raise_fd_limit, ratio, table  # noqa: E402


def start_nethogs() -> tuple[subprocess.Popen | None, str]:
    """nethogs in trace mode on lo, or (None, why not)."""
    path = shutil.which("nethogs") or next(
        (p for p in ("/usr/sbin/nethogs", "/sbin/nethogs") if os.access(p, os.X_OK)), None)
    if path is None:
        return None, "nethogs not installed (apt-get install nethogs)"
    if os.geteuid() != 0:
        return None, "nethogs needs root (packet capture)"
    proc = popen([path, "-t", "-a", "-d", "1", "lo"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(1.0)  # it fails at once when it cannot capture
        return None, f"nethogs exited with status {proc.returncode}"
    except subprocess.TimeoutExpired:
        return proc, ""


def counted_bytes(socket_path: str) -> int:
    """The most bytes_received netmond shows on any one connection now."""
    from common.client import Client

    with Client.connect(socket_path, timeout=30) as c:
        rows = c.call("connections", {"include_closed": True,
                                      "fields": ["bytes_received", "scope"]})["connections"]
    return max((r["bytes_received"] or 0 for r in rows), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each window")
    parser.add_argument("--sockets", type=int, default=100, help="idle sockets held meanwhile")
    parser.add_argument("--quick", action="store_true", help="2 s windows: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 2.0
    raise_fd_limit()
    print(f"# traffic: {machine_line()}")
    with Holder(args.sockets), Daemon(1.0) as daemon:
        daemon.wait_ticks(2)
        nethogs, why_not = start_nethogs()
        try:
            pids = {"netmond": daemon.pid}
            if nethogs is not None:
                pids["nethogs -t -a lo"] = nethogs.pid
            rest = Usage(pids).run(args.seconds)
            with Transfer() as transfer:
                busy = Usage(pids).run(args.seconds)
                daemon.wait_ticks(0)  # (a status call: the daemon answers under load)
                seen = counted_bytes(daemon.socket)
        finally:
            if nethogs is not None:
                nethogs.terminate()
                try:
                    nethogs.wait(10)
                except subprocess.TimeoutExpired:
                    nethogs.kill()
                    nethogs.wait()
    rate = transfer.rate or 0.0
    ours_busy = busy.cpu_percent["netmond"]
    rows = []
    for name in ("netmond", "nethogs -t -a lo"):
        if name not in pids:
            rows.append((name, "n/a", "n/a", "n/a", "n/a"))
            continue
        r, b = rest.cpu_percent[name], busy.cpu_percent[name]
        rows.append((name, f"{r:.2f}", f"{b:.2f}", f"{b - r:+.2f}",
                     ratio(ours_busy, b) if name != "netmond" else ""))
    table(
        f"Cost under traffic: loopback transfer at {rate / 1e9:.2f} GB/s, {args.seconds:g} s windows, "
        f"{args.sockets} idle sockets held",
        ("process", "cpu % at rest", "cpu % under traffic", "growth (points)", "ours/it under traffic"),
        rows,
    )
    if nethogs is None:
        print(f"nethogs: n/a ({why_not})")
    moved = rate * busy.seconds
    print(f"netmond counted {seen / 1e9:.2f} GB on the transfer's connection "
          f"(about {moved / 1e9:.2f} GB moved in the window, more before and after it)")


if __name__ == "__main__":
    main()
