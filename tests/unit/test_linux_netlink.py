"""The Linux backend's pure parts, on crafted bytes: no netlink socket opened.

- netlink.py: inet_diag_msg + rtattr decoding (IPv4, IPv6, IPv4-mapped, short
  tcp_info of old kernels, multi-message buffers, NLMSG_DONE, NLMSG_ERROR);
- tcpbytes.py: the SYN/FIN corrections, with the raw counters measured on
  Linux 6.18 (see the module docstring);
- sockdiag.DestroyListener: ENOBUFS and buffer overflow accounting, with a
  fake socket;
- procfd.SocketOwners: the inode index, over a fake /proc tree;
- linux.LinuxBackend's bookkeeping (keys, TIME_WAIT remnants, destroy
  events, owners remembered, floors) with a fake dumper and event feed.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time

import pytest

from netmond.backends import linux, netlink
from netmond.backends.netlink import (
    AddressFormatter,
    DiagSocket,
    NetlinkError,
    TcpCounters,
    build_dump_request,
    parse_messages,
)
from netmond.backends.procfd import SocketOwners
from netmond.backends.sockdiag import DestroyListener
from netmond.backends.tcpbytes import payload

MY_NAME = __import__("psutil").Process().name()

# -- crafting messages ---------------------------------------------------------

V4_LOOPBACK = socket.inet_pton(socket.AF_INET, "127.0.0.1") + bytes(12)
V4_OTHER = socket.inet_pton(socket.AF_INET, "192.0.2.7") + bytes(12)
V6_LOOPBACK = socket.inet_pton(socket.AF_INET6, "::1")
V6_DOC = socket.inet_pton(socket.AF_INET6, "2001:db8::42")
V4_MAPPED = socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1")
TCP_INFO_LEN_6_18 = 280  # what this kernel sends


def tcp_info(
    length: int = TCP_INFO_LEN_6_18,
    acked: int = 0,
    received: int = 0,
    data_segs_in: int = 0,
    sent: int = 0,
    retrans: int = 0,
    unacked: int = 0,
) -> bytes:
    """A struct tcp_info of `length` bytes with the counters at their offsets."""
    info = bytearray(max(length, 216))
    info[0] = 1  # tcpi_state
    struct.pack_into("=I", info, 24, unacked)
    struct.pack_into("=QQ", info, 120, acked, received)
    struct.pack_into("=I", info, 152, data_segs_in)
    struct.pack_into("=QQ", info, 200, sent, retrans)
    return bytes(info[:length])


def rtattr(atype: int, payload_bytes: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload_bytes), atype) + payload_bytes
    return raw + bytes(-len(raw) % 4)


def diag_msg(
    family: int = socket.AF_INET,
    state: int = 1,
    sport: int = 40000,
    dport: int = 443,
    src: bytes = V4_LOOPBACK,
    dst: bytes = V4_OTHER,
    uid: int = 1000,
    inode: int = 12345,
    attrs: bytes = b"",
) -> bytes:
    """inet_diag_msg (72 bytes, ports big-endian) followed by attributes."""
    head = struct.pack("=BBBB", family, state, 0, 0) + struct.pack(">HH", sport, dport)
    tail = struct.pack("=I8sIIIII", 0, b"\xff" * 8, 0, 0, 0, uid, inode)
    body = head + src + dst + tail
    assert len(body) == 72
    return body + attrs


def nlmsg(mtype: int, body: bytes, seq: int = 1, flags: int = 2) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 4242) + body
    return raw + bytes(-len(raw) % 4)


def sock_msg(seq: int = 1, **fields) -> bytes:
    return nlmsg(netlink.SOCK_DIAG_BY_FAMILY, diag_msg(**fields), seq=seq)


DONE = nlmsg(netlink.NLMSG_DONE, struct.pack("=i", 0))


def error_msg(err: int, seq: int = 1) -> bytes:
    # nlmsgerr: negative errno, then the offending request's header
    return nlmsg(netlink.NLMSG_ERROR, struct.pack("=i", -err) + bytes(16), seq=seq)


def fmt(family: int, raw: bytes) -> str:
    return AddressFormatter().format(family, raw)


# -- netlink.py ------------------------------------------------------------------


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


def test_records_equal_to_known_ones_are_returned_as_those() -> None:
    def dump(acked):
        info = tcp_info(acked=acked, received=5, data_segs_in=1, sent=acked, retrans=0)
        return sock_msg(attrs=rtattr(netlink.INET_DIAG_INFO, info)) + DONE

    [first], _ = parse_messages(dump(10), seq=1)
    known = {first.cookie: first}
    [again], _ = parse_messages(dump(10), seq=1, known=known)
    [moved], _ = parse_messages(dump(11), seq=1, known=known)
    assert first.cookie and again is first
    assert moved is not first and moved.counters.bytes_acked == 11


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


# -- tcpbytes.py: SYN/FIN corrections -------------------------------------------
ESTABLISHED, SYN_SENT, FIN_WAIT1, FIN_WAIT2, CLOSE, CLOSE_WAIT, LAST_ACK = 1, 2, 4, 5, 7, 8, 9


def counters(acked, received, sent, retrans=0, segs_in=1):
    return TcpCounters(acked, received, segs_in, sent, retrans)


def old_kernel(acked, received):
    """< 4.19: no bytes_sent/bytes_retrans."""
    return TcpCounters(acked, received, 1, None, None)


# Raw values measured on Linux 6.18: client sent N=1000 bytes, server M=700.
@pytest.mark.parametrize(
    "case, raw, state, active_open, expected",
    [
        ("client established", counters(1001, 700, 1000), ESTABLISHED, True, (1000, 700)),
        ("server established", counters(700, 1000, 700), ESTABLISHED, False, (700, 1000)),
        ("client FIN acked", counters(1002, 700, 1000), FIN_WAIT2, True, (1000, 700)),
        ("client FIN sent, not acked", counters(1001, 700, 1000), FIN_WAIT1, True, (1000, 700)),
        ("server got FIN", counters(700, 1001, 700), CLOSE_WAIT, False, (700, 1000)),
        ("server FIN sent", counters(700, 1001, 700), LAST_ACK, False, (700, 1000)),
        ("client destroyed, graceful", counters(1002, 701, 1000), CLOSE, True, (1000, 700)),
        ("server destroyed, graceful", counters(701, 1001, 700), CLOSE, False, (700, 1000)),
        # active closer that closed before the peer's FIN: one byte short (documented)
        ("client closed first", counters(1002, 700, 1000), CLOSE, True, (1000, 699)),
        # close() with 10 unread bytes: RST instead of FIN on the server side
        ("server reset", counters(700, 1010, 700), CLOSE, False, (700, 1010)),
        ("client got reset", counters(1011, 700, 1010), CLOSE, True, (1010, 700)),
        ("connecting", counters(0, 0, 0, segs_in=0), SYN_SENT, True, (0, 0)),
        ("no payload, FIN only", counters(2, 1, 0, segs_in=0), CLOSE, True, (0, 0)),
        ("half acked in flight", counters(501, 0, 1000, segs_in=0), ESTABLISHED, True, (500, 0)),
        ("retransmissions not counted twice", counters(1001, 0, 1500, retrans=500), ESTABLISHED, True, (1000, 0)),
        # a wrong SYN-side guess is absorbed by the unique-payload cap
        ("client guessed passive", counters(1001, 700, 1000), ESTABLISHED, False, (1000, 700)),
        ("client guessed passive, closed", counters(1002, 701, 1000), CLOSE, False, (1000, 700)),
        ("old kernel client", old_kernel(1001, 700), ESTABLISHED, True, (1000, 700)),
        ("old kernel client destroyed", old_kernel(1002, 701), CLOSE, True, (1000, 700)),
        ("old kernel server destroyed", old_kernel(701, 1001), CLOSE, False, (700, 1000)),
    ],
)
def test_payload_corrections(case, raw, state, active_open, expected) -> None:
    assert payload(raw, state, active_open) == expected, case


def test_payload_never_negative() -> None:
    assert payload(counters(0, 0, 0, segs_in=0), CLOSE, True) == (0, 0)
    assert payload(old_kernel(0, 0), CLOSE, True) == (0, 0)


def test_payload_is_monotonic_over_a_client_life() -> None:
    """Counters of one socket tick by tick: bytes_sent must never go back."""
    life = [
        (SYN_SENT, counters(0, 0, 0, segs_in=0)),
        (ESTABLISHED, counters(1, 0, 0, segs_in=0)),
        (ESTABLISHED, counters(1, 0, 500, segs_in=0)),  # 500 in flight
        (ESTABLISHED, counters(301, 0, 1000, segs_in=0)),
        (ESTABLISHED, counters(1001, 700, 1000)),
        (FIN_WAIT1, counters(1001, 700, 1000)),
        (FIN_WAIT2, counters(1002, 700, 1000)),
        (CLOSE, counters(1002, 701, 1000)),
    ]
    previous = (0, 0)
    for state, raw in life:
        now = payload(raw, state, True)
        assert now[0] >= previous[0] and now[1] >= previous[1], (state, raw, previous, now)
        previous = now
    assert previous == (1000, 700)


# -- sockdiag.DestroyListener with a fake socket ---------------------------------


def destroy_event(sport: int, acked: int = 1002, received: int = 701, sent: int = 1000) -> bytes:
    info = tcp_info(acked=acked, received=received, data_segs_in=1, sent=sent)
    return nlmsg(netlink.SOCK_DIAG_BY_FAMILY, diag_msg(state=7, sport=sport, inode=0,
                                                        attrs=rtattr(netlink.INET_DIAG_INFO, info)), seq=0, flags=0)


class FakeNetlinkSocket:
    """Replays a script of recv outcomes: bytes, or an exception to raise.

    Readiness for select() comes from a real socketpair, made readable while
    the script has something left.
    """

    def __init__(self, script, kernel_drops: int | None = None) -> None:
        self.script = list(script)
        self.kernel_drops = kernel_drops
        self._ready, self._signal = socket.socketpair()
        self.closed = False
        if self.script:
            self._signal.send(b"!")

    def fileno(self) -> int:
        return self._ready.fileno()

    def setblocking(self, flag: bool) -> None:
        pass

    def recv_into(self, buf, nbytes: int = 0) -> int:
        if not self.script:
            try:
                self._ready.recv(64, socket.MSG_DONTWAIT)  # no longer readable
            except BlockingIOError:
                pass
            raise BlockingIOError(errno.EAGAIN, "would block")
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        buf[: len(item)] = item
        return len(item)

    def getsockopt(self, level: int, option: int, size: int = 0) -> bytes:
        if self.kernel_drops is None:
            raise OSError(errno.ENOPROTOOPT, "no SO_MEMINFO")
        return struct.pack("=9I", 0, 0, 0, 0, 0, 0, 0, 0, self.kernel_drops)

    def close(self) -> None:
        self.closed = True
        self._ready.close()
        self._signal.close()


def test_enobufs_is_counted_and_reading_goes_on() -> None:
    fake = FakeNetlinkSocket(
        [destroy_event(1), OSError(errno.ENOBUFS, "No buffer space available"), destroy_event(2)],
        kernel_drops=17,
    )
    listener = DestroyListener(sock=fake)
    assert listener.drain() == 2  # no exception
    assert [e.local_port for e in listener.take()] == [1, 2]
    assert listener.events_lost == 17  # the kernel's own count (SO_MEMINFO)
    assert listener.take() == []


def test_enobufs_without_drop_count_counts_at_least_one_each() -> None:
    enobufs = OSError(errno.ENOBUFS, "No buffer space available")
    listener = DestroyListener(sock=FakeNetlinkSocket([enobufs, enobufs, destroy_event(3)]))
    assert listener.drain() == 1
    assert listener.events_lost == 2


def test_enobufs_in_the_reader_thread_does_not_kill_it() -> None:
    fake = FakeNetlinkSocket([OSError(errno.ENOBUFS, "lost"), destroy_event(4)], kernel_drops=3)
    listener = DestroyListener(sock=fake)
    listener.start()
    try:
        deadline = time.monotonic() + 5
        events = []
        while not events and time.monotonic() < deadline:
            events = listener.take()
            time.sleep(0.01)
        assert [e.local_port for e in events] == [4]
        assert listener.events_lost == 3
        assert listener.running
    finally:
        listener.close()
    assert not listener.running and fake.closed


def test_close_stops_an_idle_reader_promptly() -> None:
    listener = DestroyListener(sock=FakeNetlinkSocket([]))
    listener.start()
    before = threading.active_count()
    t0 = time.monotonic()
    listener.close()
    assert time.monotonic() - t0 < 1.0
    assert threading.active_count() == before - 1
    listener.close()  # twice is fine


def test_unexpected_recv_error_stops_the_reader_and_says_why() -> None:
    fake = FakeNetlinkSocket([destroy_event(1), OSError(errno.EBADF, "Bad file descriptor"), destroy_event(2)])
    listener = DestroyListener(sock=fake)
    assert listener.drain() == 1
    assert listener.failure is not None and "Bad file descriptor" in listener.failure


def test_pending_events_are_bounded() -> None:
    fake = FakeNetlinkSocket([destroy_event(p) for p in range(1, 6)])
    listener = DestroyListener(max_pending=2, sock=fake)
    listener.drain()
    assert [e.local_port for e in listener.take()] == [1, 2]
    assert listener.events_lost == 3


def test_malformed_event_is_skipped() -> None:
    fake = FakeNetlinkSocket([b"\x05\x00\x00\x00garbage", destroy_event(9)])
    listener = DestroyListener(sock=fake)
    listener.drain()
    assert [e.local_port for e in listener.take()] == [9]
    assert listener.events_lost == 0


# -- procfd.SocketOwners over a fake /proc ---------------------------------------


class FakeProc:
    """A directory shaped like /proc: PID/fd/N symlinks to 'socket:[INODE]'."""

    def __init__(self, root) -> None:
        self.root = root
        os.makedirs(root / "self", exist_ok=True)  # non-numeric entries are ignored

    def add(self, pid: int, fd: int, target: str) -> None:
        fd_dir = self.root / str(pid) / "fd"
        fd_dir.mkdir(parents=True, exist_ok=True)
        link = fd_dir / str(fd)
        if link.is_symlink():
            link.unlink()
        os.symlink(target, link)

    def remove_fd(self, pid: int, fd: int) -> None:
        (self.root / str(pid) / "fd" / str(fd)).unlink()

    def remove_process(self, pid: int) -> None:
        import shutil

        shutil.rmtree(self.root / str(pid))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_proc(tmp_path):
    return FakeProc(tmp_path)


def test_owner_index_maps_inodes_to_pids(fake_proc) -> None:
    fake_proc.add(10, 3, "socket:[100]")
    fake_proc.add(10, 4, "/dev/null")
    fake_proc.add(20, 5, "socket:[200]")
    fake_proc.add(20, 6, "pipe:[300]")
    index = SocketOwners(str(fake_proc.root), clock=Clock())
    index.refresh({100, 200})
    assert (index.owner(100), index.owner(200)) == (10, 20)
    assert index.full_scans == 1


def test_owner_index_reads_a_process_holding_many_sockets_only_when_it_must(fake_proc) -> None:
    # pid 10 holds many sockets; new ones keep appearing in pids 20 and 30.
    clock = Clock()
    for fd in range(50):
        fake_proc.add(10, 100 + fd, f"socket:[{1000 + fd}]")
    fake_proc.add(20, 3, "socket:[2000]")
    index = SocketOwners(str(fake_proc.root), min_full_scan_interval=1.0, clock=clock)
    read: list[int] = []
    real_socket_fds = index._socket_fds
    index._socket_fds = lambda pid, live: read.append(pid) or real_socket_fds(pid, live)
    live = set(range(1000, 1050)) | {2000}
    index.refresh(live)
    assert index.owner(1000) == 10 and index.owner(2000) == 20
    # A socket of another process: pid 10, the biggest recent owner, is
    # searched first once, for nothing; then walks read it last.
    fake_proc.add(30, 3, "socket:[3000]")
    clock.now += 1.0
    read.clear()
    index.refresh(live | {3000})
    assert index.owner(3000) == 30
    fake_proc.add(30, 4, "socket:[3001]")
    clock.now += 1.0
    read.clear()
    index.refresh(live | {3000, 3001})
    assert index.owner(3001) == 30 and 10 not in read  # pid 30 is the recent owner now
    fake_proc.add(20, 4, "socket:[2001]")
    clock.now += 1.0
    read.clear()
    index.refresh(live | {3000, 3001, 2001})
    assert index.owner(2001) == 20 and 10 not in read  # a walk, fewest sockets first
    # A new socket of the big process itself is still found.
    fake_proc.add(10, 200, "socket:[1100]")
    clock.now += 1.0
    index.refresh(live | {3000, 3001, 2001, 1100})
    assert index.owner(1100) == 10


def test_owner_index_rescans_only_for_new_inodes_and_at_a_bounded_rate(fake_proc) -> None:
    clock = Clock()
    fake_proc.add(10, 3, "socket:[100]")
    index = SocketOwners(str(fake_proc.root), min_full_scan_interval=1.0, clock=clock)
    index.refresh({100})
    index.refresh({100})
    assert index.full_scans == 1  # nothing new: no walk
    # a new socket of a known owner is found without walking all of /proc
    fake_proc.add(10, 4, "socket:[101]")
    index.refresh({100, 101})
    assert index.owner(101) == 10 and index.full_scans == 1
    # a socket of a new process needs a full walk: not twice within a second
    fake_proc.add(30, 3, "socket:[300]")
    clock.now += 0.1
    index.refresh({100, 101, 300})
    assert index.owner(300) is None and index.full_scans == 1
    clock.now += 1.0
    index.refresh({100, 101, 300})
    assert index.owner(300) == 30 and index.full_scans == 2


def test_owner_index_does_not_chase_unfindable_inodes(fake_proc) -> None:
    clock = Clock()
    fake_proc.add(10, 3, "socket:[100]")
    index = SocketOwners(str(fake_proc.root), min_full_scan_interval=1.0, retry_unfound=30.0, clock=clock)
    index.refresh({100, 999})  # 999: held by no fd we can see
    for _ in range(5):
        clock.now += 2.0
        index.refresh({100, 999})
    assert index.full_scans == 1
    clock.now += 30.0
    index.refresh({100, 999})
    assert index.full_scans == 2  # retried after retry_unfound


def test_owner_index_resumes_a_walk_cut_short_by_its_time_budget(fake_proc) -> None:
    class SlowClock(Clock):
        step = 1.0  # every look at the clock: a second later

        def __call__(self) -> float:
            self.now += self.step
            return self.now

    clock = SlowClock()
    fake_proc.add(10, 3, "socket:[100]")
    index = SocketOwners(str(fake_proc.root), scan_time_budget=0.5, retry_unfound=30.0, clock=clock)
    index.refresh({100})
    assert index.owner(100) is None  # out of time before reaching pid 10
    clock.step = 0.0
    clock.now += 2.0
    index.refresh({100})  # not written off as unfindable: searched again at once
    assert index.owner(100) == 10


def test_owner_index_forgets_dead_sockets_and_vanished_processes(fake_proc) -> None:
    clock = Clock()
    fake_proc.add(10, 3, "socket:[100]")
    fake_proc.add(20, 3, "socket:[200]")
    index = SocketOwners(str(fake_proc.root), clock=clock)
    index.refresh({100, 200})
    index.refresh({200})
    assert index.owner(100) is None and len(index.owners) == 1
    fake_proc.remove_process(20)
    index.forget_pid(20)
    clock.now += 5
    index.refresh({200})  # must not raise though /proc/20 is gone
    assert index.owner(200) is None


def test_owner_index_rereads_a_reused_fd_number(fake_proc) -> None:
    clock = Clock()
    fake_proc.add(10, 3, "socket:[100]")
    index = SocketOwners(str(fake_proc.root), clock=clock)
    index.refresh({100})
    # socket 100 closed, fd 3 reused by socket 101
    fake_proc.add(10, 3, "socket:[101]")
    index.refresh({101})
    assert index.owner(101) == 10


def test_owner_index_survives_an_fd_dir_that_is_not_a_directory(fake_proc) -> None:
    (fake_proc.root / "40").mkdir()
    (fake_proc.root / "40" / "fd").write_text("not a dir")
    fake_proc.add(10, 3, "socket:[100]")
    index = SocketOwners(str(fake_proc.root), clock=Clock())
    index.refresh({100})
    assert index.owner(100) == 10


# -- linux.RecentKeys: destroyed keys hiding their TIME_WAIT remnants -----------


def test_recent_keys_live_between_ttl_and_twice_ttl() -> None:
    from netmond.backends.linux import RecentKeys

    keys = RecentKeys(ttl=60.0, max_keys=1000)
    keys.add("a", now=0.0)
    keys.add("b", now=59.0)
    keys.expire(59.9)
    assert "a" in keys and "b" in keys
    keys.expire(60.0)  # rotation: both move to the older generation
    assert "a" in keys and "b" in keys
    keys.expire(119.0)
    assert "b" in keys
    keys.expire(120.0)  # "b" was kept 61 s, "a" 120 s
    assert "a" not in keys and "b" not in keys and len(keys) == 0


def test_recent_keys_are_bounded_under_churn() -> None:
    from netmond.backends.linux import RecentKeys

    keys = RecentKeys(ttl=60.0, max_keys=100)
    for i in range(10_000):
        keys.add(i, now=i * 0.001)
    assert len(keys) <= 200
    assert 9_999 in keys


# -- linux.LinuxBackend's bookkeeping, on crafted dumps and events ---------------

CLIENT_PORT, SERVER_PORT = 40000, 8080
CLIENT_KEY = ("TCP", "127.0.0.1", CLIENT_PORT, "127.0.0.1", SERVER_PORT)
SERVER_KEY = ("TCP", "127.0.0.1", SERVER_PORT, "127.0.0.1", CLIENT_PORT)


def info(acked: int = 0, received: int = 0, data_segs_in: int = 0, sent: int = 0, retrans: int = 0,
         unacked: int = 0) -> TcpCounters:
    """Raw counters as netlink.parse_messages returns them."""
    return TcpCounters(acked, received, data_segs_in, sent, retrans, unacked)


def record(state, sport, dport, inode, tcpi=None, family=socket.AF_INET, src=V4_LOOPBACK, dst=V4_LOOPBACK,
           uid=None, cookie=0) -> DiagSocket:
    return DiagSocket(family, state, sport, dport, src, dst, os.geteuid() if uid is None else uid, inode, tcpi,
                      cookie)


def by_key(samples):
    return {s.key: s for s in samples}


class FakeDumper:
    """Plays the kernel: `tcp` and `udp` are what the next dumps list (IPv4)."""

    def __init__(self) -> None:
        self.tcp: list[DiagSocket] = []
        self.udp: list[DiagSocket] = []

    def dump(self, family, protocol, ext, states, known=None):
        if family != socket.AF_INET:
            return []
        records = self.tcp if protocol == socket.IPPROTO_TCP else self.udp
        if known is None:
            return list(records)
        # As parse_messages does: a record equal to a known one is that one.
        return [known[r.cookie] if known.get(r.cookie) == r else r for r in records]

    def close(self) -> None:
        pass


class FakeDestroyListener:
    def __init__(self) -> None:
        self.events: list[DiagSocket] = []
        self.events_lost = 0
        self.failure = None

    def start(self) -> None:
        pass

    def take(self) -> list[DiagSocket]:
        events, self.events = self.events, []
        return events

    def close(self) -> None:
        pass


@pytest.fixture
def crafted(fake_proc):
    """(backend, dumper, listener) with our pid owning inodes 100 (client) and 200 (server)."""
    fake_proc.add(os.getpid(), 3, "socket:[100]")
    fake_proc.add(os.getpid(), 4, "socket:[200]")
    fake_proc.add(os.getpid(), 5, "socket:[300]")
    dumper, listener = FakeDumper(), FakeDestroyListener()
    backend = linux.LinuxBackend(proc_root=str(fake_proc.root), destroy_listener=listener, dumper=dumper)
    backend.start()
    yield backend, dumper, listener
    backend.close()


def established_pair(client_info, server_info):
    return [
        record(10, SERVER_PORT, 0, 300, info(), dst=bytes(16)),  # the listener
        record(1, CLIENT_PORT, SERVER_PORT, 100, client_info),
        record(1, SERVER_PORT, CLIENT_PORT, 200, server_info),
    ]


def test_backend_reports_payload_and_owner(crafted) -> None:
    backend, dumper, _ = crafted
    dumper.tcp = established_pair(info(acked=1001, received=700, data_segs_in=1, sent=1000),
                                  info(acked=700, received=1000, data_segs_in=1, sent=700))
    rows = by_key(backend.sample().sockets)
    client, server = rows[CLIENT_KEY], rows[SERVER_KEY]
    assert (client.bytes_sent, client.bytes_received, server.bytes_sent, server.bytes_received) == (1000, 700, 700, 1000)
    assert client.pid == server.pid == os.getpid() and client.process_name
    [listener] = [s for s in rows.values() if s.state == "LISTEN"]
    assert listener.key == ("TCP", "127.0.0.1", SERVER_PORT, None, None, 300)
    assert (listener.remote_ip, listener.bytes_sent) == (None, 0)


def test_an_unchanged_socket_is_handed_on_as_the_same_sample(crafted) -> None:
    backend, dumper, _ = crafted
    CLIENT_COOKIE_KEY, SERVER_COOKIE_KEY = ("TCP", 7), ("TCP", 8)
    client_info = info(acked=1001, received=700, data_segs_in=1, sent=1000)
    dumper.tcp = [record(1, CLIENT_PORT, SERVER_PORT, 100, client_info, cookie=7),
                  record(1, SERVER_PORT, CLIENT_PORT, 200, info(acked=700, received=1000, data_segs_in=1,
                                                                 sent=700), cookie=8)]
    first = by_key(backend.sample().sockets)
    again = by_key(backend.sample().sockets)
    assert again[CLIENT_COOKIE_KEY] is first[CLIENT_COOKIE_KEY] and again[SERVER_COOKIE_KEY] is first[SERVER_COOKIE_KEY]
    # New counters: a new sample, with the new bytes; the other is still handed on.
    dumper.tcp[0] = record(1, CLIENT_PORT, SERVER_PORT, 100,
                           info(acked=1501, received=700, data_segs_in=1, sent=1500), cookie=7)
    moved = by_key(backend.sample().sockets)
    assert moved[CLIENT_COOKIE_KEY] is not first[CLIENT_COOKIE_KEY] and moved[CLIENT_COOKIE_KEY].bytes_sent == 1500
    assert moved[SERVER_COOKIE_KEY] is first[SERVER_COOKIE_KEY]
    # A new state, or a new owner for the same record: a new sample too.
    dumper.tcp[1] = record(8, SERVER_PORT, CLIENT_PORT, 200, dumper.tcp[1].counters, cookie=8)
    assert by_key(backend.sample().sockets)[SERVER_COOKIE_KEY].state == "CLOSE_WAIT"
    backend._owners.owners[200] = 1  # the inode index learnt another owner (init, here)
    owned = by_key(backend.sample().sockets)[SERVER_COOKIE_KEY]
    assert owned.pid == 1 and owned.state == "CLOSE_WAIT"
    # What destroy events need is kept for handed-on sockets too.
    assert backend._owner_history[0][CLIENT_COOKIE_KEY][4:] == (1500, 700)


def test_sockets_without_a_cookie_are_never_handed_on(crafted) -> None:
    backend, dumper, _ = crafted
    dumper.tcp = [record(1, CLIENT_PORT, SERVER_PORT, 100, info(acked=11, received=0, sent=10))]
    first, again = backend.sample().sockets, backend.sample().sockets
    assert first[0] is not again[0] and first[0] == again[0]


def test_destroy_event_ends_the_row_and_hides_its_time_wait(crafted) -> None:
    backend, dumper, listener = crafted
    dumper.tcp = established_pair(info(acked=1001, received=700, data_segs_in=1, sent=1000),
                                  info(acked=700, received=1000, data_segs_in=1, sent=700))
    backend.sample()
    # The client closed first: destroyed with no peer FIN counted (raw 700),
    # its TIME_WAIT remnant now in the dump, same 5-tuple, no inode.
    listener.events = [record(7, CLIENT_PORT, SERVER_PORT, 0,
                              info(acked=1002, received=700, data_segs_in=1, sent=1000))]
    dumper.tcp = [record(6, CLIENT_PORT, SERVER_PORT, 0, None),
                  record(8, SERVER_PORT, CLIENT_PORT, 200, info(acked=700, received=1001, data_segs_in=1, sent=700))]
    snap = backend.sample()
    [closed] = snap.closed
    assert closed.key == CLIENT_KEY and closed.pid == os.getpid()
    # 700, not 699: the earlier dump's exact count is a floor for the final one
    assert (closed.bytes_sent, closed.bytes_received) == (1000, 700)
    rows = by_key(snap.sockets)
    assert CLIENT_KEY not in rows
    assert (rows[SERVER_KEY].state, rows[SERVER_KEY].bytes_received) == ("CLOSE_WAIT", 1000)
    for _ in range(3):
        assert CLIENT_KEY not in by_key(backend.sample().sockets)


def test_time_wait_without_destroy_event_has_no_counters(crafted) -> None:
    backend, dumper, _ = crafted
    dumper.tcp = [record(6, CLIENT_PORT, SERVER_PORT, 0, None)]
    [row] = backend.sample().sockets
    assert (row.key, row.state, row.pid, row.bytes_sent, row.bytes_received) == (CLIENT_KEY, "TIME_WAIT", None, None, None)


def test_socket_listed_and_destroyed_in_one_tick_is_only_closed(crafted) -> None:
    backend, dumper, listener = crafted
    dumper.tcp = established_pair(info(acked=1001, received=700, data_segs_in=1, sent=1000),
                                  info(acked=700, received=1000, data_segs_in=1, sent=700))
    listener.events = [record(7, CLIENT_PORT, SERVER_PORT, 0,
                              info(acked=1002, received=701, data_segs_in=1, sent=1000))]
    snap = backend.sample()
    assert [s.key for s in snap.closed] == [CLIENT_KEY]
    assert CLIENT_KEY not in by_key(snap.sockets) and SERVER_KEY in by_key(snap.sockets)
    assert snap.closed[0].pid == os.getpid()  # from this very dump


def test_noise_destroy_events_are_ignored(crafted) -> None:
    backend, _, listener = crafted
    listener.events = [
        record(7, SERVER_PORT, 0, 0, info(), dst=bytes(16)),  # a listener closing
        record(7, CLIENT_PORT, SERVER_PORT, 0, info()),  # a refused connect: nothing moved
        record(7, CLIENT_PORT + 1, 0, 0, info(), dst=bytes(16)),  # SO_LINGER 0: zeroed
        record(7, CLIENT_PORT + 2, SERVER_PORT, 0, None),  # a kernel without tcp_info
    ]
    assert backend.sample().closed == []


def test_short_lived_connection_never_listed(crafted) -> None:
    backend, dumper, listener = crafted
    dumper.tcp = [record(10, SERVER_PORT, 0, 300, info(), dst=bytes(16))]
    backend.sample()
    listener.events = [
        record(7, CLIENT_PORT, SERVER_PORT, 0, info(acked=100_002, received=101, data_segs_in=1, sent=100_000)),
        record(7, SERVER_PORT, CLIENT_PORT, 0, info(acked=101, received=100_001, data_segs_in=3, sent=100)),
    ]
    closed = by_key(backend.sample().closed)
    assert (closed[CLIENT_KEY].bytes_sent, closed[CLIENT_KEY].bytes_received) == (100_000, 100)
    assert (closed[SERVER_KEY].bytes_sent, closed[SERVER_KEY].bytes_received) == (100, 100_000)
    assert closed[CLIENT_KEY].pid is None and closed[CLIENT_KEY].user  # the uid is still known


def test_reused_five_tuple_does_not_inherit_the_old_owner(crafted) -> None:
    backend, dumper, listener = crafted
    dumper.tcp = established_pair(info(acked=5001, received=0, data_segs_in=0, sent=5000), info())
    backend.sample()
    final = info(acked=5002, received=1, data_segs_in=0, sent=5000)
    listener.events = [record(7, CLIENT_PORT, SERVER_PORT, 0, final)]
    dumper.tcp = []
    assert backend.sample().closed[0].bytes_sent == 5000
    # the same 5-tuple again, opened and closed between two samples
    listener.events = [record(7, CLIENT_PORT, SERVER_PORT, 0, info(acked=12, received=1, data_segs_in=0, sent=10))]
    [again] = backend.sample().closed
    assert (again.pid, again.bytes_sent) == (None, 10)


def test_udp_and_unknown_states(crafted) -> None:
    backend, dumper, _ = crafted
    dumper.udp = [record(7, 5353, 0, 100, dst=bytes(16)), record(1, 40001, 53, 200)]
    dumper.tcp = [record(13, 9999, 0, 300, info(), dst=bytes(16))]  # BOUND_INACTIVE: not asked for
    rows = backend.sample().sockets
    assert [(s.protocol, s.state, s.key) for s in rows] == [
        ("UDP", "NONE", ("UDP", "127.0.0.1", 5353, None, None, 100)),
        ("UDP", "NONE", ("UDP", "127.0.0.1", 40001, "127.0.0.1", 53)),
    ]
    assert all(s.bytes_sent is None and s.pid == os.getpid() for s in rows)


def test_ipv4_mapped_key_in_dump_and_destroy_event(crafted) -> None:
    backend, dumper, listener = crafted
    mapped = record(1, CLIENT_PORT, SERVER_PORT, 100, info(acked=11, received=0, sent=10),
                    family=socket.AF_INET6, src=V4_MAPPED, dst=V4_MAPPED)
    dumper.dump = lambda family, protocol, ext, states, known=None: (
        [mapped] if (family, protocol) == (socket.AF_INET6, socket.IPPROTO_TCP) else [])
    [row] = backend.sample().sockets
    key = ("TCP", "::ffff:127.0.0.1", CLIENT_PORT, "::ffff:127.0.0.1", SERVER_PORT)
    assert (row.key, row.family, row.bytes_sent) == (key, "IPv6", 10)
    listener.events = [mapped._replace(state=7, inode=0, counters=TcpCounters(12, 0, 0, 10, 0))]
    [closed] = backend.sample().closed
    assert closed.key == key and closed.pid == os.getpid()


def test_without_root_other_users_sockets_make_attribution_incomplete(crafted, monkeypatch) -> None:
    backend, dumper, _ = crafted
    monkeypatch.setattr(linux, "is_privileged", lambda: False)
    dumper.tcp = [record(1, CLIENT_PORT, SERVER_PORT, 100, info())]
    backend.sample()
    assert backend.status().attribution_complete
    dumper.tcp.append(record(1, 40002, SERVER_PORT, 999, info(), uid=os.geteuid() + 1))
    snap = backend.sample()
    other = by_key(snap.sockets)[("TCP", "127.0.0.1", 40002, "127.0.0.1", SERVER_PORT)]
    assert other.pid is None
    st = backend.status()
    assert not st.attribution_complete
    assert any("without root" in w and "run as root" in w for w in st.warnings)


# -- which side opened: from the socket's own counters (tcpbytes.opened_actively)


@pytest.mark.parametrize(
    "state, counters, expected",
    [
        (2, info(), True),  # SYN_SENT
        (3, info(), False),  # SYN_RECV
        (1, info(acked=1001, sent=1000), True),  # ESTABLISHED, idle: the SYN is the extra one
        (1, info(acked=1000, sent=1000), False),
        (1, info(acked=1, sent=0), True),  # nothing sent yet
        (1, info(acked=0, sent=0), False),
        (1, info(acked=900, sent=1000, unacked=2), None),  # data in flight: cannot tell yet
        (1, info(acked=1001, sent=1100, retrans=100), True),  # retransmissions are not payload
        (8, info(acked=10, sent=10), False),  # CLOSE_WAIT: our FIN not sent
        (5, info(acked=12, sent=10), True),  # FIN_WAIT2: SYN + our FIN
        (6, info(acked=11, sent=10), False),  # TIME_WAIT: our FIN only
        (7, info(acked=1002, sent=1000), True),  # CLOSE (destroy event), graceful
        (7, info(acked=1000, sent=1000), False),  # CLOSE, our FIN never acknowledged
        (7, info(acked=1001, sent=1000), None),  # CLOSE: passive graceful or active without FIN
        (1, TcpCounters(1001, 0, 0, None, None, 0), None),  # kernel < 4.19
    ],
)
def test_opened_actively_reads_the_syn_from_the_counters(state, counters, expected) -> None:
    from netmond.backends.tcpbytes import opened_actively

    assert opened_actively(counters, state) is expected


def test_server_without_listener_counts_exactly(crafted) -> None:
    # The socat case: the listener closed before the transfer; the
    # accepted socket's SYN side comes from its counters, not the listener.
    backend, dumper, listener = crafted
    dumper.tcp = [record(1, SERVER_PORT, CLIENT_PORT, 200, info(acked=333_333, sent=333_333), cookie=21)]
    [row] = backend.sample().sockets
    assert row.bytes_sent == 333_333
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, info(acked=333_334, received=1, sent=333_333),
                              cookie=21)]
    [closed] = backend.sample().closed
    assert (closed.key, closed.bytes_sent, closed.bytes_received) == (("TCP", 21), 333_333, 0)


def test_undecided_side_counts_low_then_settles_upwards(crafted) -> None:
    backend, dumper, _ = crafted
    dumper.tcp = [record(1, SERVER_PORT, CLIENT_PORT, 200, info(acked=5000, sent=9000, unacked=3), cookie=22)]
    assert backend.sample().sockets[0].bytes_sent == 4999  # in flight: maybe the active side
    dumper.tcp = [record(1, SERVER_PORT, CLIENT_PORT, 200, info(acked=9000, sent=9000), cookie=22)]
    assert backend.sample().sockets[0].bytes_sent == 9000  # nothing in flight: passive, settled
    dumper.tcp = [record(1, SERVER_PORT, CLIENT_PORT, 200, info(acked=9500, sent=9600, unacked=1), cookie=22)]
    assert backend.sample().sockets[0].bytes_sent == 9500  # kept


# -- keys: the kernel's socket cookie ----------------------------------------------


def test_a_reused_four_tuple_is_a_new_key_with_its_own_close(crafted) -> None:
    backend, dumper, listener = crafted
    dumper.tcp = [record(1, CLIENT_PORT, SERVER_PORT, 100, info(acked=1201, sent=1200), cookie=31)]
    first = backend.sample().sockets[0]
    listener.events = [record(7, CLIENT_PORT, SERVER_PORT, 0, info(acked=1202, sent=1200), cookie=31)]
    dumper.tcp = [record(6, CLIENT_PORT, SERVER_PORT, 0, None, cookie=31)]  # its TIME_WAIT remnant
    snap = backend.sample()
    assert [c.key for c in snap.closed] == [first.key] and snap.sockets == []
    # The same 4-tuple, another socket (SO_REUSEADDR): its own key and close.
    dumper.tcp = [record(1, CLIENT_PORT, SERVER_PORT, 100, info(acked=50_001, sent=50_000), cookie=32)]
    second = backend.sample().sockets[0]
    assert second.key == ("TCP", 32) != first.key and second.bytes_sent == 50_000
    listener.events = [record(7, CLIENT_PORT, SERVER_PORT, 0, info(acked=1_050_002, sent=1_050_000), cookie=32)]
    dumper.tcp = []
    [closed] = backend.sample().closed
    assert (closed.key, closed.bytes_sent, closed.pid) == (second.key, 1_050_000, os.getpid())


# -- short connections: accepted ones are their listener's -------------------------


def test_short_accepted_connection_is_its_listeners(crafted) -> None:
    backend, dumper, listener = crafted
    dumper.tcp = [record(10, SERVER_PORT, 0, 300, info(), dst=bytes(16), cookie=40)]
    backend.sample()
    listener.events = [
        # server side (passive: graceful close reads SYN-less) and client side
        record(7, SERVER_PORT, CLIENT_PORT, 0, info(acked=1001, received=101, data_segs_in=1, sent=1000), cookie=41),
        record(7, CLIENT_PORT, SERVER_PORT, 0, info(acked=102, received=1001, data_segs_in=1, sent=100), cookie=42),
    ]
    closed = by_key(backend.sample().closed)
    server, client = closed[("TCP", 41)], closed[("TCP", 42)]
    assert (server.pid, server.process_name, server.bytes_sent, server.bytes_received) == (
        os.getpid(), MY_NAME, 1000, 100)
    assert (client.pid, client.process_name, client.bytes_sent, client.bytes_received) == (None, None, 100, 1000)
    assert client.user  # the uid is known


def test_short_connection_of_a_shared_listener_has_its_name_not_a_pid(crafted) -> None:
    backend, dumper, listener = crafted
    backend._owners.shared.add(300)  # as if forked workers held it too
    dumper.tcp = [record(10, SERVER_PORT, 0, 300, info(), dst=bytes(16), cookie=50)]
    backend._owners.refresh({300})
    backend._owners.shared.add(300)
    backend.sample()
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, info(acked=11, received=6, data_segs_in=1, sent=10),
                              cookie=51)]
    [closed] = backend.sample().closed
    assert (closed.pid, closed.process_name) == (None, MY_NAME)


def test_accept_queue_socket_closed_before_its_process_took_it_is_its_listeners(crafted) -> None:
    backend, dumper, listener = crafted
    dumper.tcp = [record(10, SERVER_PORT, 0, 300, info(), dst=bytes(16), cookie=60),
                  # accepted by the kernel, not yet by the process: no file, no inode
                  record(1, SERVER_PORT, CLIENT_PORT, 0, info(acked=0, received=100, data_segs_in=1), cookie=61)]
    [row] = [s for s in backend.sample().sockets if s.key == ("TCP", 61)]
    assert row.pid is None
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, info(acked=501, received=101, data_segs_in=1, sent=500),
                              cookie=61)]
    [closed] = backend.sample().closed
    assert (closed.pid, closed.process_name, closed.bytes_sent, closed.bytes_received) == (
        os.getpid(), MY_NAME, 500, 100)


def test_request_sockets_of_handshakes_in_progress_are_not_rows(crafted) -> None:
    backend, dumper, _ = crafted
    dumper.tcp = [record(3, SERVER_PORT, CLIENT_PORT, 0, None, cookie=70)]  # SYN_RECV, no socket yet
    assert backend.sample().sockets == []


def test_remnant_of_a_never_dumped_socket_has_its_own_cookie_and_is_still_hidden(crafted) -> None:
    # The kernel makes a cookie when first asked: a socket never dumped had
    # none when its TIME_WAIT remnant was made, so the remnant's differs.
    backend, dumper, listener = crafted
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, info(acked=1201, received=101, data_segs_in=1,
                                                                   sent=1200), cookie=80)]
    dumper.tcp = [record(6, SERVER_PORT, CLIENT_PORT, 0, None, cookie=81)]  # same tick
    snap = backend.sample()
    assert [c.key for c in snap.closed] == [("TCP", 80)] and snap.sockets == []
    assert backend.sample().sockets == []  # and later ticks


def test_remnant_listed_before_its_destroy_event_is_the_row_the_event_ends(crafted) -> None:
    backend, dumper, listener = crafted
    dumper.tcp = [record(6, SERVER_PORT, CLIENT_PORT, 0, None, cookie=91)]
    [remnant] = backend.sample().sockets
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, info(acked=1201, received=101, data_segs_in=1,
                                                                   sent=1200), cookie=90)]
    snap = backend.sample()
    assert [(c.key, c.bytes_sent) for c in snap.closed] == [(remnant.key, 1200)] and snap.sockets == []
