#!/usr/bin/env python3
"""Usage over days: a year of stored usage, its size and query time; the
daemon's tick cost and RSS with storing on and off.

    python bench/usage.py [--apps 50] [--remotes 200] [--days 365] [--sockets 100 10000] [--seconds 30] [--quick]

1. Generates a year of usage for 50 apps x 200 remotes (each remote talks
   to one app, every app and remote moves bytes every hour: the worst case
   for the hourly rows) the way the daemon leaves it: hours for the last 35
   days, days before that (written as hours, then compacted by the store's
   own upkeep). Prints the file's size.
2. Starts a real netmond on that data directory and times
   `netmonctl usage --by day,app --since 365d --json` (whole command, median
   of 5) and the `usage` RPC alone, beside `netmonctl apps --json` (a
   command that reads memory only) as the peer.
3. Runs two netmonds side by side in the same window, one storing usage
   (on the generated year) and one with --no-store-usage, while a loopback
   transfer moves bytes and 100, then 10,000 sockets are held: CPU % of one
   core, peak RSS, median tick seconds. Targets: those of steady.py (README,
   Benchmarks: < 1 % of a core at 100 sockets, RSS < 80 MB at 10,000) with
   storing on, and storing on within noise of storing off.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    ROOT, Daemon, Holder, Transfer, Usage, machine_line, max_sockets, mb, raise_fd_limit, ratio, table,
)

from netmond.usage.store import COMPACT_AFTER_DAYS, HOUR, FILE_NAME, UsageStore, hour_of, local_midnight  # noqa: E402


def generate_year(path: str, now: float, apps: int = 50, remotes: int = 200, days: int = 365,
                  seed: int = 1) -> UsageStore:
    """Fill a store at `path` with `days` of usage ending at `now`; returns it open.

    Remote i belongs to app i % apps. Days past COMPACT_AFTER_DAYS are each
    written as one batch (one hour holding the day's bytes) and compacted
    into days by UsageStore.maintain, which gives the same rows as 24 hours
    compacted; the last COMPACT_AFTER_DAYS days are written hour by hour.
    """
    rnd = random.Random(seed)
    names = [f"app-{i:02d}" for i in range(apps)]
    ips = [f"203.0.{i // 250}.{i % 250 + 1}" for i in range(remotes)]
    hosts = {ip: f"host{i}.example.net" for i, ip in enumerate(ips)}
    store = UsageStore(path, retention_days=400)
    first_hourly = local_midnight(now - COMPACT_AFTER_DAYS * 86400)

    def batch(hour: int, scale: int) -> tuple[dict, dict]:
        a: dict = {}
        r: dict = {}
        for i, ip in enumerate(ips):
            app = names[i % apps]
            s, v = rnd.randrange(1, 1000) * scale, rnd.randrange(1, 10000) * scale
            r[(hour, ip, app)] = [s, v]
            entry = a.setdefault((hour, app), [0, 0])
            entry[0] += s
            entry[1] += v
        return a, r

    day = local_midnight(now - days * 86400)
    while day < first_hourly:
        store.write(*batch(day + 12 * HOUR, 24), hosts)
        day = local_midnight(day + 26 * HOUR)
    store.maintain(now)
    hour = first_hourly
    while hour <= hour_of(now):
        store.write(*batch(hour, 1), hosts)
        hour += HOUR
    store.maintain(now)
    return store


def _median_wall(argv: list[str], runs: int, env: dict[str, str]) -> float:
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, env=env, cwd=ROOT)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def bench_store(args: argparse.Namespace, data_dir: str) -> None:
    now = time.time()
    t0 = time.perf_counter()
    store = generate_year(os.path.join(data_dir, FILE_NAME), now, args.apps, args.remotes, args.days)
    generated = time.perf_counter() - t0
    rows = {t: store.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("app_hours", "app_days", "remote_hours", "remote_days")}
    t0 = time.perf_counter()
    result = store.query(now - 365 * 86400, now, ("day", "app"))
    in_process = time.perf_counter() - t0
    store.close()
    size = os.path.getsize(os.path.join(data_dir, FILE_NAME))
    print(f"\ngenerated {args.days} days x {args.apps} apps x {args.remotes} remotes in {generated:.1f} s: "
          + ", ".join(f"{n} {t} rows" for t, n in rows.items()))
    print(f"store file: {size / 1e6:.1f} MB ({size} bytes); query in process: {in_process * 1000:.0f} ms, "
          f"{len(result)} rows")

    with Daemon(1.0, "--data-dir", data_dir) as daemon:
        from common.client import Client

        env = {**os.environ, "PYTHONPATH": ROOT, "NETMON_SOCKET": daemon.socket}
        ctl = [sys.executable, "-m", "netmonctl.cli"]
        usage_wall = _median_wall(ctl + ["usage", "--by", "day,app", "--since", "365d", "--json"], args.runs, env)
        apps_wall = _median_wall(ctl + ["apps", "--json"], args.runs, env)
        rpc = []
        with Client.connect(daemon.socket, timeout=60) as c:
            for _ in range(args.runs):
                t0 = time.perf_counter()
                got = c.usage(since="365d", by="day,app")
                rpc.append(time.perf_counter() - t0)
            status = c.status()
    table(
        f"usage --by day,app --since 365d on a generated year ({len(got['usage'])} rows), median of {args.runs}",
        ("command", "wall ms", "ours/it"),
        [("netmonctl usage --by day,app --since 365d --json", f"{usage_wall * 1000:.0f}", ratio(usage_wall, apps_wall)),
         ("  of which the usage RPC", f"{statistics.median(rpc) * 1000:.0f}", ""),
         ("netmonctl apps --json (memory only)", f"{apps_wall * 1000:.0f}", "")],
    )
    print(f"status.usage_store.size_bytes: {status['usage_store']['size_bytes']}")


def bench_tick(args: argparse.Namespace, data_dir: str, sockets: int) -> None:
    from common.client import Client

    with Holder(sockets), Transfer() as transfer, \
            Daemon(1.0, "--data-dir", data_dir) as on, Daemon(1.0, "--no-store-usage") as off:
        on.wait_ticks(3)
        off.wait_ticks(3)
        ticks: dict[str, list[float]] = {"on": [], "off": []}
        start = time.monotonic()
        usage = Usage({"storing on": on.pid, "storing off": off.pid})
        import threading

        done = threading.Event()

        def sample_ticks() -> None:
            with Client.connect(on.socket) as a, Client.connect(off.socket) as b:
                while not done.is_set():
                    for name, c in (("on", a), ("off", b)):
                        t = c.status()["last_tick_seconds"]
                        if t is not None:
                            ticks[name].append(t)
                    done.wait(1.0)

        sampler = threading.Thread(target=sample_ticks)
        sampler.start()
        usage.run(args.seconds)
        done.set()
        sampler.join()
        with Client.connect(on.socket) as c:
            stored = c.usage(since=start - 60, by="app")["usage"]
            written = c.status()["usage_store"]
    moved = sum(r["bytes_sent"] + r["bytes_received"] for r in stored)
    rows = []
    for name, key in (("storing on", "on"), ("storing off", "off")):
        rows.append((f"netmond, {name}", f"{usage.cpu_percent[name]:.2f}", mb(usage.peak_rss[name]),
                     f"{statistics.median(ticks[key]) * 1000:.1f}" if ticks[key] else "-"))
    table(
        f"Tick cost with usage stored vs not, {sockets} sockets held, a loopback transfer at "
        f"{(transfer.rate or 0) / 1e9:.2f} GB/s, {usage.seconds:.0f} s window",
        ("process", "cpu % of 1 core", "peak RSS MB", "median tick ms"),
        rows,
    )
    print(f"stored during the window: {moved / 1e9:.2f} GB; store {written['size_bytes'] / 1e6:.1f} MB, "
          f"last written {time.time() - (written['written_at'] or 0):.1f} s before the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=50)
    parser.add_argument("--remotes", type=int, default=200)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--sockets", type=int, nargs="+", default=[100, 10000])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a small year, 3 s: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.apps, args.remotes, args.days, args.sockets, args.seconds, args.runs = 5, 20, 60, [100], 3.0, 1
    raise_fd_limit()
    print(f"# usage: {machine_line()}")
    data_dir = tempfile.mkdtemp(prefix="nmu-", dir="/tmp")
    try:
        bench_store(args, os.path.join(data_dir, "data"))
        for n in args.sockets:
            if n > max_sockets():
                print(f"\n{n} sockets: n/a (RLIMIT_NOFILE allows at most {max_sockets()})")
                continue
            bench_tick(args, os.path.join(data_dir, "data"), n)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
