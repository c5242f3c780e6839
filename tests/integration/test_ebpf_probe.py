"""The eBPF probe on its own (netmond/backends/ebpf/loader.py), as root, in the real kernel.

Peers are separate processes with their own names (tests/ebpf_peers.py) that
print the SO_COOKIE of each socket they used: the probe's maps must hold
exactly those cookies with the right process, and UDP payload bytes exactly.
Without root, libbpf, cgroup v2 or a built object these tests skip with the
reason the daemon would give.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from netmond.backends.ebpf import loader
from tests.helpers import REPO, wait_until

REASON = loader.unavailable_reason() if sys.platform.startswith("linux") else "Linux only"
needs_ebpf = pytest.mark.skipif(REASON is not None, reason=f"eBPF root mode unavailable: {REASON}")
PEERS = str(REPO / "tests" / "ebpf_peers.py")


def peer(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, PEERS, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def line_of(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    assert line, f"peer said nothing: {proc.stderr.read() if proc.poll() is not None else ''}"
    return json.loads(line)


@needs_ebpf
def test_short_connections_belong_to_the_client_and_to_the_listeners_owner():
    """300 connections of a few ms: each socket's cookie is mapped to its process.

    The accepted sockets are created by the kernel in softirq context; their
    owner is copied from the listener's socket storage, not read from the
    current task (which would be the client, or nobody).
    """
    with loader.Probe.open() as probe:
        server = peer("tcp-server", "nm18srv", 300, 2000)
        client = None
        try:
            port = line_of(server)["port"]
            client = peer("tcp-client", "nm18cli", port, 300, 3000, 2000)
            client_cookies = line_of(client)["cookies"]
            server_cookies = line_of(server)["cookies"]
            assert client.wait(30) == 0 and server.wait(30) == 0
            owners = probe.owners()
        finally:
            for proc in (server, client):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
    assert len(set(client_cookies)) == 300 and len(set(server_cookies)) == 300
    assert not set(client_cookies) & set(server_cookies)
    client_owners = [owners.get(c) for c in client_cookies]
    server_owners = [owners.get(c) for c in server_cookies]
    assert all(o is not None and (o.pid, o.comm) == (client.pid, "nm18cli") for o in client_owners)
    assert all(o is not None and (o.pid, o.comm) == (server.pid, "nm18srv") for o in server_owners)
    # Every file was closed: the release hook flagged them for deletion.
    assert all(o.released for o in client_owners + server_owners)
    assert all(o.uid == 0 for o in client_owners)


@needs_ebpf
@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
@pytest.mark.parametrize("connected", [True, False], ids=["connected", "sendto"])
def test_udp_payload_bytes_are_exact(family, connected):
    if family == "IPv6" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    datagrams, size = 200, 1000
    with loader.Probe.open() as probe:
        proc = peer("udp", "nm18udp", family, "connected" if connected else "sendto", datagrams, size)
        try:
            cookies = line_of(proc)
            counts = probe.udp_counts()
            sender, receiver = counts[cookies["sender"]], counts[cookies["receiver"]]
            assert (sender.bytes_sent, sender.packets_sent) == (datagrams * size, datagrams)
            assert (sender.bytes_received, sender.packets_received) == (0, 0)
            assert (receiver.bytes_received, receiver.packets_received) == (datagrams * size, datagrams)
            assert receiver.bytes_sent == 0
            assert not sender.released and not receiver.released
            expected_family = socket.AF_INET6 if family == "IPv6" else socket.AF_INET
            assert sender.family == receiver.family == expected_family
            assert receiver.local_port == cookies["receiver_port"]
            assert sender.local_port == cookies["sender_port"]
            assert sender.remote_port == (cookies["receiver_port"] if connected else 0)
            owner = probe.owners()[cookies["sender"]]
            assert (owner.pid, owner.comm) == (proc.pid, "nm18udp")

            proc.stdin.write("close\n")
            proc.stdin.flush()
            assert line_of(proc) == {"closed": True}
            final = probe.udp_counts()
            # Closed sockets keep their last counts, flagged, until deleted.
            assert final[cookies["sender"]].released and final[cookies["receiver"]].released
            assert final[cookies["sender"]].bytes_sent == datagrams * size
            assert probe.delete_udp([cookies["sender"], cookies["receiver"]]) == 2
            assert probe.delete_udp([cookies["sender"]]) == 0  # already gone: skipped, no error
            after = probe.udp_counts()
            assert cookies["sender"] not in after and cookies["receiver"] not in after
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def bpf_ids(pid: int) -> tuple[set[int], set[int]]:
    """(program ids, link ids) held by the file descriptors of process pid."""
    progs, links = set(), set()
    fd_dir = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fd_dir):
        try:
            with open(os.path.join(fd_dir, fd)) as fh:
                info = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if "link_id" in info:
            links.add(int(info["link_id"]))
            progs.add(int(info["prog_id"]))
    return progs, links


def attached_program_ids(cgroup_root: str) -> set[int]:
    out = subprocess.run(["bpftool", "-j", "cgroup", "show", cgroup_root, "effective"],
                         capture_output=True, text=True, timeout=30, check=True)
    return {entry["id"] for entry in json.loads(out.stdout.strip() or "[]")}


def loaded_program_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=30, check=True)
    return {entry["id"] for entry in json.loads(out.stdout.strip() or "[]")}


HOLDER = """
import sys, time
from netmond.backends.ebpf import loader
probe = loader.Probe.open()
print("ready", flush=True)
time.sleep(120)
"""


@needs_ebpf
@pytest.mark.skipif(not shutil.which("bpftool"), reason="bpftool not installed")
def test_kill_9_leaves_no_program_attached():
    """Unpinned links die with their process, whatever the signal."""
    root = loader.cgroup2_mount()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "ready", holder.stderr.read()
        progs, links = bpf_ids(holder.pid)
        assert len(links) == len(loader.PROGRAMS) and len(progs) == len(loader.PROGRAMS)
        assert progs <= attached_program_ids(root)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel releases links and programs as the dead process's files are freed.
    wait_until(lambda: not progs & attached_program_ids(root), timeout=20)
    wait_until(lambda: not progs & loaded_program_ids(), timeout=20)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_without_capabilities_the_probe_says_why():
    script = ("from netmond.backends.ebpf import loader\n"
              "try:\n    loader.Probe.open()\nexcept loader.EbpfUnavailable as e:\n    print('UNAVAILABLE', e)\n")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                         cwd="/", env={**os.environ, "PYTHONPATH": str(REPO)})
    if "Permission denied" in out.stderr and "UNAVAILABLE" not in out.stdout:
        pytest.skip(f"nobody cannot run this checkout's python: {out.stderr.strip()[-200:]}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("UNAVAILABLE not running as root (uid 65534) and without "
                                 "CAP_BPF+CAP_PERFMON+CAP_NET_ADMIN")
