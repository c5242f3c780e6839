"""Fixtures shared by every test: short socket paths and real daemons.

Two ways to run a real netmond, both on a short temporary socket path
(AF_UNIX paths are limited to ~100 bytes, pytest's tmp_path is longer):
- `start_daemon_thread(**config)`: netmond.app.run() in a thread of the test
  process; fast, and the test can reach into Daemon for white-box checks.
- `start_daemon_process(*args)`: `python -m netmond.main` as a subprocess,
  exactly as a user runs it.
Both are stopped and their sockets removed at teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from common.client import Client, wait_for_daemon

from tests.helpers import REPO, wait_until

# Every netmond a test starts, however it starts it, stores usage in a
# directory of the test run (NETMON_DATA_DIR, see common/paths.py), never in
# /var/lib/netmon or the real home; the fixtures below give each daemon its own.
_SESSION_DATA = tempfile.mkdtemp(prefix="nm-data-", dir="/tmp")
os.environ["NETMON_DATA_DIR"] = _SESSION_DATA

# Ctrl-C reaches the processes the tests start as it reaches a command typed
# in a terminal. A suite started in the background of a non-interactive shell
# (`make test &`, `pytest ... > log &`) inherits SIGINT *ignored*; Python then
# installs no KeyboardInterrupt handler and leaves it ignored, in pytest and in
# every process pytest starts. The tests that end `netmonctl watch` and
# `netmonctl fleet --watch` with SIGINT then waited for an exit that could not
# come (the 10 s and 30 s timeouts). A caught signal is reset to its default
# at exec, so catching it here gives those processes back the disposition of
# a foreground run; pytest itself gets Python's usual KeyboardInterrupt.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _usage_data_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh default data directory per test (removed after it)."""
    path = tempfile.mkdtemp(prefix="nmd-", dir=_SESSION_DATA)
    monkeypatch.setenv("NETMON_DATA_DIR", path)
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_DATA, ignore_errors=True)


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A fresh directory under /tmp with a short path, removed afterwards."""
    path = tempfile.mkdtemp(prefix="nm-", dir="/tmp")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class ThreadDaemon:
    """A netmond running in a thread of the test process."""

    socket: str
    daemon: Any
    thread: threading.Thread
    exit_code: list[int]

    def client(self, timeout: float = 5.0) -> Client:
        c = Client.connect(self.socket, timeout=timeout)
        c.hello()
        return c

    def stop(self, timeout: float = 10.0) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "daemon thread did not stop"


@pytest.fixture
def start_daemon_thread(short_dir: str) -> Iterator[Callable[..., ThreadDaemon]]:
    """Factory: start netmond.app.run(config) in a thread; stopped at teardown."""
    from netmond import app
    from netmond.config import build_config

    started: list[ThreadDaemon] = []

    def start(backend: Any = None, **overrides: Any) -> ThreadDaemon:
        overrides.setdefault("socket", os.path.join(short_dir, f"d{len(started)}.sock"))
        overrides.setdefault("interval", 0.2)
        overrides.setdefault("backend", "portable")
        # Usage is stored in the test's own directory, never the real one.
        overrides.setdefault("data_dir", os.path.join(os.environ["NETMON_DATA_DIR"], f"d{len(started)}"))
        config = build_config({}, **overrides)
        holder: list[Any] = []
        code: list[int] = []
        thread = threading.Thread(
            target=lambda: code.append(app.run(config, backend=backend, on_start=holder.append)),
            name="netmond-test",
            daemon=True,
        )
        thread.start()
        wait_until(lambda: holder, 10, 0.01, what=f"netmond's thread to start (exit code {code})")
        d = ThreadDaemon(config.socket, holder[0], thread, code)
        started.append(d)
        if not holder[0].ready.wait(10):
            raise AssertionError(f"daemon not ready; exit code {code}")
        return d

    yield start
    for d in started:
        if d.thread.is_alive():
            d.stop()


@dataclass
class ProcessDaemon:
    """A netmond subprocess."""

    socket: str
    proc: subprocess.Popen
    log_path: str

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text()
        except OSError:
            return ""


def netmond_cmd(*args: str) -> list[str]:
    """argv that runs netmond from this checkout with the test interpreter."""
    return [sys.executable, "-m", "netmond.main", *args]


def netmonctl_cmd(*args: str) -> list[str]:
    """argv that runs netmonctl from this checkout with the test interpreter."""
    return [sys.executable, "-m", "netmonctl.cli", *args]


@pytest.fixture
def start_daemon_process(short_dir: str) -> Iterator[Callable[..., ProcessDaemon]]:
    """Factory: run `netmond` as a subprocess on a short socket; stopped at teardown."""
    started: list[ProcessDaemon] = []

    def start(*args: str, socket_path: str | None = None, wait: bool = True,
              env: dict[str, str] | None = None, prefix: list[str] | None = None) -> ProcessDaemon:
        path = socket_path or os.path.join(short_dir, f"p{len(started)}.sock")
        argv = list(args)
        if "--socket" not in argv:
            argv += ["--socket", path]
        if "--interval" not in argv:
            argv += ["--interval", "0.2"]
        if "--data-dir" not in argv and "--no-store-usage" not in argv:
            # Usage is stored in the test's own directory, never the real one.
            argv += ["--data-dir", os.path.join(os.environ["NETMON_DATA_DIR"], f"p{len(started)}")]
        log_path = os.path.join(short_dir, f"p{len(started)}.log")
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            (prefix or []) + netmond_cmd(*argv),
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, **(env or {}), "PYTHONPATH": str(REPO)},
        )
        log.close()
        d = ProcessDaemon(path, proc, log_path)
        started.append(d)
        if wait:
            try:
                wait_for_daemon(path, timeout=15)
            except TimeoutError:
                d.stop()
                raise AssertionError(f"netmond did not start:\n{d.log()}")
        return d

    yield start
    for d in started:
        d.stop()
