"""Issue 17, end to end on Linux: remote names and the per-remote view.

A real netmond (linux backend, default settings, so names on) samples a
loopback TCP stream of a named peer (tests/peers.py) in a network namespace
of its own; `netmonctl remotes`, `conns` and `apps` are read as a user reads
them. 127.0.0.1 is named by the system's hosts file (`localhost` on most
machines; whatever this one says), so no DNS query is sent.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import pytest

from netmond.backends.base import Backend, Snapshot, SocketSample, now
from netmond.resolver import MAX_CACHE, MAX_IN_FLIGHT, WORKERS, ReverseResolver, hosts_file_name
from tests.conftest import netmonctl_cmd
from tests.helpers import REPO, wait_until
from tests.integration.test_accounting import ENV, Peer, netns  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux kernel counters")

#: 127.0.0.1's name in this machine's hosts file.
LOCALHOST = hosts_file_name("127.0.0.1")
needs_name = pytest.mark.skipif(LOCALHOST is None, reason="/etc/hosts does not name 127.0.0.1 here")


def ctl(d, *args: str, as_json: bool = True):
    out = subprocess.run(netmonctl_cmd("--socket", d.socket, *args, *(["--json"] if as_json else [])),
                         capture_output=True, text=True, timeout=30, cwd=REPO, env=ENV)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if as_json else out.stdout


def linux_daemon(start_daemon_process, netns, *args: str):
    """netmond with the linux backend in the namespace, past its first ticks.

    Root mode where it runs here (the kernel names every socket's process:
    on a loaded machine the /proc scan may not reach a short-lived peer)."""
    d = start_daemon_process("--backend", "linux", "--interval", "1", *args, prefix=netns)
    wait_until(lambda: ctl(d, "status")["ticks"] >= 2, timeout=20)
    return d


def stream(netns, seconds: float = 3.0) -> int:
    """A paced TCP stream between two sockets of one peer (nm-stream) over 127.0.0.1; the bytes sent.
    Seconds long: the daemon's /proc scan (at most one a second) names its process while it runs."""
    peer = Peer(netns, "nm-stream", "tcp_paced", 200_000, seconds)
    try:
        return int(peer.result())
    finally:
        peer.close()


def loopback_remote(d) -> dict | None:
    rows = [r for r in ctl(d, "remotes")["remotes"] if r["remote_ip"] == "127.0.0.1"]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


@needs_name
def test_a_loopback_stream_is_one_named_remote_with_the_bytes_of_its_connections(start_daemon_process, netns):
    d = linux_daemon(start_daemon_process, netns)
    sent = stream(netns)

    # Both ends' rows have 127.0.0.1 as their remote: the client's sent
    # bytes and the server's received ones, once the stream has closed
    # (closed within the retention: bytes, no open connection). A tick can
    # see every byte before it sees the close: both are waited for.
    def settled():
        remote = loopback_remote(d)
        done = remote and remote["bytes_sent"] == sent and remote["bytes_received"] == sent
        return remote if done and remote["connections"] == 0 else None

    remote = wait_until(settled, timeout=20, what=f"the loopback remote with {sent} bytes each way, closed")
    assert remote["hostname"] == LOCALHOST and remote["scope"] == "loopback"
    assert remote["partial"] is False
    assert remote["remote_port"] is None

    # The same traffic as conns and apps count it.
    rows = [r for r in ctl(d, "conns", "--closed", "--ip", "127.0.0.1")["connections"] if r["remote_ip"]]
    assert rows and {r["remote_host"] for r in rows} == {LOCALHOST}
    assert sum(r["bytes_sent"] for r in rows) == sent == sum(r["bytes_received"] for r in rows)
    apps = ctl(d, "apps", "--ip", "127.0.0.1")["apps"]
    assert sum(a["bytes_sent"] for a in apps) == sent == sum(a["bytes_received"] for a in apps)
    assert remote["apps"] == [a["process_name"] for a in apps if a["process_name"] is not None]
    if ctl(d, "status")["root_mode"]["active"]:  # every socket's process known
        assert remote["apps"] == ["nm-stream"]

    # --host selects them by name (any case), and nothing else has that name.
    by_name = ctl(d, "conns", "--closed", "--host", LOCALHOST.upper())["connections"]
    assert {r["id"] for r in by_name} == {r["id"] for r in rows}
    assert ctl(d, "conns", "--closed", "--host", "no-such-host.invalid")["connections"] == []
    assert {r["id"] for r in ctl(d, "conns", "--closed", "--search", LOCALHOST)["connections"]} >= {
        r["id"] for r in rows}
    (named,) = ctl(d, "remotes", "--host", LOCALHOST)["remotes"]
    assert named["bytes_sent"] == sent

    # By service: the listener's port (the client's connection) and the client's port (the server's).
    ports = {r["remote_port"]: r for r in ctl(d, "remotes", "--by-port")["remotes"] if r["remote_ip"] == "127.0.0.1"}
    assert len(ports) == 2 and sum(r["bytes_sent"] for r in ports.values()) == sent
    assert all(r["hostname"] == LOCALHOST for r in ports.values())

    # What a person reads: names by default, addresses with -n.
    table = ctl(d, "conns", "--closed", "--ip", "127.0.0.1", as_json=False)
    assert f"{LOCALHOST}:" in table and "127.0.0.1:" in table  # LOCAL stays an address
    numeric = ctl(d, "conns", "--closed", "--ip", "127.0.0.1", "-n", as_json=False)
    remote_cells = [line.split()[2] for line in numeric.splitlines()[2:]]  # below the header and its rule
    assert sorted(cell.startswith("127.0.0.1:") for cell in remote_cells if cell != "-") == [True, True]
    assert LOCALHOST not in numeric
    text = ctl(d, "remotes", as_json=False)
    line = next(line for line in text.splitlines() if line.startswith(LOCALHOST))
    assert "127.0.0.1" in line and all(name in line for name in remote["apps"][:1])
    assert LOCALHOST not in ctl(d, "remotes", "-n", as_json=False)
    csv = ctl(d, "remotes", "--format", "csv", as_json=False).splitlines()
    assert csv[0].split(",")[:3] == ["remote_ip", "remote_port", "hostname"]


def test_no_resolve_gives_null_names_and_the_same_bytes(start_daemon_process, netns):
    d = linux_daemon(start_daemon_process, netns, "--no-resolve")
    assert ctl(d, "status")["resolve"] is False
    sent = stream(netns)
    remote = wait_until(lambda: (r := loopback_remote(d)) and r["bytes_sent"] == sent and r, timeout=20)
    assert remote["hostname"] is None
    rows = [r for r in ctl(d, "conns", "--closed", "--ip", "127.0.0.1")["connections"] if r["remote_ip"]]
    assert rows and all(r["remote_host"] is None for r in rows)
    if LOCALHOST is not None:
        assert ctl(d, "conns", "--closed", "--host", LOCALHOST)["connections"] == []
        assert LOCALHOST not in ctl(d, "conns", "--closed", as_json=False)


def test_remotes_refuses_bad_params_with_the_field_named(start_daemon_thread):
    from common.protocol import RPCError

    d = start_daemon_thread()
    with d.client() as c:
        assert set(c.call("remotes")) == {"remotes"}
        for params, field in (({"by_port": "yes"}, "by_port"), ({"filter": {"host": ""}}, "filter.host"),
                              ({"bogus": 1}, "bogus")):
            with pytest.raises(RPCError) as err:
                c.call("remotes", params)
            assert err.value.code == "invalid_params" and err.value.message.startswith(field), err.value


class ManyRemotesBackend(Backend):
    """Each tick, `per_tick` sockets to remote addresses never seen before (TEST-NET and 2001:db8::)."""

    name = "many-remotes"
    per_socket_bytes = True

    def __init__(self, per_tick: int = 2_000) -> None:
        self.per_tick = per_tick
        self.ticks = 0

    def sample(self) -> Snapshot:
        self.ticks += 1
        mono, wall = now()
        socks = []
        for i in range(self.per_tick):
            n = self.ticks * self.per_tick + i
            remote = f"2001:db8::{n:x}"
            socks.append(SocketSample(key=n, protocol="TCP", family="IPv6", local_ip="2001:db8:1::1",
                                      local_port=10000 + i, remote_ip=remote, remote_port=443,
                                      state="ESTABLISHED", pid=1, process_name="many", user="root",
                                      bytes_sent=n, bytes_received=n))
        return Snapshot(mono, wall, socks)


def test_a_resolver_that_hangs_30s_never_delays_a_tick_or_a_reply(start_daemon_thread):
    """Every lookup sleeps 30 s; 2,000 new remote addresses a tick (10,000 in
    five ticks): ticks keep their pace, replies come at once with null names,
    and lookups in flight, threads and cache stay within their caps."""
    release = threading.Event()
    asked: list[str] = []

    def hang(ip: str) -> str | None:
        asked.append(ip)
        release.wait(30)
        return "late.example"

    backend = ManyRemotesBackend()
    d = start_daemon_thread(backend, interval=0.2, resolve=False)  # no real lookup before the fake one
    resolver = ReverseResolver(hang)
    d.daemon.use_resolver(resolver)
    try:
        with d.client(timeout=30) as c:
            start = c.call("status")["ticks"]
            wait_until(lambda: backend.ticks >= start + 8, timeout=60)  # 16,000 new addresses at least
            status = c.call("status")
            assert status["ticks"] >= start + 7
            # Each tick took a fraction of the 30 s a lookup takes (the machine may be loaded).
            assert status["last_tick_seconds"] < 10
            t0 = time.monotonic()
            rows = c.call("connections")["connections"]
            assert time.monotonic() - t0 < 10
            assert len(rows) == 2_000 and all(r["remote_host"] is None for r in rows)
            assert all(r["hostname"] is None for r in c.call("remotes")["remotes"])
        assert 0 < resolver.in_flight() <= MAX_IN_FLIGHT and resolver.threads() <= WORKERS
        assert resolver.cached() == 0 and len(asked) <= WORKERS
    finally:
        release.set()
    # Released: names arrive on the rows (new addresses keep coming, and
    # keep being asked for), and the cache stays within its cap.
    with d.client(timeout=30) as c:
        wait_until(lambda: any(r["remote_host"] == "late.example" for r in c.call("connections")["connections"]),
                   timeout=30)
    assert resolver.cached() <= MAX_CACHE and resolver.in_flight() <= MAX_IN_FLIGHT


def test_sighup_turns_names_on_and_off(start_daemon_process, short_dir):
    import os
    import signal

    conf = os.path.join(short_dir, "names.toml")
    with open(conf, "w") as fh:
        fh.write("backend = 'portable'\nresolve = false\n")
    d = start_daemon_process("--config", conf)
    assert ctl(d, "status")["resolve"] is False
    with open(conf, "w") as fh:
        fh.write("backend = 'portable'\nresolve = true\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: ctl(d, "status")["resolve"] is True, timeout=20)
    assert re.search(r"^remote names:\s+on \(", ctl(d, "status", as_json=False), re.M)
    with open(conf, "w") as fh:
        fh.write("backend = 'portable'\nresolve = 'maybe'\n")  # invalid: nothing changes
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "resolve must be true or false" in d.log(), timeout=20)
    assert ctl(d, "status")["resolve"] is True
    assert "resolve False -> True" in d.log() and "Traceback" not in d.log()
