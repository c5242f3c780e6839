"""DarwinBackend on Linux, with tests/data/fake_nettop standing in for nettop.

The fake replays the recordings in tests/data/nettop/ through the same
command line, pty and restart logic the backend uses with the real
nettop; every wait here is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import psutil
import pytest

from netmond.backends.base import SocketSample
from netmond.backends.darwin import RESTART_MIN, DarwinBackend, sockets_from_sample

from tests.darwin_fakes import APSD, FAKE_NETTOP, MIXED, StubProcesses, path_with_fake_nettop
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake_path(tmp_path, monkeypatch):
    """PATH with a `nettop` that is the fake, first; fast replay by default."""
    monkeypatch.setenv("PATH", path_with_fake_nettop(tmp_path))
    monkeypatch.setenv("NETTOP_FAKE_DELAY", "0.2")
    for name in ("NETTOP_FAKE_LOOP", "NETTOP_FAKE_EXIT_CODE", "NETTOP_FAKE_RECORDING"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_backend():
    made: list[DarwinBackend] = []

    def make(interval: float = 1.0, **kwargs) -> DarwinBackend:
        kwargs.setdefault("process_cache", StubProcesses())
        backend = DarwinBackend(interval, **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def socket_by_key(snapshot, key) -> SocketSample | None:
    return next((s for s in snapshot.sockets if s.key == key), None)


def collect(backend: DarwinBackend, seconds: float):
    snapshots = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        snapshots.append(backend.sample())
    return snapshots


@pytest.mark.parametrize("use_pty", [True, False], ids=["pty", "pipe"])
def test_samples_carry_the_recorded_sockets(fake_path, make_backend, monkeypatch, use_pty):
    monkeypatch.setenv("NETTOP_FAKE_HANG", "4")  # three frames, then nothing: one run
    backend = make_backend(1.0, use_pty=use_pty)
    backend.start()
    assert backend.wait_for_sample(15)
    snapshots = collect(backend, 1.5)

    # every recorded frame came through whole: its sockets, states, owners
    # (plus, for one frame, the sockets still carried from the frame before)
    shapes = [{(s.key, s.state, s.pid) for s in sockets_from_sample(f)} for f in MIXED]
    seen = [{(s.key, s.state, s.pid) for s in snap.sockets} for snap in snapshots if snap.sockets]
    for i, shape in enumerate(shapes):
        assert any(shape <= got for got in seen), f"frame {i + 1} missing"
    for snap in snapshots:
        assert snap.interfaces, "interface counters come with every snapshot"
        assert len({s.key for s in snap.sockets}) == len(snap.sockets)

    # counted from the first frame: growth, not the connection's history
    # (per frame, the last word: a frame cut by a pause comes again, whole)
    apsd: dict[float, int] = {}
    for snap in snapshots:
        row = socket_by_key(snap, APSD)
        if row is not None:
            apsd[snap.monotonic] = row.bytes_received
    assert [apsd[t] for t in sorted(apsd)] == [0, 70, 170]
    # the recording's garbage (2 lines; its cut-off last row waits for a newline)
    (warning,) = backend.status().warnings
    assert re.fullmatch(r"\d+ line\(s\) of nettop output could not be parsed and were skipped", warning)
    assert int(warning.split()[0]) == 2
    assert backend.status().attribution_complete


def test_consecutive_samples_are_fresh(fake_path, make_backend, monkeypatch):
    monkeypatch.setenv("NETTOP_FAKE_LOOP", "1")
    backend = make_backend(1.0)
    backend.start()
    assert backend.wait_for_sample(15)
    times = [backend.sample().monotonic for _ in range(5)]
    # the fake prints every 0.2 s and sample() waits up to 0.5 s for news
    assert all(b > a for a, b in zip(times, times[1:])), times


def test_a_killed_nettop_is_restarted(fake_path, make_backend, monkeypatch):
    monkeypatch.setenv("NETTOP_FAKE_LOOP", "1")
    backend = make_backend(1.0)
    backend.start()
    assert backend.wait_for_sample(15)
    first = backend.nettop_pid
    assert first is not None

    os.kill(first, signal.SIGKILL)
    second = wait_until(lambda: backend.nettop_pid not in (None, first) and backend.nettop_pid, 15)
    assert second, "nettop was not restarted"
    assert backend.nettop_exits == 1
    warnings = " ".join(backend.status().warnings)
    assert "killed by SIGKILL" in warnings

    # and the new one delivers samples
    runs = backend._runner._runs
    assert wait_until(lambda: backend._runner._runs > runs or backend._runner._runs >= 2, 10)
    assert wait_until(lambda: socket_by_key(backend.sample(), APSD), 10)


def test_a_nettop_that_exits_is_restarted_with_its_reason(fake_path, make_backend, monkeypatch):
    monkeypatch.setenv("NETTOP_FAKE_EXIT_CODE", "3")  # replays once, then exits 3
    backend = make_backend(1.0)
    backend.start()
    assert backend.wait_for_sample(15)
    assert wait_until(lambda: backend.nettop_exits >= 1, 15)
    warnings = " ".join(backend.status().warnings)
    assert "exit status 3" in warnings
    assert "exiting 3" in warnings  # nettop's last stderr line
    # it had produced samples, so it is back after the shortest backoff
    assert wait_until(lambda: backend.nettop_pid, RESTART_MIN + 10)


def test_close_leaves_no_child(fake_path, make_backend, monkeypatch):
    monkeypatch.setenv("NETTOP_FAKE_LOOP", "1")
    backend = make_backend(1.0)
    backend.start()
    assert backend.wait_for_sample(15)
    pid = backend.nettop_pid
    assert psutil.pid_exists(pid)

    started = time.monotonic()
    backend.close()
    assert time.monotonic() - started < 10
    assert backend.nettop_pid is None
    assert not psutil.pid_exists(pid)  # terminated and reaped: not even a zombie
    leftovers = [
        p for p in psutil.Process().children(recursive=True) if "nettop" in " ".join(p.cmdline())
    ]
    assert leftovers == []
    backend.close()  # idempotent


def test_set_interval_restarts_nettop_with_the_new_seconds(fake_path, make_backend, monkeypatch, tmp_path):
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("NETTOP_FAKE_ARGV_LOG", str(log))
    monkeypatch.setenv("NETTOP_FAKE_LOOP", "1")
    backend = make_backend(1.0)
    backend.start()
    assert backend.wait_for_sample(15)

    def runs():
        return [json.loads(line) for line in log.read_text().splitlines()]

    backend.set_interval(2.5)
    assert wait_until(lambda: len(runs()) == 2, 10)
    assert runs()[1] == ["-L", "0", "-s", "3", "-x", "-n"]
    assert wait_until(lambda: backend.nettop_pid, 10)
    assert backend.nettop_exits == 0  # asked for: not reported as a failure
    assert not any("exited" in w for w in backend.status().warnings)

    pid = backend.nettop_pid
    backend.set_interval(2.9)  # still -s 3: nettop keeps running
    frames = {backend.sample().monotonic for _ in range(3)}  # each waits for a frame (0.2 s apart)
    assert len(frames) >= 2 and backend.nettop_pid == pid and len(runs()) == 2
    with pytest.raises(ValueError):
        backend.set_interval(0)


def test_without_nettop_the_backend_says_so(tmp_path, make_backend, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nettop anywhere
    backend = make_backend(1.0)
    backend.start()
    assert wait_until(lambda: backend.status().warnings, 10)
    assert "nettop not found" in backend.status().warnings[0]
    snapshot = backend.sample()  # never raises, never invents
    assert snapshot.sockets == [] and snapshot.closed == []
    assert backend.nettop_pid is None


def test_the_fake_refuses_a_stdin_at_eof():
    """The guard is real: with stdin at EOF nettop spins, the fake exits."""
    done = subprocess.run(
        [str(FAKE_NETTOP), "-L", "1", "-s", "1", "-x", "-n"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
    )
    assert done.returncode == 66
    assert b"stdin is at EOF" in done.stderr and done.stdout == b""


@pytest.mark.parametrize("use_pty", [True, False], ids=["pty", "pipe"])
def test_nettop_gets_a_stdin_that_stays_open(fake_path, make_backend, monkeypatch, use_pty):
    monkeypatch.setenv("NETTOP_FAKE_LOOP", "1")
    backend = make_backend(1.0, use_pty=use_pty)
    backend.start()
    assert backend.wait_for_sample(15), backend.status().warnings
    pid = backend.nettop_pid
    assert os.readlink(f"/proc/{pid}/fd/0").startswith("pipe:")
    # several frames later it is the same nettop: it never saw EOF
    seen = {backend.sample().monotonic for _ in range(4)}
    assert len(seen) >= 3
    assert backend.nettop_pid == pid and backend.nettop_exits == 0
    assert psutil.Process(pid).environ().get("NSUnbufferedIO") == "YES"


def test_a_hung_nettop_is_killed_and_restarted(fake_path, make_backend, monkeypatch):
    from netmond.backends import darwin

    # the rule is max(3 x -s, 5 s); shortened here so the test is quick
    monkeypatch.setattr(darwin, "HANG_FACTOR", 1)
    monkeypatch.setattr(darwin, "HANG_MIN_SECONDS", 2.0)
    monkeypatch.setenv("NETTOP_FAKE_HANG", "2:3")  # stops in the middle of frame 2
    backend = make_backend(1.0)
    assert backend._runner.hang_seconds() == 2.0
    backend.start()
    assert backend.wait_for_sample(15)
    first = backend.nettop_pid
    assert wait_until(lambda: backend.nettop_hangs >= 1, 15)
    assert wait_until(lambda: backend.nettop_pid not in (None, first), 15)
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    warnings = " ".join(backend.status().warnings)
    assert "hung: no sample for" in warnings and "killed" in warnings


def test_usage_text_instead_of_csv_is_reported(tmp_path, make_backend, monkeypatch):
    # a nettop that does not know one of our flags: usage on stdout, exit 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "nettop"
    wrapper.write_text(f'#!/bin/sh\nexec "{FAKE_NETTOP}" -Z "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    backend = make_backend(1.0)
    backend.start()
    assert wait_until(lambda: backend.nettop_exits >= 1, 15)
    warnings = wait_until(lambda: [w for w in backend.status().warnings if "did not print CSV" in w], 10)
    assert warnings and "usage: nettop" in warnings[0]
    assert backend.sample().sockets == []


def test_a_stall_mid_frame_closes_and_reopens_nothing(fake_path, make_backend, monkeypatch):
    monkeypatch.setenv("NETTOP_FAKE_DELAY", "0.3")
    monkeypatch.setenv("NETTOP_FAKE_STALL", "2:12:1.2")  # frame 2 stops after 12 lines for 1.2 s
    monkeypatch.setenv("NETTOP_FAKE_HANG", "4")
    backend = make_backend(1.0)
    backend.start()
    assert backend.wait_for_sample(15)
    snapshots = collect(backend, 3.0)
    frames = [{s.key for s in sockets_from_sample(f)} for f in MIXED]
    kept = frames[0] & frames[1]
    shown = [{s.key for s in snap.sockets} for snap in snapshots if snap.sockets]
    assert all(kept <= keys for keys in shown), "a stall made sockets vanish"
    closed = [c.key for snap in snapshots for c in snap.closed]
    assert not set(closed) & kept  # closed only what really went away
    assert set(closed) <= (frames[0] - frames[1]) | (frames[1] - frames[2])
    assert not [k for keys in shown for k in keys if isinstance(k[-1], str)], "reopened under a new key"
