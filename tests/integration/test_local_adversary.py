"""Issue 10: what another local user could do to a root daemon and root's CLI.

Each test replays one attack of the adversary round as uid 65534 (`setpriv
--reuid=65534 --regid=65534 --clear-groups`) against a real netmond, and
checks what root then gets: exit codes, rows, events, /metrics, memory.
Every one of them failed on the code before the fix (the figures are in the
commit messages and the issue's report).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Iterator

import pytest

from common.client import Client
from tests.conftest import netmonctl_cmd
from tests.helpers import REPO, wait_until

NOBODY = 65534

needs_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or not sys.platform.startswith("linux"),
    reason="needs root and setpriv (Linux) to act as another user",
)


def _nobody_can_run_python() -> bool:
    probe = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", "import msgpack, common.client"],
        env={"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        cwd="/", capture_output=True, timeout=60,
    )
    return probe.returncode == 0


@pytest.fixture(scope="module")
def as_nobody_argv() -> list[str]:
    """argv prefix that runs this venv's python as uid/gid 65534 with the repo importable."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    if not _nobody_can_run_python():
        pytest.skip(f"uid {NOBODY} cannot run {sys.executable} with {REPO} importable")
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable]


def nobody_env(**extra: str) -> dict[str, str]:
    return {"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra}


def spawn_as_nobody(argv: list[str], script: str, *args: str) -> subprocess.Popen:
    """Start `script` (python source) as nobody; its stdout is a pipe of lines."""
    return subprocess.Popen([*argv, "-c", script, *args], env=nobody_env(), cwd="/",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def linux_backend_works() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        from netmond.backends import linux

        return linux.netlink_available()
    except Exception:  # noqa: BLE001
        return False


def netmonctl(socket_path: str, *args: str, prefix: list[str] | None = None,
              env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run netmonctl (as root unless `prefix` says otherwise) against socket_path."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("NETMON_")}
    return subprocess.run([*(prefix or []), *netmonctl_cmd("--socket", socket_path, *args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**base, "PYTHONPATH": str(REPO), **(env or {})})


# -- hole 1: a process name that is not UTF-8 ------------------------------------------

# A process named "éééééééé": the kernel keeps 15 bytes of a name, which cuts
# the eighth "é" in half. It holds a loopback connection and moves bytes on it.
BAD_NAME_PROCESS = r"""
import ctypes, socket, sys, time
ctypes.CDLL(None).prctl(15, "éééééééé".encode(), 0, 0, 0)
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen()
cli = socket.create_connection(lst.getsockname()); srv, _ = lst.accept()
print(lst.getsockname()[1], flush=True)
while sys.stdin.readline():
    cli.sendall(b"x" * 100000)
    got = 0
    while got < 100000:
        got += len(srv.recv(1 << 20))
    print("moved", flush=True)
"""


@needs_setpriv
@pytest.mark.skipif(not linux_backend_works(), reason="needs the Linux backend (netlink sock_diag)")
def test_hole1_a_non_utf8_process_name_never_blinds_the_daemon(start_daemon_thread, as_nobody_argv):
    pytest.importorskip("prometheus_client")
    port = free_port()
    from netmond.backends.linux import LinuxBackend

    d = start_daemon_thread(LinuxBackend(), metrics_listen=f"127.0.0.1:{port}")
    evil = subprocess.Popen([*as_nobody_argv, "-c", BAD_NAME_PROCESS], env=nobody_env(), cwd="/",
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        lport = int(evil.stdout.readline())
        expected = "ééééééé\ufffd"  # 7 whole characters and the cut one replaced

        with d.client() as watcher:
            watcher.call("subscribe", {"topics": ["connection_update", "stats_update"]})

            def evil_rows() -> list[dict[str, Any]]:
                with d.client() as c:
                    rows = c.call("connections", {"filter": {"port": lport}})["connections"]
                return [r for r in rows if r["pid"] == evil.pid or r["process_name"] == expected]

            rows = wait_until(evil_rows, timeout=20)
            assert {r["process_name"] for r in rows} == {expected}
            assert {r["user"] for r in rows} == {"nobody"}
            evil.stdin.write("go\n")
            evil.stdin.flush()
            assert evil.stdout.readline().strip() == "moved"
            ticks = d.daemon.state.ticks
            wait_until(lambda: d.daemon.state.ticks >= ticks + 3, timeout=20)
            events = 0
            deadline = time.monotonic() + 10
            while events < 3 and time.monotonic() < deadline:
                events += watcher.next_notification(timeout=2) is not None
            assert events >= 3, "the subscriber received nothing"

        for cmd in (["conns"], ["apps"], ["stats"], ["conns", "--json"], ["apps", "--json"]):
            ran = netmonctl(d.socket, *cmd)
            assert ran.returncode == 0, (cmd, ran.returncode, ran.stderr)
        apps = json.loads(netmonctl(d.socket, "apps", "--json").stdout)["apps"]
        assert expected in {a["process_name"] for a in apps}
        assert expected in netmonctl(d.socket, "conns").stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert resp.status == 200
            assert f'app="{expected}"' in resp.read().decode()
    finally:
        evil.stdin.close()
        stop(evil)
    # After the process is gone its bytes are still in the totals: still readable.
    ticks = d.daemon.state.ticks
    wait_until(lambda: d.daemon.state.ticks >= ticks + 2, timeout=20)
    assert netmonctl(d.socket, "apps").returncode == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
