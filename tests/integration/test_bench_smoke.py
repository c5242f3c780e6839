"""The benchmarks still run: `bench/run_all.py --quick` prints every table.

A smoke test only: it asserts that each script runs to the end and prints
its table with a peer and a ratio, never what the numbers are (they depend
on the machine and its load).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from netmond.backends.linux import netlink_available
from tests.helpers import REPO

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not netlink_available(),
    reason="the benchmarks measure the Linux backend",
)


def test_run_all_quick_prints_every_table():
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run_all.py"), "--quick"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=100,
    )
    out = done.stdout
    assert done.returncode == 0, out
    for title in ("Tick cost", "TIME_WAIT remnants", "Steady state", "Under load", "Cost under traffic", "Start-up",
                  "Round trip", "Churn with CPU hogs", "usage --by day,app", "with usage stored vs not"):
        assert title in out, f"no {title!r} table:\n{out}"
    # Each table sets our figure beside a peer, with the ratio.
    for peer in ("psutil", "ss -tin", "psutil loop", "nethogs", "ss -tn", "python -c pass"):
        assert peer in out, f"peer {peer!r} missing:\n{out}"
    assert out.count("ours/it") >= 7
    assert "FAILED" not in out and "Traceback" not in out
