"""Framing, message classification and the memory-bomb limits."""

from __future__ import annotations

import struct

import msgpack
import pytest

from common import protocol
from common.protocol import BadMessage, BadParams, Notification, ProtocolError, Request, Response, RPCError


def roundtrip(data: bytes):
    u = protocol.new_unpacker()
    u.feed(data)
    return protocol.decode_message(next(u))


def test_request_response_notification_roundtrip():
    assert roundtrip(protocol.pack_request(7, "stats", {"a": 1})) == Request(7, "stats", {"a": 1})
    r = roundtrip(protocol.pack_response(7, RPCError("invalid_params", "x: bad"), None))
    assert isinstance(r, Response) and r.error.code == "invalid_params" and r.msgid == 7
    n = roundtrip(protocol.pack_notification("stats_update", {"k": 2}))
    assert n == Notification("stats_update", {"k": 2})


@pytest.mark.parametrize("params", [[], None, {}])
def test_empty_params_are_an_empty_map(params):
    assert protocol.decode_message([0, 1, "status", params]).params == {}


def test_params_that_are_not_one_map_are_invalid_params_with_msgid():
    with pytest.raises(BadParams) as exc:
        protocol.decode_message([0, 9, "status", [1, 2]])
    assert exc.value.msgid == 9 and exc.value.code == protocol.INVALID_PARAMS


@pytest.mark.parametrize("obj", [5, "x", [], [9, 1, 2], [0, "id", "m", []], [0, 1, 5, []], {"a": 1},
                                 [2, "m", {}], [2, 5, []], [2, "m"]])
def test_values_that_are_not_messages_are_protocol_errors(obj):
    with pytest.raises(ProtocolError):
        protocol.decode_message(obj)


def test_method_names_may_be_bin_holding_utf8():
    assert protocol.decode_message([0, 1, b"status", []]) == Request(1, "status", {})
    assert protocol.decode_message([2, b"nvim_set_client_info", ["a", 1]]) == Notification("nvim_set_client_info", {})
    assert protocol.decode_message([2, "ping", []]) == Notification("ping", {})


def test_a_bin_method_name_that_is_not_utf8_spoils_that_message_only():
    with pytest.raises(BadMessage) as exc:
        protocol.decode_message([0, 6, b"\xff", []])
    assert exc.value.msgid == 6 and exc.value.code == protocol.PROTOCOL_ERROR
    with pytest.raises(BadMessage) as exc:
        protocol.decode_message([2, b"\xff", []])
    assert exc.value.msgid is None  # a notification: nothing to answer


def test_array_header_claiming_4g_items_is_refused_without_allocating():
    u = protocol.new_unpacker()
    u.feed(b"\xdd" + struct.pack(">I", 0xFFFFFFFF))
    with pytest.raises(ValueError):
        next(u)


def test_str_header_claiming_2gib_never_buffers_more_than_the_limit():
    u = protocol.new_unpacker()
    u.feed(b"\xdb" + struct.pack(">I", 2**31))
    fed = 5
    with pytest.raises((ValueError, msgpack.BufferFull)):
        for _ in range(100):
            next(u, None)
            u.feed(b"a" * 65536)
            fed += 65536
    assert fed <= protocol.MAX_BUFFER_SIZE + 65536


def test_buffer_over_one_mib_is_refused():
    u = protocol.new_unpacker()
    with pytest.raises(msgpack.BufferFull):
        u.feed(b"\x00" * (protocol.MAX_BUFFER_SIZE + 1))


def test_client_unpacker_accepts_large_daemon_replies():
    rows = [{"id": i, "x": "y" * 100} for i in range(20_000)]
    u = protocol.new_unpacker(limited=False)
    u.feed(protocol.pack_response(1, None, {"connections": rows}))
    assert len(protocol.decode_message(next(u)).result["connections"]) == 20_000


def test_error_codes_are_the_documented_set():
    assert set(protocol.ERROR_CODES) >= {
        "unknown_method", "invalid_params", "access_denied",
        "too_large", "protocol_error", "internal",
    }
