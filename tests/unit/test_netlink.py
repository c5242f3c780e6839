"""netlink.py on crafted bytes: inet_diag_msg + rtattr decoding (IPv4, IPv6,
IPv4-mapped, short tcp_info of old kernels, multi-message buffers,
NLMSG_DONE, NLMSG_ERROR); no netlink socket opened.
"""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from netmond.backends import netlink
from netmond.backends.netlink import (
    AddressFormatter,
    NetlinkError,
    RawRecords,
    TcpCounters,
    build_dump_request,
    parse_messages,
)

from tests.linux_fakes import (
    DONE,
    TCP_INFO_LEN_6_18,
    V4_LOOPBACK,
    V4_MAPPED,
    V6_DOC,
    V6_LOOPBACK,
    diag_msg,
    error_msg,
    nlmsg,
    rtattr,
    sock_msg,
    tcp_info,
)


def with_cookie(msg: bytes, cookie: int) -> bytes:
    """`msg` (one sock_diag message) with idiag_cookie set: no two sockets share one."""
    raw = bytearray(msg)
    struct.pack_into("=Q", raw, 16 + 44, cookie)
    return bytes(raw)


def fmt(family: int, raw: bytes) -> str:
    return AddressFormatter().format(family, raw)


def test_dump_request_layout() -> None:
    req = build_dump_request(socket.AF_INET6, socket.IPPROTO_TCP, netlink.INET_DIAG_EXT_INFO, 0xFFE, seq=7)
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", req)
    assert (length, mtype, seq, pid) == (len(req), 20, 7, 0) and len(req) == 16 + 56
    assert flags == netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP == 0x301
    family, proto, ext, pad, states = struct.unpack_from("=BBBBI", req, 16)
    assert (family, proto, ext, pad, states) == (socket.AF_INET6, 6, 2, 0, 0xFFE)
    assert req[24:] == bytes(48)  # no filter on addresses, ports, interface, cookie


def test_all_states_mask_is_the_eleven_tcp_states() -> None:
    assert netlink.ALL_STATES_MASK == 0b1111_1111_1110
    assert len(netlink.TCP_STATES) == 11 and netlink.TCP_STATES[10] == "LISTEN"


def test_ipv4_socket_with_tcp_info() -> None:
    info = tcp_info(acked=1001, received=700, data_segs_in=1, sent=1000, retrans=0)
    attrs = rtattr(8, b"\x00") + rtattr(22, b"\x00\x00") + rtattr(netlink.INET_DIAG_INFO, info)
    buf = sock_msg(state=1, sport=40000, dport=443, uid=1000, inode=12345, attrs=attrs) + DONE
    sockets, done = parse_messages(memoryview(buf), seq=1)
    assert done
    [s] = sockets
    assert (s.family, s.state, s.local_port, s.remote_port, s.uid, s.inode) == (
        socket.AF_INET, 1, 40000, 443, 1000, 12345)
    assert fmt(s.family, s.local_addr) == "127.0.0.1"
    assert fmt(s.family, s.remote_addr) == "192.0.2.7"
    assert s.counters == TcpCounters(1001, 700, 1, 1000, 0, 0)


def test_sockets_with_different_attribute_layouts_in_one_buffer() -> None:
    # parse_messages reuses the previous socket's attribute layout when its
    # headers match exactly; anything else must still be walked correctly.
    def msg(sport, acked, *before):
        info = tcp_info(acked=acked, received=sport, data_segs_in=1, sent=acked, retrans=0)
        return sock_msg(sport=sport, attrs=b"".join(before) + rtattr(netlink.INET_DIAG_INFO, info))

    short, longer = rtattr(22, b"\x00\x00"), rtattr(22, b"\x00" * 9)
    buf = (msg(1, 10, rtattr(8, b"\x00"), short) + msg(2, 20, rtattr(8, b"\x00"), longer)
           + msg(3, 30, rtattr(8, b"\x00"), short) + msg(4, 40, rtattr(8, b"\x00"), short)
           + msg(5, 50) + msg(6, 60, rtattr(8, b"\x00"), short)
           + sock_msg(sport=7, attrs=rtattr(8, b"\x00") + short)  # no tcp_info at all
           + msg(8, 80, rtattr(8, b"\x00"), short) + DONE)
    sockets, done = parse_messages(buf, seq=1)
    assert done
    assert [(s.local_port, s.counters and s.counters.bytes_acked) for s in sockets] == [
        (1, 10), (2, 20), (3, 30), (4, 40), (5, 50), (6, 60), (7, None), (8, 80)]
    assert all(s.counters.bytes_received == s.local_port for s in sockets if s.counters)


def test_records_whose_raw_fields_are_unchanged_are_returned_as_the_known_ones() -> None:
    def dump(acked, rtt=0, rqueue=0, seq=1):
        info = bytearray(tcp_info(acked=acked, received=5, data_segs_in=1, sent=acked, retrans=0))
        struct.pack_into("=I", info, 68, rtt)  # tcpi_rtt: moves on idle sockets
        msg = bytearray(sock_msg(seq=seq, attrs=rtattr(8, b"\x00") + rtattr(netlink.INET_DIAG_INFO, bytes(info))))
        struct.pack_into("=I", msg, 16 + 56, rqueue)  # idiag_rqueue: not read
        return bytes(msg) + nlmsg(netlink.NLMSG_DONE, struct.pack("=i", 0), seq=seq)

    known = RawRecords()

    def parse(buf, seq=1):
        [record], done = parse_messages(buf, seq=seq, known=known)
        known.rotate([record])
        return record

    first = parse(dump(10))
    again = parse(dump(10, rtt=1234, rqueue=7))
    assert first.cookie and again is first and known.get(first.cookie) is first
    moved = parse(dump(11))
    assert moved is not first and moved.counters.bytes_acked == 11
    assert parse(dump(11)) is moved
    # The shortcut checks the datagram's sequence number first.
    assert parse_messages(dump(11, seq=5), seq=6, known=known) == ([], False)


def test_a_socket_is_decoded_again_when_anything_it_is_read_for_changes() -> None:
    # Its signature leaves out only what moves on an idle socket (timers,
    # queues, tcp_info's "ms since last ..." fields, rtt); anything read
    # from the message (state, uid, inode, counters) is in it.
    def dump(state=1, inode=12345, uid=1000, last_recv=0, expires=0, unacked=0, retrans=0, segs=(3, 4)):
        info = bytearray(tcp_info(acked=10, received=5, data_segs_in=1, sent=10, retrans=retrans))
        struct.pack_into("=I", info, 48, last_recv)  # tcpi_last_data_recv
        struct.pack_into("=I", info, 24, unacked)  # tcpi_unacked
        struct.pack_into("=II", info, 136, *segs)  # tcpi_segs_out, tcpi_segs_in
        msg = bytearray(sock_msg(state=state, inode=inode, uid=uid,
                                 attrs=rtattr(8, b"\x00") + rtattr(netlink.INET_DIAG_INFO, bytes(info))))
        struct.pack_into("=I", msg, 16 + 52, expires)  # idiag_expires
        return bytes(msg) + DONE

    known = RawRecords()

    def parse(buf):
        [record], _ = parse_messages(buf, seq=1, known=known)
        known.rotate([record])
        return record

    base = parse(dump())
    assert parse(dump(last_recv=999, expires=40)) is base
    # The kernel moves segs_out with any segment sent (a retransmission, a
    # segment that leaves one unacknowledged) and segs_in with any taken in.
    for changed in (dict(state=4), dict(inode=0), dict(uid=0), dict(unacked=1, segs=(4, 4)),
                    dict(retrans=3, segs=(5, 4)), dict(segs=(3, 5))):
        record = parse(dump(**changed))
        assert record is not base and record == parse(dump(**changed)), changed
        assert parse(dump()) == base


def test_sockets_of_several_layouts_in_one_dump_are_all_recognised() -> None:
    # TCP of both families in one dump: an IPv6 socket carries one attribute
    # more (INET_DIAG_SKV6ONLY), and the dump may start with one.
    def msg(cookie, family, extra=b""):
        info = tcp_info(acked=cookie, received=5, data_segs_in=1, sent=cookie)
        src = V6_LOOPBACK if family == socket.AF_INET6 else V4_LOOPBACK
        raw = bytearray(sock_msg(family=family, src=src, dst=src, sport=cookie,
                                 attrs=rtattr(8, b"\x00") + extra + rtattr(netlink.INET_DIAG_INFO, info)))
        struct.pack_into("=Q", raw, 16 + 44, cookie)
        return bytes(raw)

    v6only = rtattr(11, b"\x00")
    buf = msg(1, socket.AF_INET6, v6only) + msg(2, socket.AF_INET) + msg(3, socket.AF_INET6, v6only) + msg(
        4, socket.AF_INET) + DONE
    known = RawRecords()
    first, _ = parse_messages(buf, seq=1, known=known)
    known.rotate(first)
    again, _ = parse_messages(buf, seq=1, known=known)
    assert [s.counters.bytes_acked for s in first] == [1, 2, 3, 4]
    assert all(a is b for a, b in zip(again, first)) and len(known.layouts) == 2


def test_time_wait_records_are_recognised_by_their_short_fields() -> None:
    known = RawRecords()
    remnant = sock_msg(state=6, inode=0, attrs=rtattr(15, bytes(4))) + DONE
    [first], _ = parse_messages(remnant, seq=1, known=known)
    known.rotate([first])
    [again], _ = parse_messages(remnant, seq=1, known=known)
    assert again is first and first.counters is None
    # Once a socket with tcp_info taught the layout, remnants still take the short way.
    info = tcp_info(acked=10, received=5, data_segs_in=1, sent=9)
    full = with_cookie(sock_msg(sport=1, attrs=rtattr(netlink.INET_DIAG_INFO, info)), 77)
    known.rotate([again])
    [_, kept], _ = parse_messages(full + remnant, seq=1, known=known)
    assert kept is first


def test_remnants_left_out_of_a_dump_are_still_known_to_the_next_that_lists_them() -> None:
    known = RawRecords()
    remnant = sock_msg(state=6, inode=0, sport=1)
    full = with_cookie(sock_msg(sport=2, attrs=rtattr(netlink.INET_DIAG_INFO, tcp_info(acked=10, received=5, sent=9))), 78)
    both, _ = parse_messages(remnant + full + DONE, seq=1, known=known)
    first = both[0]
    known.rotate(both)
    listed, _ = parse_messages(full + DONE, seq=1, known=known)  # TIME_WAIT left out (a state filter)
    known.rotate(listed, every_state=False)
    [again, _], _ = parse_messages(remnant + full + DONE, seq=1, known=known)
    assert again is first


def test_a_failed_dump_leaves_the_known_records_of_the_last_complete_one() -> None:
    known = RawRecords()
    [first], _ = parse_messages(sock_msg(state=6, inode=0) + DONE, seq=1, known=known)
    known.rotate([first])
    parse_messages(sock_msg(state=6, inode=0), seq=1, known=known)
    known.discard()
    assert known.get(first.cookie) is first and known.short_listed == 0
    # The next complete dump lists nothing: what the failed one saw goes too.
    parse_messages(DONE, seq=1, known=known)
    known.rotate([])
    assert known.get(first.cookie) is None and not known.short


def test_entries_of_sockets_no_longer_listed_go_at_the_end_of_the_dump() -> None:
    def msg(cookie, state=1):
        attrs = rtattr(netlink.INET_DIAG_INFO, tcp_info(acked=cookie, received=5, sent=cookie)) if state != 6 else b""
        return with_cookie(sock_msg(state=state, inode=0 if state == 6 else 7, sport=cookie, attrs=attrs), cookie)

    known = RawRecords()
    records, _ = parse_messages(b"".join(msg(c) for c in (1, 2, 3)) + DONE, seq=1, known=known)
    known.rotate(records)
    assert sorted(known.entries) == [1, 2, 3] and known.listed == 0
    # 2 closed; 3 is now its own TIME_WAIT remnant (the kernel keeps the cookie).
    records, _ = parse_messages(msg(1) + msg(3, state=6) + DONE, seq=1, known=known)
    known.rotate(records)
    assert sorted(known.entries) == [1] and sorted(known.short) == [3]
    assert known.get(1) is records[0] and known.get(3) is records[1]


def test_tcp_dump_request_asks_for_both_families_at_once() -> None:
    req = netlink.build_tcp_dump_request(netlink.INET_DIAG_EXT_INFO, 0xFFE, seq=9)
    length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", req)
    assert (length, mtype, flags, seq) == (len(req), netlink.TCPDIAG_GETSOCK, 0x301, 9) and len(req) == 16 + 60
    family, _src_len, _dst_len, ext, states, dbs = struct.unpack_from("=BBBB48xII", req, 16)
    assert (family, ext, states, dbs) == (0, netlink.INET_DIAG_EXT_INFO, 0xFFE, 0)
    # Its replies carry the request's type; they parse like the others.
    reply = nlmsg(netlink.TCPDIAG_GETSOCK, diag_msg(family=socket.AF_INET6, src=V6_LOOPBACK, dst=V6_DOC)) + DONE
    [s], done = parse_messages(reply, seq=1)
    assert done and s.family == socket.AF_INET6


def test_ipv6_and_ipv4_mapped_addresses() -> None:
    buf = (
        sock_msg(family=socket.AF_INET6, src=V6_LOOPBACK, dst=V6_DOC, sport=1, dport=2)
        + sock_msg(family=socket.AF_INET6, src=V4_MAPPED, dst=V4_MAPPED, sport=3, dport=4)
        + DONE
    )
    sockets, done = parse_messages(buf, seq=1)
    assert done and len(sockets) == 2
    v6, mapped = sockets
    assert fmt(v6.family, v6.local_addr) == "::1"
    assert fmt(v6.family, v6.remote_addr) == "2001:db8::42"
    assert fmt(mapped.family, mapped.local_addr) == "::ffff:127.0.0.1"
    assert (v6.local_port, v6.remote_port, mapped.local_port, mapped.remote_port) == (1, 2, 3, 4)


def test_address_formatter_keeps_families_apart() -> None:
    # 127.0.0.1 padded to 16 bytes is also the IPv6 address 7f00:1::
    formatter = AddressFormatter()
    assert formatter.format(socket.AF_INET, V4_LOOPBACK) == "127.0.0.1"
    assert formatter.format(socket.AF_INET6, V4_LOOPBACK) == "7f00:1::"
    assert formatter.format(socket.AF_INET, V4_LOOPBACK) == "127.0.0.1"


def test_address_formatter_cache_is_bounded() -> None:
    formatter = AddressFormatter(limit=4)
    for i in range(10):
        formatter.format(socket.AF_INET, bytes([10, 0, 0, i]) + bytes(12))
    assert len(formatter.by_family[socket.AF_INET]) <= 4


@pytest.mark.parametrize(
    "length, expected",
    [
        (104, None),  # < 4.1: no bytes_acked at all
        (135, None),  # cut inside bytes_received
        (136, TcpCounters(1001, 700, None, None, None, 2)),  # 4.1: acked + received only
        (160, TcpCounters(1001, 700, 1, None, None, 2)),  # 4.6: data_segs_in too
        (208, TcpCounters(1001, 700, 1, None, None, 2)),  # bytes_sent present, bytes_retrans cut
        (216, TcpCounters(1001, 700, 1, 1000, 3, 2)),  # 4.19: everything
        (TCP_INFO_LEN_6_18, TcpCounters(1001, 700, 1, 1000, 3, 2)),
    ],
)
def test_short_tcp_info_of_old_kernels(length: int, expected) -> None:
    info = tcp_info(length, acked=1001, received=700, data_segs_in=1, sent=1000, retrans=3, unacked=2)
    buf = sock_msg(attrs=rtattr(netlink.INET_DIAG_INFO, info)) + DONE
    [s], _ = parse_messages(buf, seq=1)
    assert s.counters == expected


def test_socket_without_tcp_info_has_no_counters() -> None:
    # TIME_WAIT and SYN_RECV request sockets carry no attributes at all
    buf = sock_msg(state=6, inode=0) + DONE
    [s], done = parse_messages(buf, seq=1)
    assert done and s.counters is None and s.inode == 0 and s.state == 6


def test_attribute_running_past_its_message_is_not_read() -> None:
    # An INFO attribute claiming 280 bytes in a message that holds fewer:
    # only what is inside the message counts (here: too short -> None).
    info = tcp_info(120)
    attr = struct.pack("=HH", 4 + 280, netlink.INET_DIAG_INFO) + info
    buf = nlmsg(netlink.SOCK_DIAG_BY_FAMILY, diag_msg(attrs=attr)) + DONE
    [s], _ = parse_messages(buf, seq=1)
    assert s.counters is None


def test_multi_message_buffer_stops_at_done() -> None:
    msgs = b"".join(sock_msg(sport=1000 + i, inode=i + 1) for i in range(50))
    after_done = sock_msg(sport=9999)
    sockets, done = parse_messages(msgs + DONE + after_done, seq=1)
    assert done
    assert [s.local_port for s in sockets] == list(range(1000, 1050))


def test_buffer_without_done_is_not_finished() -> None:
    sockets, done = parse_messages(sock_msg() + sock_msg(sport=2), seq=1)
    assert not done and len(sockets) == 2
    assert parse_messages(b"", seq=1) == ([], False)


def test_messages_of_another_request_are_skipped() -> None:
    buf = sock_msg(seq=6, sport=1) + sock_msg(seq=7, sport=2) + nlmsg(netlink.NLMSG_DONE, b"\0" * 4, seq=6)
    sockets, done = parse_messages(buf, seq=7)
    assert [s.local_port for s in sockets] == [2] and not done
    # multicast destroy events (seq=None): everything is taken
    sockets, _ = parse_messages(buf, seq=None)
    assert [s.local_port for s in sockets] == [1, 2]


def test_nlmsg_error_raises_with_errno() -> None:
    with pytest.raises(NetlinkError) as info:
        parse_messages(sock_msg() + error_msg(errno.ENOENT), seq=1)
    assert info.value.errno == errno.ENOENT


def test_nlmsg_error_zero_is_an_ack() -> None:
    sockets, done = parse_messages(error_msg(0) + sock_msg() + DONE, seq=1)
    assert done and len(sockets) == 1


@pytest.mark.parametrize("cut", [20, 60, 100])
def test_truncated_message_raises(cut: int) -> None:
    buf = sock_msg(attrs=rtattr(netlink.INET_DIAG_INFO, tcp_info()))
    with pytest.raises(NetlinkError):
        parse_messages(buf[:cut], seq=1)


def test_bogus_length_raises() -> None:
    bogus = struct.pack("=IHHII", 8, netlink.SOCK_DIAG_BY_FAMILY, 2, 1, 0)
    with pytest.raises(NetlinkError):
        parse_messages(bogus + bytes(8), seq=1)


def test_zero_length_attribute_does_not_loop() -> None:
    buf = sock_msg(attrs=struct.pack("=HH", 0, 8) + bytes(4)) + DONE
    [s], done = parse_messages(buf, seq=1)
    assert done and s.counters is None


def test_what_the_caller_keeps_in_an_entry_is_carried_over_and_handed_back_when_it_goes() -> None:
    def msg(cookie, state=1, acked=None):
        attrs = (rtattr(netlink.INET_DIAG_INFO, tcp_info(acked=acked or cookie, received=5, sent=cookie))
                 if state != 6 else b"")
        return with_cookie(sock_msg(state=state, inode=0 if state == 6 else 7, sport=cookie, attrs=attrs), cookie)

    def annotate(cookie, mark):  # as LinuxBackend does after building a sample
        entry = known.entries[cookie]
        known.entries[cookie] = (*entry[:4], mark, None, None, None)

    known = RawRecords()
    records, _ = parse_messages(b"".join(msg(c) for c in (1, 2, 3)) + DONE, seq=1, known=known)
    known.rotate(records)
    for c in (1, 2, 3):
        assert known.entries[c][4:] == (None,) * netlink.CALLER_FIELDS
        annotate(c, f"built {c}")
    # 1 moved bytes (decoded anew: what was kept of it stays, the caller
    # tells it is stale by its record); 2 closed; 3 is a TIME_WAIT remnant.
    records, _ = parse_messages(msg(1, acked=100) + msg(3, state=6) + DONE, seq=1, known=known)
    known.rotate(records)
    assert known.entries[1][3] is records[0] and known.entries[1][4] == "built 1"
    assert sorted(e[4] for e in known.superseded) == ["built 2", "built 3"]
