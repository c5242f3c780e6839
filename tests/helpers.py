"""Helpers for tests: polling with a deadline, loopback connections, promtool."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll predicate until it returns a truthy value; fail after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def linux_backend_works() -> bool:
    """True where netmond's Linux backend runs here (Linux with netlink sock_diag)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        from netmond.backends import linux

        return linux.netlink_available()
    except Exception:  # noqa: BLE001 - any failure means: skip those tests
        return False


@contextmanager
def tcp_pair(host: str = "127.0.0.1") -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    """(listener, client, server) connected over loopback; all closed on exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lst = socket.socket(family, socket.SOCK_STREAM)
    cli = socket.socket(family, socket.SOCK_STREAM)
    srv = None
    try:
        lst.bind((host, 0))
        lst.listen(8)
        cli.settimeout(5)
        cli.connect(lst.getsockname()[:2])
        lst.settimeout(5)
        srv, _ = lst.accept()
        yield lst, cli, srv
    finally:
        for s in (cli, srv, lst):
            if s is not None:
                s.close()


#: Prometheus' own linter; .ci/run installs it (from Debian's prometheus package).
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool not installed (.ci/run extracts it from Debian's prometheus package)"


def promtool_check_metrics(text: str) -> None:
    """Fail unless `promtool check metrics` accepts the exposition without a remark."""
    assert PROMTOOL is not None, NO_PROMTOOL
    out = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        f"promtool check metrics: exit {out.returncode}\n{out.stdout}{out.stderr}")


@contextmanager
def throwaway_group() -> Iterator[tuple[str, int]]:
    """A new group (name, gid) with no members, deleted on exit; skips the
    test where groupadd is missing."""
    import grp
    import uuid

    import pytest

    if shutil.which("groupadd") is None:
        pytest.skip("needs groupadd")
    name = "nmt" + uuid.uuid4().hex[:8]
    subprocess.run(["groupadd", name], check=True)
    try:
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], check=False)
