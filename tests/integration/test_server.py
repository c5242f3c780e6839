"""The daemon's RPC surface on a real socket: methods, errors, bad clients."""

from __future__ import annotations

import os
import select
import socket
import struct
import time

import msgpack
import pytest

from common import protocol
from common.client import Client, DaemonUnavailable
from common.models import CONNECTION_FIELDS, STATS_FIELDS
from common.protocol import RPCError
from tests.helpers import tcp_pair, wait_until

def raw_exchange(path: str, payload: bytes, timeout: float = 5.0) -> tuple[list, bool]:
    """Send bytes; return (messages received, whether the daemon closed on us)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    msgs: list = []
    closed = False
    try:
        s.sendall(payload)
        u = msgpack.Unpacker(raw=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                break
            u.feed(data)
            msgs.extend(u)
            if msgs and not closed:
                s.settimeout(0.5)
    finally:
        s.close()
    return msgs, closed


def test_methods_answer_with_the_documented_shapes(start_daemon_thread):
    d = start_daemon_thread(include_loopback=True)
    with tcp_pair() as (_, cli, srv), d.client() as c:
        info = c.hello()
        assert info["protocol"] == 1 and info["backend"] == "portable" and info["pid"] == os.getpid()
        wait_until(lambda: c.call("status")["ticks"] >= 2)
        port = cli.getsockname()[1]

        def rows_with_our_pid():
            # psutil finds a socket's pid by walking /proc/*/fd; a walk that
            # races with this busy test process can miss it for a tick.
            rows = c.call("connections", {"filter": {"port": port}})["connections"]
            mine = [r for r in rows if r["local_port"] == port and r["pid"] == os.getpid()]
            return rows if mine else None

        rows = wait_until(rows_with_our_pid, timeout=10)
        assert rows and all(set(r) == set(CONNECTION_FIELDS) for r in rows)
        mine = next(r for r in rows if r["local_port"] == port and r["pid"] == os.getpid())
        assert mine["pid"] == os.getpid() and mine["state"] == "ESTABLISHED"
        assert mine["remote_addr"] == f"127.0.0.1:{srv.getsockname()[1]}"
        assert mine["scope"] == "loopback" and mine["counters"] is None  # psutil has no bytes
        assert set(c.call("stats")) == set(STATS_FIELDS)
        hist = c.call("bandwidth_history", {"seconds": 60})["history"]
        assert hist and set(hist[0]) == {"timestamp", "upload", "download"}
        apps = c.call("apps", {"filter": {"pid": os.getpid()}})["apps"]
        assert [a["pids"] for a in apps] == [[os.getpid()]]
        assert c.call("configure", {"interval": 0.3}) == {"interval": 0.3}


def test_unknown_method_and_invalid_params_are_errors_not_crashes(start_daemon_thread):
    d = start_daemon_thread()
    with d.client() as c:
        with pytest.raises(RPCError) as e:
            c.call("drop_tables")
        assert e.value.code == protocol.UNKNOWN_METHOD
        for method, params, field in [
            ("connections", {"filter": {"port": "http"}}, "filter.port"),
            ("connections", {"include_closed": "yes"}, "include_closed"),
            ("connections", {"limit": 3}, "limit"),
            ("bandwidth_history", {"seconds": -1}, "seconds"),
            ("configure", {"interval": 0}, "interval"),
            ("configure", {}, "interval"),
            ("control", {"action": "explode"}, "action"),
            ("subscribe", {"topics": ["gossip"]}, "topics"),
        ]:
            with pytest.raises(RPCError) as e:
                c.call(method, params)
            assert e.value.code == protocol.INVALID_PARAMS, (method, params)
            assert e.value.message.startswith(field), e.value.message
        assert c.call("status")["monitoring"] is True  # same connection still served


@pytest.mark.parametrize("payload,code", [
    (b"\xc1garbage", protocol.PROTOCOL_ERROR),  # 0xc1 is never valid msgpack
    (b"\xdd" + struct.pack(">I", 0xFFFFFFFF), protocol.TOO_LARGE),  # array of 4G items
    (b"\xdf" + struct.pack(">I", 0xFFFFFFFF), protocol.TOO_LARGE),  # map of 4G entries
    (msgpack.packb(42), protocol.PROTOCOL_ERROR),  # valid msgpack, not a message
    (msgpack.packb([1, 5, None, None]), protocol.PROTOCOL_ERROR),  # a response, from a client
])
def test_bad_frames_get_an_error_and_a_disconnect_of_that_client_only(start_daemon_thread, payload, code):
    d = start_daemon_thread()
    with d.client() as bystander:
        msgs, closed = raw_exchange(d.socket, payload)
        assert closed
        assert msgs and msgs[0][0] == protocol.RESPONSE and msgs[0][2]["code"] == code
        assert bystander.call("status")["monitoring"] is True


def test_oversize_frame_disconnects(start_daemon_thread):
    d = start_daemon_thread()
    # a str header claiming 2 GiB, then data: the daemon stops at its 1 MiB buffer
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(d.socket)
    s.sendall(b"\xdb" + struct.pack(">I", 2**31))
    sent = 0
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        while sent < 64 * 1024 * 1024:
            s.sendall(b"x" * 65536)
            sent += 65536
    s.close()
    assert sent < 16 * 1024 * 1024
    with d.client() as c:
        assert c.call("status")["clients"] == 1


def test_client_limit_answers_too_many_clients(start_daemon_thread):
    d = start_daemon_thread(max_clients=3)
    held = [d.client() for _ in range(3)]
    try:
        with pytest.raises((RPCError, DaemonUnavailable)) as e:
            with Client.connect(d.socket, timeout=5) as extra:
                extra.call("status")
        if isinstance(e.value, RPCError):
            assert e.value.code == protocol.TOO_MANY_CLIENTS
    finally:
        for c in held:
            c.close()
    with d.client() as c:  # slots are given back when clients leave
        wait_until(lambda: c.call("status")["clients"] == 1, timeout=5)


def test_a_client_refused_for_the_cap_is_told_so_even_when_its_request_hits_the_closed_socket(
        start_daemon_thread):
    # The daemon answers too_many_clients and closes before the client has sent
    # anything: sending then fails with EPIPE, and the client must still report
    # the refusal, not a daemon that is gone ("start the daemon with ...").
    d = start_daemon_thread(max_clients=1)
    with d.client() as held:
        held.call("status")
        extra = Client.connect(d.socket, timeout=5)
        try:
            poller = select.poll()
            poller.register(extra._sock, select.POLLIN)
            wait_until(lambda: any(ev & select.POLLHUP for _, ev in poller.poll(100)), 10, 0,
                       what="the daemon to close its end")
            with pytest.raises(RPCError) as e:
                extra.call("status")
            assert e.value.code == protocol.TOO_MANY_CLIENTS
        finally:
            extra.close()


def test_stop_start_and_clear(start_daemon_thread):
    d = start_daemon_thread(include_loopback=True)
    with d.client() as c:
        wait_until(lambda: c.call("status")["ticks"] >= 2)
        assert c.call("control", {"action": "stop"}) == {"monitoring": False}
        ticks = c.call("status")["ticks"]
        time.sleep(0.6)  # what is tested: nothing ticks over three intervals
        status = c.call("status")
        assert status["monitoring"] is False and status["ticks"] == ticks
        assert c.call("stats")["monitoring"] is False
        assert c.call("control", {"action": "start"}) == {"monitoring": True}
        wait_until(lambda: c.call("status")["ticks"] > ticks + 1)
        wait_until(lambda: c.call("bandwidth_history")["history"])
        c.call("control", {"action": "clear"})
        assert c.call("bandwidth_history")["history"] == []
        stats = c.call("stats")
        assert stats["total_bytes_sent"] == 0 and stats["total_bytes_received"] == 0


def test_subscribe_delivers_notifications(start_daemon_thread):
    d = start_daemon_thread(include_loopback=True)
    with d.client() as c:
        c.call("subscribe", {"topics": ["stats_update", "connection_update"]})
        with tcp_pair() as (_, cli, _srv):
            port = cli.getsockname()[1]
            deadline = time.monotonic() + 10
            seen_stats = seen_conn = False
            while time.monotonic() < deadline and not (seen_stats and seen_conn):
                note = c.next_notification(timeout=2)
                assert note is not None
                if note.method == "stats_update":
                    seen_stats = "total_upload_speed" in note.payload
                if note.method == "connection_update":
                    seen_conn = seen_conn or any(r["local_port"] == port for r in note.payload["connections"])
            assert seen_stats and seen_conn
        assert c.call("unsubscribe", {}) == {"topics": []}


def test_socket_is_private_and_removed_at_exit(start_daemon_process):
    d = start_daemon_process("--backend", "portable")
    assert oct(os.stat(d.socket).st_mode & 0o777) == "0o600"
    assert d.stop() == 0
    assert not os.path.exists(d.socket)


def test_second_daemon_on_a_live_socket_refuses_and_leaves_the_first(start_daemon_process):
    first = start_daemon_process("--backend", "portable")
    second = start_daemon_process("--backend", "portable", socket_path=first.socket, wait=False)
    assert second.proc.wait(15) == 1
    assert "already listening" in second.log()
    with Client.connect(first.socket) as c:
        assert c.hello()["pid"] == first.proc.pid


def test_stale_socket_of_a_killed_daemon_is_replaced(start_daemon_process):
    import signal

    first = start_daemon_process("--backend", "portable")
    first.stop(signal.SIGKILL)
    assert os.path.exists(first.socket)
    second = start_daemon_process("--backend", "portable", socket_path=first.socket)
    with Client.connect(second.socket) as c:
        assert c.hello()["pid"] == second.proc.pid
