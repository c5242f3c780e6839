"""Root mode end to end: a real netmond as root with its eBPF programs, asked through netmonctl.

Peers are separate processes with their own names (tests/ebpf_peers.py):
  * 300 TCP connections, each a few ms long (the tick is 2 s): the client's
    bytes land on the client's app and the server's on the server's;
  * a UDP-only app moving a known payload: its bytes, within 1 %;
  * status says root mode is on; --no-ebpf turns it off, without a warning;
  * a daemon killed with -9 leaves no program attached or loaded;
  * a daemon as nobody falls back with one warning saying why.
Without root, libbpf, cgroup v2 or the built object, the root-mode tests
skip with the reason (the daemon's own).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from netmond.backends.ebpf import loader
from tests.helpers import wait_until
from tests.integration.test_ebpf_probe import (
    REASON, attached_program_ids, bpf_ids, line_of, loaded_program_ids, needs_ebpf, peer,
)
from tests.integration.test_kernel_counters import NOBODY, netmonctl_json

INTERVAL = "2"


@pytest.fixture
def root_daemon(start_daemon_process):
    d = start_daemon_process("--backend", "linux", "--include-loopback", "--interval", INTERVAL)
    # Past the first tick, a baseline: bytes moved before it are not counted (by design).
    wait_until(lambda: ticks(d.socket) >= 1, timeout=30, interval=0.2)
    return d


def close_peer(proc) -> None:
    """Ask a udp peer to close its sockets and wait until it says it did."""
    proc.stdin.write("close\n")
    proc.stdin.flush()
    assert line_of(proc) == {"closed": True}


def reap(proc) -> None:
    """The peer is gone when this returns, however the test ended."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def ticks(sock: str) -> int:
    return netmonctl_json(sock, "status")["ticks"]


def after_two_more_ticks(sock: str) -> None:
    """Returns once two ticks ran after the call: everything before it is sampled."""
    start = ticks(sock)
    wait_until(lambda: ticks(sock) >= start + 2, timeout=30, interval=0.2)


def app(sock: str, name: str) -> dict:
    apps = netmonctl_json(sock, "apps")["apps"]
    rows = [a for a in apps if a["process_name"] == name]
    assert rows, f"no app {name}: {[a['process_name'] for a in apps]}"
    return rows[0]


@needs_ebpf
def test_status_says_root_mode_is_on(root_daemon):
    status = netmonctl_json(root_daemon.socket, "status")
    assert status["root_mode"]["active"] is True, status
    assert "eBPF programs attached" in status["root_mode"]["reason"]
    assert not any("eBPF" in w for w in status["warnings"]), status["warnings"]
    assert "root mode on" in root_daemon.log()


@needs_ebpf
def test_no_ebpf_turns_it_off_without_a_warning(start_daemon_process):
    d = start_daemon_process("--backend", "linux", "--no-ebpf")
    status = netmonctl_json(d.socket, "status")
    assert status["root_mode"] == {"active": False, "reason": "turned off (--no-ebpf / ebpf = false)"}
    assert not any("eBPF" in w for w in status["warnings"]), status["warnings"]


@needs_ebpf
def test_short_connections_bytes_land_on_their_apps(root_daemon):
    """300 connections far shorter than a tick: >= 99 % of each side's bytes on its own app."""
    sock = root_daemon.socket
    connections, request, reply = 300, 3000, 2000
    server = peer("tcp-server", "nm18srv", connections, reply)
    client = None
    try:
        port = line_of(server)["port"]
        client = peer("tcp-client", "nm18cli", port, connections, request, reply)
        cookies = set(line_of(client)["cookies"]) | set(line_of(server)["cookies"])
        assert len(cookies) == 2 * connections
        assert client.wait(30) == 0 and server.wait(30) == 0
    finally:
        for proc in (server, client):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    after_two_more_ticks(sock)
    sent_by_client = connections * (request + 4)  # each request has a 4-byte length first
    sent_by_server = connections * reply
    cli, srv = app(sock, "nm18cli"), app(sock, "nm18srv")
    assert sent_by_client * 0.99 <= cli["bytes_sent"] <= sent_by_client * 1.01, cli
    assert sent_by_server * 0.99 <= cli["bytes_received"] <= sent_by_server * 1.01, cli
    assert sent_by_server * 0.99 <= srv["bytes_sent"] <= sent_by_server * 1.01, srv
    assert sent_by_client * 0.99 <= srv["bytes_received"] <= sent_by_client * 1.01, srv
    rows = netmonctl_json(sock, "conns", "--closed", "--port", str(port))["connections"]
    client_rows = [r for r in rows if r["remote_port"] == port]
    server_rows = [r for r in rows if r["local_port"] == port and r["remote_port"] is not None]
    assert len(client_rows) >= 0.99 * connections and len(server_rows) >= 0.99 * connections
    assert {(r["pid"], r["process_name"]) for r in client_rows} == {(client.pid, "nm18cli")}
    assert {(r["pid"], r["process_name"]) for r in server_rows} == {(server.pid, "nm18srv")}
    if shutil.which("bpftool"):
        # Read for the last time, then deleted: none of these sockets is left in the daemon's map.
        assert not cookies & map_keys(root_daemon.proc.pid, "owners")


def map_keys(pid: int, name: str) -> set[int]:
    """Keys (socket cookies) of the BPF map `name` that process pid holds, read with bpftool."""
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                info = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if "map_id" not in info:
            continue
        map_id = info["map_id"].strip()
        shown = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "id", map_id],
                                          capture_output=True, text=True, timeout=30, check=True).stdout)
        if shown.get("name") != name:
            continue
        dump = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "id", map_id],
                                         capture_output=True, text=True, timeout=60, check=True).stdout or "[]")
        keys = set()
        for entry in dump:
            key = entry.get("formatted", entry)["key"]
            keys.add(int.from_bytes(bytes(int(b, 16) for b in key), "little") if isinstance(key, list) else int(key))
        return keys
    raise AssertionError(f"process {pid} holds no BPF map named {name}")


@needs_ebpf
@pytest.mark.parametrize("family, connected", [("IPv4", "connected"), ("IPv6", "sendto")])
def test_udp_app_bytes_within_one_percent(root_daemon, family, connected):
    """A UDP-only app moving 600 kB each way: its bytes within 1 %, rows say `counters: ebpf`."""
    sock = root_daemon.socket
    name = f"nm18udp{family[-1]}"
    datagrams, size = 500, 1200
    proc = peer("udp", name, family, connected, datagrams, size)
    try:
        ports = line_of(proc)
        after_two_more_ticks(sock)  # seen open at least once, with its bytes
        rows = netmonctl_json(sock, "conns", "--proc", name)["connections"]
        assert {r["protocol"] for r in rows} == {"UDP"} and len(rows) == 2, rows
        assert all(r["counters"] == "ebpf" and r["pid"] == proc.pid for r in rows), rows
        by_port = {r["local_port"]: r for r in rows}
        assert by_port[ports["sender_port"]]["bytes_sent"] == datagrams * size
        assert by_port[ports["receiver_port"]]["bytes_received"] == datagrams * size
        close_peer(proc)
    finally:
        reap(proc)
    after_two_more_ticks(sock)
    totals = app(sock, name)
    assert datagrams * size * 0.99 <= totals["bytes_sent"] <= datagrams * size * 1.01, totals
    assert datagrams * size * 0.99 <= totals["bytes_received"] <= datagrams * size * 1.01, totals
    closed = netmonctl_json(sock, "conns", "--closed", "--proc", name)["connections"]
    assert len(closed) == 2 and all(r["closed_at"] is not None for r in closed), closed


@needs_ebpf
@pytest.mark.skipif(not shutil.which("bpftool"), reason="bpftool not installed")
def test_daemon_killed_with_9_leaves_no_program_attached(start_daemon_process):
    d = start_daemon_process("--backend", "linux")
    root = loader.cgroup2_mount()
    progs, links = bpf_ids(d.proc.pid)
    assert len(links) == len(loader.PROGRAMS), d.log()
    assert progs <= attached_program_ids(root)
    d.stop(signal.SIGKILL)
    wait_until(lambda: not progs & attached_program_ids(root), timeout=20)
    wait_until(lambda: not progs & loaded_program_ids(), timeout=20)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to switch users")
@pytest.mark.skipif(REASON is not None and "not running as root" not in REASON,
                    reason=f"root mode is unavailable even to root here: {REASON}")
def test_daemon_as_nobody_falls_back_with_one_warning(start_daemon_process, short_dir):
    run_dir = os.path.join(short_dir, "nobody")
    os.mkdir(run_dir, 0o700)
    os.chown(run_dir, NOBODY, NOBODY)
    sock_path = os.path.join(run_dir, "n.sock")
    d = start_daemon_process(
        "--backend", "linux", "--interval", "0.5", socket_path=sock_path, wait=False,
        prefix=["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"],
    )
    wait_until(lambda: os.path.exists(sock_path) or d.proc.poll() is not None, timeout=15)
    if d.proc.poll() is not None:
        pytest.skip(f"the test interpreter is not usable by uid {NOBODY}: {d.log()[-300:]}")
    wait_until(lambda: netmonctl_json(sock_path, "status")["ticks"] >= 2, timeout=15)
    status = netmonctl_json(sock_path, "status")
    assert status["root_mode"]["active"] is False
    assert status["root_mode"]["reason"].startswith(f"not running as root (uid {NOBODY}) and without CAP_BPF")
    ebpf_warnings = [w for w in status["warnings"] if "eBPF" in w]
    assert len(ebpf_warnings) == 1 and ebpf_warnings[0].startswith("root mode (eBPF) off: not running as root")
    assert ebpf_warnings[0].count("UDP") == 1, ebpf_warnings  # what it costs, said once
    assert d.log().count("root mode (eBPF) off") == 1
    assert d.proc.poll() is None  # and it samples on, as before


@needs_ebpf
def test_udp_moved_while_paused_is_not_counted_at_resume(root_daemon):
    """Like TCP's destroy events, UDP sockets that closed during `stop` are dropped, not billed at `start`."""
    sock = root_daemon.socket
    netmonctl_json(sock, "stop")
    status = netmonctl_json(sock, "status")
    assert status["monitoring"] is False
    proc = peer("udp", "nm18paused", "IPv4", "connected", 100, 1000)
    try:
        line_of(proc)
        close_peer(proc)
    finally:
        reap(proc)
    # Two paused intervals: the daemon drops what was gathered meanwhile.
    time.sleep(2 * float(INTERVAL) + 0.5)
    netmonctl_json(sock, "start")
    after_two_more_ticks(sock)
    apps = netmonctl_json(sock, "apps")["apps"]
    assert not [a for a in apps if a["process_name"] == "nm18paused"], apps
