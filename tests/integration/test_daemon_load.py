"""The daemon under load: the sampling cadence and its back-off, `status`
while a tick updates the state, and `connections` streamed in chunks.

Real daemons in a thread with backends whose cost the test sets (a sleep
stands for a tick that takes long); every wait is on something the daemon
reports (ticks, status fields), bounded in time.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from common import api, protocol
from common.client import Client
from common.protocol import Notification, Response, RPCError
from netmond import handlers
from netmond.backends.base import Backend, Snapshot, SocketSample, now
from tests.helpers import wait_until


class PacedBackend(Backend):
    """`sockets` TCP rows whose counters move every tick; each sample takes
    `delay` seconds (settable while running) and its start time is kept."""

    name = "paced"
    per_socket_bytes = True

    def __init__(self, sockets: int = 0, delay: float = 0.0) -> None:
        self.count = sockets
        self.delay = delay
        self.starts: list[float] = []
        self.n = 0

    def sample(self) -> Snapshot:
        self.starts.append(time.monotonic())
        if self.delay:
            time.sleep(self.delay)
        self.n += 1
        mono, wall = now()
        socks = [
            SocketSample(
                key=i, protocol="TCP", family="IPv4", local_ip="10.0.0.1", local_port=10000 + i,
                remote_ip="10.0.0.2", remote_port=443, state="ESTABLISHED", pid=1,
                process_name="paced", user="root", bytes_sent=self.n * 100 + i, bytes_received=self.n * 200,
            )
            for i in range(self.count)
        ]
        return Snapshot(mono, wall, socks)


# -- cadence -------------------------------------------------------------------------


def test_late_ticks_follow_at_once_then_back_off_visibly_and_recover(start_daemon_thread):
    backend = PacedBackend(delay=0.6)
    d = start_daemon_thread(backend, interval=0.3)
    with d.client(timeout=10) as c:
        status = wait_until(lambda: (s := c.call("status"))["backed_off"] and s, timeout=30)
        # Late ticks were followed at once: ~0.6 s apart, not 0.6 + a full 0.3 s interval.
        gaps = [b - a for a, b in zip(backend.starts, backend.starts[1:3])]
        assert gaps and all(g < 0.8 for g in gaps), gaps
        assert status["interval"] == pytest.approx(0.3)
        assert status["effective_interval"] >= 0.6 * 1.5 - 1e-9
        assert any("cannot be held" in w and "automatic back-off" in w for w in status["warnings"])
        backend.delay = 0.0  # the load drops
        status = wait_until(lambda: (s := c.call("status"))["backed_off"] is False and s, timeout=40)
        assert status["effective_interval"] == pytest.approx(0.3)
        assert not any("cannot be held" in w for w in status["warnings"])


def test_netmonctl_status_shows_the_back_off(start_daemon_thread):
    backend = PacedBackend(delay=0.5)
    d = start_daemon_thread(backend, interval=0.2)
    with d.client(timeout=10) as c:
        wait_until(lambda: c.call("status")["backed_off"], timeout=30)
    from tests.conftest import netmonctl_cmd

    out = subprocess.run(netmonctl_cmd("--socket", d.socket, "status"), stdout=subprocess.PIPE,
                         text=True, timeout=60).stdout
    assert "backed off: sampling every" in out and "cannot be held" in out


# -- status during a tick ---------------------------------------------------------------


def test_status_is_answered_during_a_tick_and_readers_wait_for_its_end(start_daemon_thread):
    backend = PacedBackend(sockets=50)
    d = start_daemon_thread(backend, interval=0.2)
    state = d.daemon.state
    real_apply = state.apply
    applying, release = threading.Event(), threading.Event()
    finished: list[float] = []

    def slow_apply(snap: Snapshot):  # a state update that takes long
        applying.set()
        release.wait(10)
        try:
            return real_apply(snap)
        finally:
            finished.append(time.monotonic())

    with d.client(timeout=10) as c:
        wait_until(lambda: c.call("status")["ticks"] >= 2)
        state.apply = slow_apply
        assert applying.wait(10)
        ticks = c.call("status")["ticks"]
        t0 = time.monotonic()
        status = c.call("status")  # answered while the update is held
        assert time.monotonic() - t0 < 2.0 and not finished
        assert status["ticks"] == ticks and status["connections"] == 50
        # `connections` reads the table: it waits for the update to end.
        result: list = []
        reader = threading.Thread(target=lambda: result.append(
            d.client(timeout=20).call("connections")), daemon=True)
        reader.start()
        reader.join(0.5)
        assert reader.is_alive() and not result
        state.apply = real_apply
        release.set()
        reader.join(20)
        assert result and len(result[0]["connections"]) == 50 and finished
        wait_until(lambda: c.call("status")["ticks"] > ticks)


# -- connections, streamed ---------------------------------------------------------------


def read_reply(c: Client, msgid: int, timeout: float = 20) -> tuple[list[dict], Response]:
    """The connections_chunk payloads for msgid, then its response."""
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = c._read_message()
        if isinstance(msg, Notification):
            if msg.method == api.CONNECTIONS_CHUNK:
                chunks.append(msg.payload)
            continue
        assert isinstance(msg, Response) and msg.msgid == msgid, msg
        return chunks, msg
    raise AssertionError("no response")


def test_connections_streamed_in_chunks_then_one_response(start_daemon_thread):
    d = start_daemon_thread(PacedBackend(sockets=250), interval=0.2)
    with d.client(timeout=10) as c:
        wait_until(lambda: c.call("status")["ticks"] >= 2)
        whole = c.call("connections")["connections"]
        c._send(protocol.pack_request(77, "connections", {"chunk": 100}))
        chunks, response = read_reply(c, 77)
        assert [len(p["connections"]) for p in chunks] == [100, 100, 50]
        assert all(p["msgid"] == 77 for p in chunks)
        assert response.error is None and response.result == {"connections": [], "streamed": 250}
        rows = [r for p in chunks for r in p["connections"]]
        assert [r["id"] for r in rows] == [r["id"] for r in whole]
        assert set(rows[0]) == set(whole[0])

        # Filter and fields apply as without chunk; nothing matching: no chunk at all.
        c._send(protocol.pack_request(78, "connections", {
            "chunk": 7, "filter": {"port": 10003}, "fields": ["local_port", "protocol"]}))
        chunks, response = read_reply(c, 78)
        assert [p["connections"] for p in chunks] == [[{"local_port": 10003, "protocol": "TCP"}]]
        assert response.result == {"connections": [], "streamed": 1}
        c._send(protocol.pack_request(79, "connections", {"chunk": 5, "filter": {"port": 9}}))
        chunks, response = read_reply(c, 79)
        assert chunks == [] and response.result == {"connections": [], "streamed": 0}

        for bad in (0, api.CHUNK_MAX + 1, True, 2.5, "10"):
            with pytest.raises(RPCError) as err:
                c.call("connections", {"chunk": bad})
            assert err.value.code == protocol.INVALID_PARAMS and err.value.message.startswith("chunk:")
        assert c.call("status")["monitoring"] is True  # the session goes on


def test_a_streamed_reply_read_slowly_spans_ticks_and_stays_whole(start_daemon_thread):
    d = start_daemon_thread(PacedBackend(sockets=120), interval=0.1)
    with d.client(timeout=10) as c:
        wait_until(lambda: c.call("status")["ticks"] >= 2)
        with d.client(timeout=10) as other:
            ticks = other.call("status")["ticks"]
            seen = []
            for rows in c.connections_streamed(chunk=20):
                seen.extend(rows)
                time.sleep(0.1)  # a slow reader: ticks go on meanwhile
            assert other.call("status")["ticks"] > ticks
        assert sorted(r["local_port"] for r in seen) == list(range(10000, 10120))


def test_client_asks_again_without_chunk_when_the_daemon_predates_it(start_daemon_thread, monkeypatch):
    plain = handlers.HANDLERS[api.CONNECTIONS]

    def old_connections(daemon, params, session):  # what a daemon without `chunk` answers
        if "chunk" in params:
            raise RPCError(protocol.INVALID_PARAMS, "chunk: unknown parameter (allowed: filter, include_closed)")
        return plain(daemon, params, session)

    monkeypatch.setitem(handlers.HANDLERS, api.CONNECTIONS, old_connections)
    d = start_daemon_thread(PacedBackend(sockets=30), interval=0.2)
    with d.client(timeout=10) as c:
        wait_until(lambda: c.call("status")["ticks"] >= 2)
        chunks = list(c.connections_streamed(chunk=10))
        assert [len(rows) for rows in chunks] == [30]


@pytest.mark.parametrize("fmt", ["--json", "--format=ndjson", "--format=csv"])
def test_netmonctl_machine_formats_stream_the_same_rows(start_daemon_thread, fmt):
    from tests.conftest import netmonctl_cmd

    d = start_daemon_thread(PacedBackend(sockets=2500), interval=0.5)
    with d.client(timeout=10) as c:
        wait_until(lambda: c.call("status")["ticks"] >= 2)
        c.call("control", {"action": "stop"})  # the table holds still for the comparison
        ids = sorted(r["id"] for r in c.call("connections")["connections"])
    out = subprocess.run(netmonctl_cmd("--socket", d.socket, "conns", fmt), stdout=subprocess.PIPE,
                         text=True, timeout=60, check=True).stdout
    if fmt == "--json":
        got = [r["id"] for r in json.loads(out)["connections"]]
    elif fmt == "--format=ndjson":
        got = [json.loads(line)["id"] for line in out.splitlines()]
    else:
        lines = out.splitlines()
        col = lines[0].split(",").index("id")
        got = [int(line.split(",")[col]) for line in lines[1:]]
    assert sorted(got) == ids and len(got) == 2500
