"""The subscriber queue's policy (netmond.server), without sockets: bounded in
count and bytes, lagged at the gap, disconnected when it stays behind, one
encoding per distinct filter, one failing filter isolated."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import msgpack
import pytest

from common.models import Filter
from netmond import server
from netmond.server import ClientSession, LogBudget, Policy, Server


class FakeTransport:
    def __init__(self) -> None:
        self.buffered = 0
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = True


def session(queue_size: int = 256, idle_timeout: float = 300.0) -> ClientSession:
    policy = Policy(max_clients=128, client_idle_timeout=idle_timeout, subscriber_queue=queue_size, control_gid=None)
    writer = SimpleNamespace(transport=FakeTransport())
    return ClientSession(policy, {}, None, writer, None, LogBudget())


def kinds(s: ClientSession) -> list[str]:
    return [msgpack.unpackb(data)[1] if not is_update else "update" for is_update, data in s._queue]


def test_the_queue_is_bounded_in_bytes_and_says_lagged_where_the_gap_is(monkeypatch):
    monkeypatch.setattr(server, "_QUEUE_BYTES", 1000)
    s = session()
    s.notify(b"x" * 600)
    s.notify(b"x" * 600)  # over 1000 bytes with the first: dropped
    s.notify(b"x" * 300)  # fits
    assert kinds(s) == ["update", "lagged", "update"] and s._missed == 0
    assert msgpack.unpackb(s._queue[1][1])[2] == [{"missed": 1}]


def test_one_update_always_fits_an_empty_queue(monkeypatch):
    monkeypatch.setattr(server, "_QUEUE_BYTES", 1000)
    s = session()
    s.notify(b"x" * 5000)
    assert kinds(s) == ["update"]


def test_what_the_socket_still_buffers_counts_too(monkeypatch):
    monkeypatch.setattr(server, "_QUEUE_BYTES", 1000)
    s = session()
    s.notify(b"x" * 100)
    s.writer.transport.buffered = 950  # an earlier update the client has not read
    s.notify(b"x" * 100)
    assert s._missed == 1


def test_all_subscribers_together_are_bounded(monkeypatch):
    monkeypatch.setattr(server, "_QUEUE_BYTES_TOTAL", 1000)
    s = session()
    s.queued_total = lambda: 990  # what the others hold
    s.notify(b"x" * 100)  # empty queue: let in
    s.notify(b"x" * 100)
    assert kinds(s) == ["update"] and s._missed == 1


def test_a_subscriber_that_stays_behind_is_disconnected(monkeypatch, caplog):
    clock = [1000.0]
    monkeypatch.setattr(server.time, "monotonic", lambda: clock[0])
    s = session(queue_size=1, idle_timeout=300)
    s.notify(b"a")
    s.notify(b"b")  # behind from here
    clock[0] += server._LAG_GRACE - 1
    s.notify(b"c")
    assert not s.writer.transport.aborted
    clock[0] += 2
    with caplog.at_level(logging.INFO, logger="netmond.server"):
        s.notify(b"d")
    assert s.writer.transport.aborted and s._queued_bytes == 0
    assert "fell behind for 31s (3 updates missed): disconnected" in caplog.text


def test_catching_up_resets_the_grace(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(server.time, "monotonic", lambda: clock[0])
    s = session(queue_size=1)
    s.notify(b"a")
    s.notify(b"b")
    clock[0] += 20
    s._queue.clear()
    s._queued_updates = s._queued_bytes = 0  # the client read everything
    s.notify(b"c")  # fits: no longer behind
    s.notify(b"d")
    clock[0] += 20
    s.notify(b"e")
    assert not s.writer.transport.aborted


def test_equal_filters_share_one_payload_and_a_failing_filter_is_isolated():
    srv = Server({}, Policy(max_clients=128, client_idle_timeout=300.0, subscriber_queue=256, control_gid=None))
    rows = [{"process_name": "a", "local_port": 1}, {"process_name": "b", "local_port": 2}]
    subs = []
    for flt in (Filter(proc="a"), Filter(proc="a"), Filter(), Filter(proc="b")):
        s = session()
        s.topics = {"connection_update"}
        s.filter = flt
        srv.sessions.add(s)
        subs.append(s)

    class Broken(Filter):
        def apply(self, rows):  # what any bug in one subscriber's filter would do
            raise RuntimeError("boom")

    bad = session()
    bad.topics = {"connection_update"}
    bad.filter = Broken(proc="zzz")
    srv.sessions.add(bad)
    srv.publish("connection_update", {"connections": rows}, rows_key="connections")
    a1, a2, everything, b = (s._queue[0][1] for s in subs)
    assert a1 is a2  # one encoding for equal filters
    assert [r["process_name"] for r in msgpack.unpackb(a1)[2][0]["connections"]] == ["a"]
    assert [r["process_name"] for r in msgpack.unpackb(b)[2][0]["connections"]] == ["b"]
    assert len(msgpack.unpackb(everything)[2][0]["connections"]) == 2
    assert bad.writer.transport.aborted and not bad._queue
