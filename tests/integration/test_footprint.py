"""What the daemon keeps out of its memory (see README, Benchmarks)."""

from __future__ import annotations

import os
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")


def _mapped_libraries(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def test_daemon_without_metrics_does_not_load_openssl(start_daemon_process):
    daemon = start_daemon_process()
    maps = _mapped_libraries(daemon.proc.pid)
    assert "libssl" not in maps and "_ssl" not in maps
    from common.client import Client

    with Client.connect(daemon.socket) as c:  # and it serves as usual
        c.hello()
        assert c.call("status")["monitoring"] is True
