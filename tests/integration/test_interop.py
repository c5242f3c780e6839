"""netmond's socket driven by a stock third-party msgpack-RPC client.

pynvim ships a generic msgpack-RPC session (`pynvim.msgpack_rpc`) that
knows nothing of netmon. It opens every session with a notification
(`nvim_set_client_info`, method name sent as msgpack bin) and passes
params as a plain array of arguments: exactly what the spec allows and what
a client author in another language will do. If this works, any
spec-following client does. The client under test is a test-only
dependency (the `test` extra); without it the test skips.
"""

from __future__ import annotations

import logging
import time

import pytest

from common import protocol
from tests.helpers import tcp_pair, wait_until

msgpack_rpc = pytest.importorskip("pynvim.msgpack_rpc", reason="pynvim (test extra) is not installed")


class NetmonError(Exception):
    """What a client author writes to see netmon's error map as an exception."""

    def __init__(self, error: dict) -> None:
        super().__init__(error["message"])
        self.code = error["code"]
        self.message = error["message"]


def test_a_stock_msgpack_rpc_client_does_hello_status_connections_errors_and_subscribe(start_daemon_thread, caplog):
    d = start_daemon_thread(include_loopback=True)
    with caplog.at_level(logging.DEBUG, logger="netmond.server"):
        session = msgpack_rpc.socket_session(d.socket)  # sends nvim_set_client_info first
        # The spec leaves the error object's shape to the server; pynvim's
        # default hook expects Nvim's [type, message] pair, so a netmon
        # client installs its own (netmon's error is a {code, message} map).
        session.error_wrapper = NetmonError
        try:
            hello = session.request("hello", {"client_version": "pynvim"})
            assert hello["protocol"] == protocol.PROTOCOL_VERSION and hello["pid"] > 0

            # A method name sent as bin is the same method.
            assert session.request(b"status")["monitoring"] is True

            with tcp_pair() as (_, cli, _srv):
                port = cli.getsockname()[1]
                rows = wait_until(lambda: session.request(
                    "connections", {"filter": {"port": port, "proto": "TCP"}})["connections"])
                assert rows and all(port in (r["local_port"], r["remote_port"]) for r in rows)

            # Errors come back as the {code, message} map, as the client's own exception.
            with pytest.raises(NetmonError) as err:
                session.request("no_such_method")
            assert err.value.code == protocol.UNKNOWN_METHOD
            with pytest.raises(NetmonError) as err:
                session.request("bandwidth_history", {"seconds": "soon"})
            assert err.value.code == protocol.INVALID_PARAMS and "seconds" in err.value.message
            # ... and the session goes on.
            assert session.request("stats")["monitoring"] is True

            # More notifications from the client: still no answer, no disconnect.
            session.request("ping", {}, async_=True)
            assert session.request("subscribe", {"topics": ["stats_update"]}) == {"topics": ["stats_update"]}
            deadline = time.monotonic() + 10
            note = None
            while note is None and time.monotonic() < deadline:
                msg = session.next_message()
                if msg is not None and msg[0] == "notification":
                    note = msg
            assert note is not None, "no notification within 10 s"
            kind, method, args = note
            assert method == "stats_update" and "total_upload_speed" in args[0]
        finally:
            session.close()
    assert d.daemon.server.note._count == 0  # no warning about that client
    ignored = [r.getMessage() for r in caplog.records if "sent a notification; ignored" in r.getMessage()]
    assert len(ignored) == 2, ignored


def test_a_stock_msgpack_rpc_client_reads_a_streamed_connections_reply(start_daemon_thread):
    from tests.integration.test_daemon_load import PacedBackend

    d = start_daemon_thread(PacedBackend(sockets=5), interval=0.2)
    session = msgpack_rpc.socket_session(d.socket)
    session.error_wrapper = NetmonError
    try:
        wait_until(lambda: session.request("status")["ticks"] >= 2)
        # The chunks come as notifications before the response; the client's
        # own notification queue holds them.
        result = session.request("connections", {"chunk": 2})
        assert result == {"connections": [], "streamed": 5}
        chunks = []
        while len(chunks) < 3:
            kind, method, args = session.next_message()
            if kind == "notification" and method == "connections_chunk":
                chunks.append(args[0])
        assert [len(c["connections"]) for c in chunks] == [2, 2, 1]
        assert len({c["msgid"] for c in chunks}) == 1
        assert sorted(r["local_port"] for c in chunks for r in c["connections"]) == list(range(10000, 10005))
    finally:
        session.close()
