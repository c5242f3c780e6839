"""A real `netmond --backend darwin` on Linux, with tests/data/fake_nettop as
its nettop, and `netmonctl` as a subprocess: what a Mac user would read.

The recordings replay a frame a second, as nettop -s 1 prints them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from tests.conftest import netmonctl_cmd
from tests.darwin_fakes import DATA, path_with_fake_nettop
from tests.helpers import REPO, wait_until

APSD_REMOTE = "17.57.146.10:5223"

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def fake_env(tmp_path) -> dict[str, str]:
    return {
        "PATH": path_with_fake_nettop(tmp_path),
        "NETTOP_FAKE_ARGV_LOG": str(tmp_path / "runs.jsonl"),
    }


def ctl(socket_path: str, *args: str):
    out = subprocess.run(
        netmonctl_cmd("--socket", socket_path, *args),
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def app_totals(socket_path: str, name: str) -> tuple[int, int] | None:
    for app in json.loads(ctl(socket_path, "apps", "--json"))["apps"]:
        if app["process_name"] == name:
            return app["bytes_received"], app["bytes_sent"]
    return None



def nettops(daemon_pid: int) -> list[psutil.Process]:
    """The daemon's nettop (under setpriv too, which execs)."""
    found = []
    for child in psutil.Process(daemon_pid).children(recursive=True):
        try:
            if any(a.endswith("nettop") for a in child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone meanwhile (a restart)
            continue
    return found


def test_apps_count_from_the_first_frame_and_across_a_nettop_restart(start_daemon_process, fake_env):
    recordings = [DATA / "nettop" / "preexisting.csv", DATA / "nettop" / "preexisting_after_restart.csv"]
    env = {
        **fake_env,
        # the first frame comes after netmond's first sample, as on a Mac
        # where nettop takes a moment to start
        "NETTOP_FAKE_FIRST_DELAY": "1.0",
        "NETTOP_FAKE_RECORDING": ";".join(map(str, recordings)),
        "NETTOP_FAKE_HANG": "99",  # each run stays up after its last frame
    }
    d = start_daemon_process("--backend", "darwin", "--interval", "1", env=env)
    # apsd's connection was open before netmond: 3,177,530 in / 7,189,392
    # out in the first frame, 3,177,700 / 7,189,600 two frames later
    assert wait_until(lambda: app_totals(d.socket, "apsd") == (170, 208), 30)
    (row,) = [c for c in json.loads(ctl(d.socket, "conns", "--json"))["connections"]
              if c["remote_addr"] == APSD_REMOTE]

    (first,) = wait_until(lambda: nettops(d.proc.pid), 10)
    first.send_signal(signal.SIGKILL)
    # the new nettop counts the same connection on: 3,177,900 / 7,189,800
    assert wait_until(lambda: app_totals(d.socket, "apsd") == (370, 408), 30)
    (again,) = [c for c in json.loads(ctl(d.socket, "conns", "--json"))["connections"]
                if c["remote_addr"] == APSD_REMOTE]
    assert again["id"] == row["id"]  # one connection, one row, across the restart
    assert (again["bytes_received"], again["bytes_sent"]) == (370, 408)
    status = json.loads(ctl(d.socket, "status", "--json"))
    assert any("killed by SIGKILL" in w for w in status["warnings"])


def test_status_and_interval_say_what_nettop_really_samples(start_daemon_process, fake_env):
    env = {**fake_env, "NETTOP_FAKE_LOOP": "1", "NETTOP_FAKE_DELAY": "0.3"}
    d = start_daemon_process("--backend", "darwin", "--interval", "1.5", env=env)
    status = json.loads(ctl(d.socket, "status", "--json"))
    assert (status["interval"], status["effective_interval"]) == (1.5, 2.0)
    assert any("nettop samples every 2s, not every 1.5s" in w for w in status["warnings"])
    assert "(the backend samples every 2s)" in ctl(d.socket, "status")
    assert "nettop takes whole seconds" in ctl(d.socket, "interval")
    assert json.loads(ctl(d.socket, "interval", "--json")) == {"interval": 1.5, "effective_interval": 2.0}

    assert json.loads(ctl(d.socket, "interval", "2", "--json")) == {"interval": 2.0}
    assert ctl(d.socket, "interval", "1.2").strip() == (
        "sampling interval set to 1.2s (the backend samples every 2s: nettop takes whole seconds)"
    )
    runs = [json.loads(line) for line in Path(env["NETTOP_FAKE_ARGV_LOG"]).read_text().splitlines()]
    assert all(run[run.index("-s") + 1].isdigit() for run in runs)  # never a fraction



def test_a_closed_connections_last_bytes_reach_conns_and_apps(start_daemon_process, fake_env):
    """curl's port-80 connection moves 2,000 / 200 bytes, then 2,000 / 200
    more in the interval in which it closes: its row vanishes, curl's
    process row keeps them (as a long-running nettop does)."""
    env = {**fake_env, "NETTOP_FAKE_RECORDING": str(DATA / "nettop" / "closing.csv"), "NETTOP_FAKE_HANG": "99"}
    d = start_daemon_process("--backend", "darwin", "--interval", "1", env=env)
    assert wait_until(lambda: app_totals(d.socket, "curl") == (4000, 400), 30)
    rows = json.loads(ctl(d.socket, "conns", "--closed", "--json"))["connections"]
    (closed,) = [c for c in rows if c["remote_addr"] == "93.184.216.34:80"]
    assert closed["state"] == "CLOSED"
    assert (closed["bytes_received"], closed["bytes_sent"]) == (4000, 400)


def test_not_root_the_same(start_daemon_process, tmp_path):
    """nettop needs no root on a Mac; neither does the darwin backend here."""
    from tests.integration.test_cli import as_nobody

    prefix = as_nobody()
    shared = Path(tempfile.mkdtemp(prefix="nm12-", dir="/tmp"))
    try:
        fake_path = path_with_fake_nettop(shared)
        os.chown(shared, 65534, 65534)  # nobody's own directory, for its socket
        env = {
            "PATH": fake_path,
            "NETTOP_FAKE_RECORDING": str(DATA / "nettop" / "preexisting.csv"),
            "NETTOP_FAKE_HANG": "99",
        }
        d = start_daemon_process("--backend", "darwin", "--interval", "1",
                                 socket_path=str(shared / "n.sock"), env=env, prefix=prefix)
        assert wait_until(lambda: app_totals(d.socket, "apsd") == (170, 208), 30)
        (nettop,) = wait_until(lambda: nettops(d.proc.pid), 10)
        assert nettop.uids().real == 65534
        status = json.loads(ctl(d.socket, "status", "--json"))
        assert status["privileged"] is False and status["backend"] == "darwin"
    finally:
        shutil.rmtree(shared, ignore_errors=True)

