"""Usage over days through a real netmond and netmonctl (issue 16).

An app with its own process name moves known bytes over loopback; `netmonctl
usage` must show them, after kill -9 and restarts too, never twice; a
corrupt store, a read-only data directory and a full disk leave monitoring
running with a warning; the files are not readable by others; and all of
it as a user other than root (setpriv).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from common.client import Client
from tests.conftest import netmonctl_cmd
from tests.helpers import REPO, linux_backend_works, throwaway_group, wait_until

pytestmark = pytest.mark.skipif(not linux_backend_works(), reason="needs the Linux backend (per-socket bytes)")

NOBODY = 65534
# Linux backend without root mode: exact TCP counters, no programs to load.
LINUX = ("--backend", "linux", "--no-ebpf", "--usage-write-interval", "1")

# A peer with its own process name: connects, sends SIZE bytes, says so,
# closes when told (a line on stdin), so that the daemon sees it open first.
PEER = r"""
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
c = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=60)
c.sendall(b"u" * int(sys.argv[3]))
print("sent", flush=True)
sys.stdin.readline()
c.close()
"""


def _sink() -> tuple[socket.socket, threading.Thread]:
    """A listener whose one connection is read to EOF, in a thread."""
    lst = socket.create_server(("127.0.0.1", 0))
    lst.settimeout(60)

    def serve() -> None:
        conn, _ = lst.accept()
        with conn:
            conn.settimeout(60)
            while conn.recv(1 << 20):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return lst, thread


def move(sock: str, name: str, size: int, prefix: tuple[str, ...] = ()) -> None:
    """Process `name` sends `size` bytes over loopback and closes once the
    daemon has seen them on its open connection."""
    lst, thread = _sink()
    peer = subprocess.Popen([*prefix, sys.executable, "-c", PEER, name, str(lst.getsockname()[1]), str(size)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert peer.stdout.readline().strip() == "sent"
        with Client.connect(sock, timeout=30) as c:
            wait_until(lambda: sum(r["bytes_sent"] or 0 for r in c.connections({"proc": name})["connections"])
                       >= size, timeout=60)
        peer.stdin.write("\n")
        peer.stdin.flush()
        assert peer.wait(30) == 0
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
        thread.join(30)
        lst.close()


def ctl(sock: str, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *netmonctl_cmd("--socket", sock, *args)], capture_output=True, text=True,
                          timeout=60, cwd="/", env={**os.environ, "PYTHONPATH": str(REPO)})


def sent_by(sock: str, name: str, prefix: tuple[str, ...] = ()) -> int:
    """bytes_sent of app `name` in `netmonctl usage --by app --json`."""
    r = ctl(sock, "usage", "--by", "app", "--since", "2d", "--proc", name, "--json", prefix=prefix)
    assert r.returncode == 0, r.stderr
    return sum(row["bytes_sent"] for row in json.loads(r.stdout)["usage"] if row["app"] == name)


def status(sock: str) -> dict[str, Any]:
    with Client.connect(sock, timeout=30) as c:
        return c.status()


def started(d: Any) -> Any:
    """The daemon, once past its first tick (a baseline: bytes of sockets
    open then are not counted, so a transfer must start after it)."""
    wait_until(lambda: status(d.socket)["ticks"] >= 2, timeout=60)
    return d


def close_to(value: int, expected: int) -> bool:
    return abs(value - expected) <= expected // 100


def test_an_apps_bytes_survive_kill_9_and_restarts_and_never_count_twice(start_daemon_process, short_dir):
    data = os.path.join(short_dir, "data")
    name = "nm-usage5"
    d = started(start_daemon_process(*LINUX, "--data-dir", data))
    move(d.socket, name, 5_000_000)
    # Counted live; then written by the daemon's own timer (no query asked
    # for it), so that kill -9 loses nothing.
    with Client.connect(d.socket) as c:
        wait_until(lambda: any(a["process_name"] == name and (a["bytes_sent"] or 0) >= 5_000_000
                               for a in c.apps()["apps"]), timeout=30)
    counted = time.time()
    wait_until(lambda: (status(d.socket)["usage_store"]["written_at"] or 0) > counted + 0.5, timeout=30)
    d.stop(signal.SIGKILL)

    d = started(start_daemon_process(*LINUX, "--data-dir", data))
    assert close_to(sent_by(d.socket, name), 5_000_000), sent_by(d.socket, name)
    move(d.socket, name, 3_000_000)
    wait_until(lambda: sent_by(d.socket, name) >= 7_900_000, timeout=30)
    total = sent_by(d.socket, name)
    assert close_to(total, 8_000_000), total
    assert d.stop(signal.SIGTERM) == 0

    d = started(start_daemon_process(*LINUX, "--data-dir", data))
    assert sent_by(d.socket, name) == total  # restarted: nothing lost, nothing twice
    # The table: the app, a total line; by day, a bar per row.
    table = ctl(d.socket, "usage", "--proc", name, "--since", "today")
    assert table.returncode == 0 and name in table.stdout and "TOTAL" in table.stdout
    by_day = ctl(d.socket, "usage", "--by", "day", "--since", "today")
    assert by_day.returncode == 0 and "█" in by_day.stdout
    csv = ctl(d.socket, "usage", "--by", "day,app", "--proc", name, "--format", "csv")
    assert csv.stdout.splitlines()[0] == "day,app,bytes_sent,bytes_received"
    # What it talked to: the loopback listener, with the app named.
    remotes = json.loads(ctl(d.socket, "usage", "--by", "remote", "--proc", name, "--json").stdout)["usage"]
    assert [r["remote"] for r in remotes] == ["127.0.0.1"] and remotes[0]["apps"] == [name]
    # clear zeroes live totals only.
    assert ctl(d.socket, "clear").returncode == 0
    assert sent_by(d.socket, name) == total


def test_forget_before_and_all_needs_control_rights(start_daemon_process, short_dir):
    d = started(start_daemon_process(*LINUX, "--data-dir", os.path.join(short_dir, "data")))
    move(d.socket, "nm-forget", 100_000)
    wait_until(lambda: sent_by(d.socket, "nm-forget") >= 100_000, timeout=30)
    kept = ctl(d.socket, "usage", "--forget", "--before", "2000-01-01", "--json")
    assert kept.returncode == 0 and json.loads(kept.stdout) == {"deleted": 0}
    assert sent_by(d.socket, "nm-forget") >= 100_000
    prefix = _as_nobody()
    os.chmod(os.path.dirname(d.socket), 0o755)
    os.chmod(d.socket, 0o666)  # nobody may read, not control
    assert sent_by(d.socket, "nm-forget", prefix=prefix) >= 100_000
    denied = ctl(d.socket, "usage", "--forget", prefix=prefix)
    assert denied.returncode == 4 and "access_denied" in denied.stderr
    gone = ctl(d.socket, "usage", "--forget")
    assert gone.returncode == 0 and "deleted all stored usage" in gone.stdout
    assert sent_by(d.socket, "nm-forget") == 0


def test_a_corrupt_store_is_moved_aside_and_monitoring_goes_on(start_daemon_thread, short_dir):
    data = os.path.join(short_dir, "data")
    os.mkdir(data, 0o700)
    with open(os.path.join(data, "usage.db"), "wb") as fh:
        fh.write(b"this is no database\n" * 500)
    d = start_daemon_thread(data_dir=data)
    st = wait_until(lambda: (lambda s: s if s["usage_store"]["storing"] else None)(status(d.socket)))
    assert st["monitoring"] is True
    assert any("moved aside to" in w and ".corrupt-" in w for w in st["warnings"]), st["warnings"]
    aside = [n for n in os.listdir(data) if n.startswith("usage.db.corrupt-")]
    assert len(aside) == 1
    with open(os.path.join(data, aside[0]), "rb") as fh:
        assert fh.read() == b"this is no database\n" * 500
    r = ctl(d.socket, "usage", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["usage"] == []
    shown = ctl(d.socket, "status")
    assert "moved aside" in shown.stdout and "usage store:" in shown.stdout


def _namespace_prefix(script: str, directory: str) -> tuple[str, ...]:
    """Run the daemon in a mount namespace of its own after `script`
    ($0: the data directory), or skip saying why not."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a mount namespace")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount in a new mount namespace here: {probe.stderr.decode()[-200:]}")
    return ("unshare", "-m", "sh", "-c", f'{script} && exec "$@"', directory)


def _not_storing_but_monitoring(sock: str, reason: str) -> None:
    st = wait_until(lambda: (lambda s: s if s["warnings"] else None)(status(sock)), timeout=30)
    assert st["monitoring"] is True and st["usage_store"]["storing"] is False
    assert any("not storing usage" in w and reason.lower() in w.lower() for w in st["warnings"]), st["warnings"]
    ticks = st["ticks"]
    wait_until(lambda: status(sock)["ticks"] > ticks + 2, timeout=60)
    r = ctl(sock, "usage")
    assert r.returncode == 1 and "unavailable" in r.stderr and "not storing usage" in r.stderr
    assert ctl(sock, "apps").returncode == 0


def test_a_read_only_data_dir_stops_storing_not_monitoring(start_daemon_process, short_dir):
    data = os.path.join(short_dir, "data")
    os.mkdir(data, 0o700)
    prefix = _namespace_prefix('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"', data)
    d = start_daemon_process(*LINUX, "--data-dir", data, prefix=list(prefix))
    _not_storing_but_monitoring(d.socket, "read-only")
    assert os.listdir(data) == []


def test_a_full_disk_stops_storing_not_monitoring(start_daemon_process, short_dir):
    data = os.path.join(short_dir, "data")
    os.mkdir(data, 0o700)
    prefix = _namespace_prefix(
        'mount -t tmpfs -o size=64k,mode=0700 tmpfs "$0" && { head -c 1M /dev/zero > "$0/fill" || true; }', data)
    d = start_daemon_process(*LINUX, "--data-dir", data, prefix=list(prefix))
    _not_storing_but_monitoring(d.socket, "disk is full")


def _modes(data: str) -> dict[str, tuple[str, int]]:
    out = {}
    for name in [".", *os.listdir(data)]:
        st = os.stat(os.path.join(data, name))
        out[name] = (oct(stat.S_IMODE(st.st_mode)), st.st_gid)
    return out


def test_store_files_are_not_readable_by_others(start_daemon_thread, short_dir):
    data = os.path.join(short_dir, "data")
    d = start_daemon_thread(data_dir=data)
    wait_until(lambda: status(d.socket)["usage_store"]["storing"])
    modes = _modes(data)
    assert modes.pop(".")[0] == "0o700"
    assert modes and all(mode == "0o600" for mode, _ in modes.values()), modes


def test_with_a_socket_group_the_store_is_0640_for_that_group(start_daemon_thread, short_dir):
    data = os.path.join(short_dir, "data")
    with throwaway_group() as (group, gid):
        d = start_daemon_thread(data_dir=data, socket_group=group)
        wait_until(lambda: status(d.socket)["usage_store"]["storing"])
        modes = _modes(data)
        assert modes.pop(".") == ("0o750", gid)
        assert modes and all(v == ("0o640", gid) for v in modes.values()), modes
        d.stop()


def _as_nobody() -> tuple[str, ...]:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run as nobody")
    prefix = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    probe = subprocess.run([*prefix, sys.executable, "-c", "import msgpack, psutil, click"], capture_output=True,
                           cwd="/", env={**os.environ, "PYTHONPATH": str(REPO)})
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run this checkout: {probe.stderr.decode()[-200:]}")
    return prefix


def test_as_a_user_the_store_is_theirs_and_counts_their_apps(start_daemon_process, short_dir):
    prefix = _as_nobody()
    home = os.path.join(short_dir, "home")
    os.mkdir(home, 0o700)
    os.chown(home, NOBODY, NOBODY)
    data = os.path.join(home, "data")
    d = started(start_daemon_process(*LINUX, "--data-dir", data, "--socket", os.path.join(home, "d.sock"),
                                     socket_path=os.path.join(home, "d.sock"), prefix=list(prefix),
                                     env={"HOME": home}))
    move(d.socket, "nm-usernob", 1_000_000, prefix=prefix)
    wait_until(lambda: close_to(sent_by(d.socket, "nm-usernob", prefix=prefix), 1_000_000), timeout=30)
    for name in os.listdir(data):
        st = os.stat(os.path.join(data, name))
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o600), name
    st = os.stat(data)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o700)


def test_as_a_user_a_data_dir_it_cannot_write_stops_storing_not_monitoring(start_daemon_process, short_dir):
    prefix = _as_nobody()
    home = os.path.join(short_dir, "home")
    os.mkdir(home, 0o700)
    os.chown(home, NOBODY, NOBODY)
    data = os.path.join(short_dir, "root-owned")
    os.mkdir(data, 0o755)  # nobody may read it, not write in it
    sock = os.path.join(home, "d.sock")
    d = start_daemon_process(*LINUX, "--data-dir", data, "--socket", sock, socket_path=sock,
                             prefix=list(prefix), env={"HOME": home})
    _not_storing_but_monitoring(d.socket, "cannot create")


def test_the_readmes_usage_examples_run_as_written(start_daemon_thread, short_dir):
    import importlib.util
    import re
    import shlex

    spec = importlib.util.spec_from_file_location("bench_usage", REPO / "bench" / "usage.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = os.path.join(short_dir, "data")
    bench.generate_year(os.path.join(data, "usage.db"), time.time(), apps=5, remotes=10, days=40).close()
    d = start_daemon_thread(data_dir=data)
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Usage over days", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    lines = [line for line in block.splitlines() if line.startswith("netmonctl usage")]
    assert len(lines) >= 6 and any("--forget" in line for line in lines)
    env = {**os.environ, "NETMON_SOCKET": d.socket, "PYTHONPATH": str(REPO)}
    for line in lines:
        command, _, pipe = line.partition(" | ")
        argv = shlex.split(command, comments=True)
        r = subprocess.run(netmonctl_cmd(*argv[1:]), capture_output=True, text=True, env=env, timeout=60, cwd="/")
        assert r.returncode == 0 and r.stdout, (line, r.stderr)
        if "--forget" not in line and "--json" not in line:
            assert "TOTAL" in r.stdout or "no usage stored" in r.stdout, (line, r.stdout)
        if pipe and shutil.which("jq"):
            out = subprocess.run(pipe, shell=True, input=r.stdout, capture_output=True, text=True, timeout=30)
            assert out.returncode == 0 and out.stdout, (line, out.stderr)
