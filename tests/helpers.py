"""Helpers for tests: polling with a deadline, loopback connections, promtool."""

from __future__ import annotations

import inspect
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parent.parent


def wait_until(poll: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, *,
               what: str | None = None, until: Callable[[Any], Any] = bool) -> Any:
    """Call poll() every `interval` s until until(value) holds (by default:
    until the value is truthy) and return that value. After `timeout` s,
    fail with AssertionError naming what was awaited (`what`, else the
    source line of the lambda given as `until`, else as `poll`) and the last
    value seen.

    The one way tests wait for something to happen: on something
    observable (a tick count, a row, a line), never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = poll()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            awaited = what or _describe(poll if until is bool else until)
            raise AssertionError(f"waited {timeout:g}s for {awaited}; "
                                 f"last value seen:{_shown(value)}")
        time.sleep(interval)


def _describe(poll: Callable[[], Any]) -> str:
    """A lambda by its source line, a function by its name."""
    if getattr(poll, "__name__", "") == "<lambda>":
        try:
            return " ".join(inspect.getsource(poll).split())
        except (OSError, TypeError):
            pass
    return getattr(poll, "__qualname__", repr(poll))


def _shown(value: Any, limit: int = 3000) -> str:
    """A text of several lines (a screen, a log) as it reads, else its repr;
    cut to its last `limit` characters (a whole snapshot would bury the
    message)."""
    text = "\n" + value if isinstance(value, str) and "\n" in value else " " + repr(value)
    return text if len(text) <= limit else f" ...{len(text) - limit} characters cut... {text[-limit:]}"


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
