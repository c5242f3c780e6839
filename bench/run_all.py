#!/usr/bin/env python3
"""Every benchmark, one after the other: `make bench` (or `python bench/run_all.py`).

    python bench/run_all.py [--quick] [--size small|large] [--only tick steady load ...]

Each runs in its own process and prints its tables: our figure beside peers
measured in the same run, and the ratio. The full run takes about five
minutes with `--size small` (`make bench BENCH_SIZE=small`: at most
10,000 loopback sockets, RLIMIT_NOFILE hard limit >= 10,100) and about
twenty with `--size large` (the default: the 50,000 and 100,000 socket
rows of tick, load and roundtrip, and the churn scenario at full length,
holders spread over several processes); `--quick` is a smoke run of a few seconds with small socket counts
(tests/integration/test_bench_smoke.py runs it). Figures move with the
machine's load: take them on a quiet machine, and read the ratios, which
compare against peers measured in the same conditions.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
#: timewait.py runs last: the ~20,000 TIME_WAIT remnants it makes on loopback
#: live 60 s, and a bench right after it would count them as its own sockets
#: (without root; as root they are in a network namespace of its own, whose
#: sockets no other bench's dumps list).
BENCHES = ("tick", "steady", "load", "traffic", "roundtrip", "churn", "ebpf", "usage", "timewait")
#: The benches that take --size (the others have no heavy rows).
SIZED = frozenset({"tick", "load", "roundtrip", "churn"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small and short: a smoke run")
    parser.add_argument("--size", choices=("small", "large"), default="large",
                        help="small: skip the 50,000 and 100,000 socket rows and shorten churn")
    parser.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    args = parser.parse_args()
    failed = []
    t0 = time.monotonic()
    for name in args.only:
        argv = [sys.executable, os.path.join(HERE, f"{name}.py")] + (["--quick"] if args.quick else [])
        if name in SIZED:
            argv += ["--size", args.size]
        print(f"\n=== {name} ===", flush=True)
        if subprocess.run(argv).returncode != 0:
            failed.append(name)
    print(f"\n{len(args.only)} benchmarks in {time.monotonic() - t0:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
