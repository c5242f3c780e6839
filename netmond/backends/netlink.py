"""NETLINK_SOCK_DIAG wire format: build inet_diag requests, parse replies.

Pure functions over bytes, no sockets, so that unit tests can feed them
crafted buffers. The socket I/O lives in `sockdiag.py`.

A reply buffer is a sequence of netlink messages, each 4-byte aligned:

    nlmsghdr (16 B)   len u32, type u16, flags u16, seq u32, pid u32
    inet_diag_msg (72 B)
        0 family u8, 1 state u8, 2 timer u8, 3 retrans u8,
        4 sport be16, 6 dport be16, 8 src[16], 24 dst[16], 40 ifindex u32,
        44 cookie u64, 52 expires u32, 56 rqueue u32, 60 wqueue u32,
        64 uid u32, 68 inode u32
    rtattrs           len u16, type u16, payload; each 4-byte aligned

The only attribute read is INET_DIAG_INFO (struct tcp_info). Its length
depends on the kernel, so every counter is read only if the attribute is long
enough to hold it: an old kernel gives None, never an invented number.

Speed matters (10,000 sockets per tick, most of them idle), hence
precompiled `struct.Struct` objects, `unpack_from` on the receive buffer,
unchanged sockets recognised by a signature (state, uid, inode and the
tcp_info counters as one byte string) before any decoding (`RawRecords`),
one unpack per changed socket that reads every field that matters (the
attribute layout of a dump's sockets is learned once: `_Layout`), and
NamedTuples built with tuple.__new__ rather than objects with an __init__
per socket.
Replies to TCPDIAG_GETSOCK (the request that lists TCP sockets of both
families at once) are the same messages with that type.
"""

from __future__ import annotations

import operator
import os
import socket
import struct
import sys
from typing import Callable, NamedTuple

# --- constants from the kernel's uapi headers -----------------------------
NETLINK_SOCK_DIAG = 4
#: The request before SOCK_DIAG_BY_FAMILY (still served, and so answered):
#: TCP sockets of both families in one walk of the kernel's socket tables.
TCPDIAG_GETSOCK = 18
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH

INET_DIAG_INFO = 2  # attribute type, and idiag_ext bit (1 << (2 - 1))
INET_DIAG_EXT_INFO = 1 << (INET_DIAG_INFO - 1)

#: Multicast groups of NETLINK_SOCK_DIAG (enum sknetlink_groups).
SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET6_TCP_DESTROY = 3
#: bind() takes a bit mask of groups: bit (group - 1).
DESTROY_GROUPS_MASK = (1 << (SKNLGRP_INET_TCP_DESTROY - 1)) | (1 << (SKNLGRP_INET6_TCP_DESTROY - 1))

#: Kernel TCP states (include/net/tcp_states.h), psutil/ss spelling.
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
}
TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_SYN_RECV = 3
TCP_FIN_WAIT2 = 5
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8
TCP_LAST_ACK = 9
TCP_LISTEN = 10
TCP_CLOSING = 11
#: Bits 1..11: every real TCP state. Bit 12 (NEW_SYN_RECV) is folded into
#: SYN_RECV by the kernel; bit 13 (BOUND_INACTIVE, 6.5+) lists sockets that are
#: merely bound, which are not connections.
ALL_STATES_MASK = sum(1 << s for s in TCP_STATES)

# --- layouts -----------------------------------------------------------------
NLMSGHDR = struct.Struct("=IHHII")
NLMSG_ERRNO = struct.Struct("=i")
RTATTR = struct.Struct("=HH")
#: inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid
#: (48 bytes of zeros: no filtering on ports/addresses/interface/cookie).
INET_DIAG_REQ_V2 = struct.Struct("=BBBxI48x")
DIAG_MSG_LEN = 72
_HDR_LEN = NLMSGHDR.size
#: inet_diag_req (the request before v2): family, src_len, dst_len, ext,
#: inet_diag_sockid (48 bytes of zeros), states, dbs.
INET_DIAG_REQ_COMPAT = struct.Struct("=BBBB48xII")
_PORTS_NEED_SWAP = sys.byteorder == "little"

#: tcp_info offsets (include/uapi/linux/tcp.h).
TCPI_UNACKED = 24  # u32: segments sent and not yet acknowledged (packets_out)
TCPI_BYTES_ACKED = 120  # u64, 4.1+; then bytes_received u64 at 128
TCPI_DATA_SEGS_IN = 152  # u32, 4.6+
TCPI_BYTES_SENT = 200  # u64, 4.19+; then bytes_retrans u64 at 208
#: Reading everything at once when the kernel is recent enough (one call):
#: unacked, [23 u32 fields], bytes_acked, bytes_received, [segs_out, segs_in,
#: notsent, min_rtt], data_segs_in, [data_segs_out, 32 bytes, delivered,
#: delivered_ce], bytes_sent, bytes_retrans. The first value (unacked) goes
#: last in TcpCounters.
_TCPI_ALL = struct.Struct("=I92xQQ16xI44xQQ")
_TCPI_ALL_END = TCPI_UNACKED + _TCPI_ALL.size  # 216
assert _TCPI_ALL_END == 216
_TCPI_ACKED_RECEIVED = struct.Struct("=QQ")
#: A socket's signature ends after tcpi_segs_out and tcpi_segs_in (u32 at 136
#: and 140, 4.2+): see RawRecords.
_TCPI_SIGNED_END = 144
_TCPI_ACKED_RECEIVED_END = TCPI_BYTES_ACKED + _TCPI_ACKED_RECEIVED.size  # 136
_U32 = struct.Struct("=I")
_tuple_new = tuple.__new__


class NetlinkError(OSError):
    """The kernel answered a request with NLMSG_ERROR (errno), or garbage."""


class TcpCounters(NamedTuple):
    """The raw byte counters of one tcp_info; None where the kernel is too old.

    Raw means as the kernel counts them: bytes_acked includes the SYN and FIN
    sequence numbers, bytes_received the peer's FIN (see tcpbytes.py).
    """

    bytes_acked: int
    bytes_received: int
    data_segs_in: int | None  # segments that carried payload (4.6+)
    bytes_sent: int | None  # payload transmitted, retransmissions included (4.19+)
    bytes_retrans: int | None  # retransmitted payload (4.19+)
    #: Segments in flight, FIN included (0: everything sent was acknowledged);
    #: tcpbytes.opened_actively reads the SYN side from it. None: not read.
    unacked: int | None = None


class DiagSocket(NamedTuple):
    """One inet_diag_msg, decoded only as far as cheap (addresses stay raw)."""

    family: int  # socket.AF_INET | socket.AF_INET6
    state: int  # kernel TCP state number (UDP: 7 unconnected, 1 connected)
    local_port: int
    remote_port: int
    local_addr: bytes  # 16 raw bytes; IPv4 uses the first 4
    remote_addr: bytes
    uid: int
    inode: int  # 0 for TIME_WAIT, SYN_RECV request sockets and destroy events
    counters: TcpCounters | None  # None: no (long enough) INET_DIAG_INFO
    #: The kernel's id of this socket, unique while it lives (never reused
    #: in a boot); 0 where unknown. linux.py keys its per-socket reuse on it.
    cookie: int = 0


def build_dump_request(family: int, protocol: int, ext: int, states: int, seq: int) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for every socket of (family, protocol)."""
    body = INET_DIAG_REQ_V2.pack(family, protocol, ext, states)
    return NLMSGHDR.pack(_HDR_LEN + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def build_tcp_dump_request(ext: int, states: int, seq: int) -> bytes:
    """A TCPDIAG_GETSOCK dump request: every TCP socket, IPv4 and IPv6 at once.

    One request instead of one per family halves the kernel's work on a host
    with few sockets: each dump walks every bucket of the TCP hash table
    (262,144 on a 24 GB machine), listing a socket or not, which costs
    ~1.2 ms whatever the number of sockets.
    """
    body = INET_DIAG_REQ_COMPAT.pack(0, 0, 0, ext, states, 0)
    return NLMSGHDR.pack(_HDR_LEN + len(body), TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_tcp_info(buf, start: int, end: int) -> TcpCounters | None:
    """Counters from the tcp_info occupying buf[start:end]; None if too short."""
    length = end - start
    if length >= _TCPI_ALL_END:
        return _counters(_TCPI_ALL.unpack_from(buf, start + TCPI_UNACKED))
    if length < _TCPI_ACKED_RECEIVED_END:
        return None  # kernel < 4.1: no byte counters at all
    acked, received = _TCPI_ACKED_RECEIVED.unpack_from(buf, start + TCPI_BYTES_ACKED)
    (unacked,) = _U32.unpack_from(buf, start + TCPI_UNACKED)
    segs_in = None
    if length >= TCPI_DATA_SEGS_IN + 4:
        (segs_in,) = _U32.unpack_from(buf, start + TCPI_DATA_SEGS_IN)
    return TcpCounters(acked, received, segs_in, None, None, unacked)


def _counters(values: tuple) -> TcpCounters:
    """TcpCounters from _TCPI_ALL's values (unacked first, moved last)."""
    return _tuple_new(TcpCounters, values[1:] + values[:1])


class RawRecords:
    """The records of a dump by cookie, with the signatures they were decoded from.

    `parse_messages` reads and updates `entries` in place (one dict kept
    from dump to dump, not a new one filled each time): a socket whose
    signature is what it was in the previous dump comes back as that very
    record object, recognised before any decoding. Callers then tell
    unchanged sockets by identity, and a dump of idle sockets leaves almost
    nothing new alive (no garbage collection running over and over).
    `rotate(records)` after each complete dump drops the entries of sockets
    it did not list, when its counts say there are some.

    A socket with a full tcp_info is keyed by its cookie (the kernel's id of
    that socket, which never changes its addresses, ports or family) and
    signed by its state, uid and inode, and one byte string of its message:
    tcp_info's bytes_acked, bytes_received, segs_out and segs_in (24 bytes).
    The kernel moves segs_out with every segment it sends (retransmissions
    included: bytes_sent and bytes_retrans move with it, in the same
    function) and segs_in with every segment it takes in (data_segs_in and
    the acknowledgements that change unacked move with it), so no counter
    that is read changes while those four stay; closing moves the state.
    What is left out moves on an idle socket (inet_diag_msg's timer, expiry
    and queues, tcp_info's "ms since last ..." fields) or is not read (a
    listener's accept backlog, which tcp_info reports as unacked). A byte
    string, not unpacked fields: one object a socket to keep instead of
    twenty-odd, and the comparison is one memcmp. `layouts`: where the
    counters are, by message length, learned from the sockets with a full
    tcp_info (an IPv6 socket carries one attribute more than an IPv4 one,
    INET_DIAG_SKV6ONLY; a few kinds at most: bounded). A message is taken to
    have the layout of its length, as it had at the last dump.

    Sockets without byte counters (TIME_WAIT remnants, request sockets) are
    signed by their message length and state (nothing else of theirs moves)
    and kept apart (`short_*`): a dump that leaves TIME_WAIT out (a state
    filter) does not make the next one that lists them decode them again.

    `shared`: one object for each address, port and uid value the records
    carry (a host has few addresses and ports compared with its sockets:
    100 bytes a socket less to keep).

    An entry of `entries` is one tuple: the parser's four fields (signature,
    state, owner, record), then CALLER_FIELDS that the caller keeps there
    about the same socket (LinuxBackend: the record it built a sample from,
    and that sample). The parser carries them over when it decodes the
    socket anew (the caller tells a stale one by its record), and an entry
    that goes with caller fields set (its socket no longer full, or no longer
    listed) is put in `superseded` for the caller to take. One table and one
    tuple a socket, not two of each: 10 MB less at 100,000 sockets.
    """

    __slots__ = ("entries", "short", "listed", "short_listed", "rotations", "layouts", "shared", "superseded")

    def __init__(self) -> None:
        self.entries: dict[int, tuple] = {}
        #: Entries dropped with caller fields set, since the caller last emptied it.
        self.superseded: list[tuple] = []
        self.short: dict[int, tuple] = {}
        # Entries the dump in progress listed (recognised or made): when they
        # are all there are, no socket is gone and rotate() has nothing to drop.
        self.listed = 0
        self.short_listed = 0
        self.rotations = 0
        self.layouts: dict[int, _Layout] = {}
        self.shared: dict[object, object] = {}

    def get(self, cookie: int) -> DiagSocket | None:
        """The record of `cookie` in the previous dump, if it had one."""
        known = self.entries.get(cookie) or self.short.get(cookie)
        return known[3] if known is not None else None

    def rotate(self, records: list[DiagSocket], every_state: bool = True) -> set[int] | None:
        """The dump is complete (`records`: what it listed): the entries of
        sockets it did not list go. Looked for when the counts say there are
        some, and every ROTATIONS_BETWEEN_CHECKS dumps (a socket listed
        twice in one dump, which the kernel may do when it moves, could hide
        one). Returns the cookies it listed when it looked (None when it did
        not): the caller's own tables of the same sockets are looked over
        then too, with the same set (one pass over the dump a tick).

        every_state=False: it left some states out (TIME_WAIT): the sockets
        without counters of the dumps before are kept.
        """
        self.rotations += 1
        due = self.rotations >= ROTATIONS_BETWEEN_CHECKS
        listed: set[int] | None = None
        if due or self.listed != len(self.entries):
            listed = set(map(_COOKIE_OF, records))
            for cookie in self.entries.keys() - listed:
                self.supersede(self.entries.pop(cookie))
        if every_state and (due or self.short_listed != len(self.short)):
            listed = set(map(_COOKIE_OF, records)) if listed is None else listed
            for cookie in self.short.keys() - listed:
                del self.short[cookie]
        if due:
            self.rotations = 0
        self.listed = self.short_listed = 0
        return listed

    def supersede(self, entry: tuple) -> None:
        """An entry goes: kept in `superseded` if the caller's fields are set."""
        if entry[_PARSER_FIELDS] is not None:
            self.superseded.append(entry)

    def discard(self) -> None:
        """The dump failed: what it made stays (each entry is its socket's
        latest signature and record), the counts start again."""
        self.listed = self.short_listed = 0


class _Layout(NamedTuple):
    """Where a dump's messages keep their attribute headers and byte counters.

    `unpack` reads, in one call, a whole message's raw fields (see
    `_SHORT_FIELDS` for the first eleven; then each attribute header up to
    tcp_info's as one u32; then tcp_info's counters, unacked first) for
    messages `length` bytes long (the length of the message it was learned
    from). Such a message has this layout when its headers, fields
    [HEADERS_AT:counters_at], are `headers`.
    """

    unpack: Callable[..., tuple]
    size: int
    headers: tuple
    counters_at: int
    length: int
    #: Where a socket's counters are in its message: its signature (see RawRecords).
    counters_start: int
    counters_end: int


#: The raw fields of every message, in one call: nlmsghdr's length and type
#: (not flags, seq, pid), then inet_diag_msg's family, state, sport, dport,
#: src, dst, cookie, uid, inode (not timer, retrans, ifindex, expires,
#: queues, which move on idle sockets). The ports are big-endian in an
#: otherwise native struct: read native, swapped on little-endian hosts. The
#: cookie (two native u32) is read as one native u64: unique either way.
_SHORT_FIELDS = "IH10xBB2xHH16s16s4xQ12xII"
_SHORT = struct.Struct("=" + _SHORT_FIELDS)
assert _SHORT.size == _HDR_LEN + DIAG_MSG_LEN
_HEADERS_AT = 11  # index of the first attribute header in a layout's fields
#: Messages shorter than this cannot hold a tcp_info with byte counters: their
#: short raw fields say all that is read of them (TIME_WAIT, request sockets).
_SHORT_ONLY_BELOW = _HDR_LEN + DIAG_MSG_LEN + 4 + _TCPI_ACKED_RECEIVED_END
_SEQ = struct.Struct("=8xI")
#: What is read first of every message: length, state, cookie, and uid and
#: inode as one number. (NLMSG_DONE and NLMSG_ERROR are shorter than any
#: socket's message, or carry a cookie of 0, which no record is kept under:
#: never taken for a known socket.)
_FIRST = struct.Struct("=I13xB42xQ12xQ")
assert _FIRST.size == _HDR_LEN + DIAG_MSG_LEN
_MAX_LAYOUTS = 8
#: RawRecords.shared is emptied beyond this many values (it then only fills again).
_MAX_SHARED = 1 << 17
#: RawRecords.rotate looks for unlisted entries at least this often.
ROTATIONS_BETWEEN_CHECKS = 60
#: RawRecords entries: the parser's fields, then the caller's (see RawRecords).
_PARSER_FIELDS = 4
CALLER_FIELDS = 4
_NO_CALLER_FIELDS = (None,) * CALLER_FIELDS
_COOKIE_OF = operator.itemgetter(9)  # DiagSocket.cookie


def _layout_of(buf, off: int, attr: int, msg_end: int) -> _Layout | None:
    """The layout of the message at `off` if its tcp_info is complete, else None."""
    fmt, headers, at = "=" + _SHORT_FIELDS, [], attr
    while attr + 4 <= msg_end:
        alen, atype = RTATTR.unpack_from(buf, attr)
        if alen < 4:
            return None
        fmt += f"{attr - at}xI"
        headers.append(_U32.unpack_from(buf, attr)[0])
        at = attr + 4
        if atype == INET_DIAG_INFO:
            if attr + alen > msg_end or alen - 4 < _TCPI_ALL_END:
                return None
            fmt += f"{TCPI_UNACKED}x" + _TCPI_ALL.format.lstrip("=")
            layout = struct.Struct(fmt)
            info = attr + 4 - off
            return _Layout(layout.unpack_from, layout.size, tuple(headers), _HEADERS_AT + len(headers),
                           msg_end - off, info + TCPI_BYTES_ACKED, info + _TCPI_SIGNED_END)
        attr += (alen + 3) & ~3
    return None


def parse_messages(buf, seq: int | None = None, known: RawRecords | None = None) -> tuple[list[DiagSocket], bool]:
    """Decode one receive buffer of sock_diag messages.

    Returns (sockets, done): `done` is True once NLMSG_DONE was seen (the end
    of a dump; nothing after it is read). Messages whose sequence number is
    not `seq` (leftovers of an earlier, interrupted dump) are skipped; with
    seq=None (multicast destroy events, which carry seq 0) all are taken.
    Raises NetlinkError for NLMSG_ERROR with a non-zero errno, or for a
    message whose length runs past the buffer.

    `known`: the records of the previous dump (see RawRecords); a socket
    whose signature is unchanged is returned as its known record. That
    shortcut checks the sequence number of the buffer's first message only:
    the kernel writes each datagram of a dump in one go, for one request.
    """
    # The hot loop of the backend. Most sockets of a busy host are idle: each
    # is recognised by one unpack (length, state, cookie), one dict lookup
    # and two byte-string comparisons (see RawRecords), before any decoding.
    # Entries are (counters, state, uid and inode, record); short ones
    # (length, state, None, record).
    if type(buf) is not bytes:
        buf = bytes(buf)  # slices of bytes are bytes: the signatures below
    end = len(buf)
    fast = known is not None and end >= _HDR_LEN and (seq is None or _SEQ.unpack_from(buf)[0] == seq)
    if not fast:
        return _decode_messages(buf, 0, seq, known, [], recognise=False)
    assert known is not None
    sockets: list[DiagSocket] = []
    append = sockets.append
    first = _FIRST.unpack_from
    layouts = known.layouts
    previous, short_previous = known.entries.get, known.short.get
    listed = short_listed = 0
    # The layout tried first: the last one a message had (dumps come in runs).
    layout = next(iter(layouts.values()), None)
    length_of_layout = layout.length if layout is not None else -1
    off = 0
    while off + _FIRST.size <= end:
        length, state, cookie, owner = first(buf, off)
        if length != length_of_layout and length in layouts:
            layout = layouts[length]
            length_of_layout = length
        if length == length_of_layout:
            assert layout is not None
            same = previous(cookie)
            if same is not None and same[1] == state and same[2] == owner and off + length <= end and (
                same[0] == buf[off + layout.counters_start:off + layout.counters_end]
            ):
                append(same[3])
                listed += 1
                off += (length + 3) & ~3
                continue
        elif length < _SHORT_ONLY_BELOW:
            same = short_previous(cookie)
            if same is not None and same[0] == length and same[1] == state and off + length <= end:
                append(same[3])
                short_listed += 1
                off += (length + 3) & ~3
                continue
        break  # a socket that changed, a new one, or the end of the dump
    known.listed += listed
    known.short_listed += short_listed
    return _decode_messages(buf, off, seq, known, sockets, recognise=True)


def _decode_messages(
    buf: bytes, off: int, seq: int | None, known: RawRecords | None, sockets: list[DiagSocket], recognise: bool
) -> tuple[list[DiagSocket], bool]:
    """parse_messages from `off` on, decoding each message (`sockets`: those
    before). `recognise`: known sockets may be recognised by their signature
    (the buffer's sequence number is the dump's)."""
    append = sockets.append
    header_unpack = NLMSGHDR.unpack_from
    short_unpack = _SHORT.unpack_from
    new, diag_socket, tcp_counters = _tuple_new, DiagSocket, TcpCounters
    swap = _PORTS_NEED_SWAP
    full = _SHORT.size
    end = len(buf)
    layouts = known.layouts if known is not None else {}
    layout = next(iter(layouts.values()), None)
    share = None
    listed = short_listed = 0
    if known is not None:
        entries, short = known.entries, known.short
        previous, short_previous = entries.get, short.get
        if len(known.shared) > _MAX_SHARED:
            known.shared.clear()
        share = known.shared.setdefault
    first = _FIRST.unpack_from
    while off + _HDR_LEN <= end:
        if recognise and off + _FIRST.size <= end:
            # As in parse_messages: an unchanged socket after a changed one.
            # Repeated, not a function: a call per message would cost the
            # hot loop ~0.7 ms a tick at 10,000 sockets.
            length, state, cookie, owner = first(buf, off)
            lay = layouts.get(length)
            if lay is not None:
                same = previous(cookie)
                if same is not None and same[1] == state and same[2] == owner and off + length <= end and (
                    same[0] == buf[off + lay.counters_start:off + lay.counters_end]
                ):
                    append(same[3])
                    listed += 1
                    off += (length + 3) & ~3
                    continue
            elif length < _SHORT_ONLY_BELOW:
                same = short_previous(cookie)
                if same is not None and same[0] == length and same[1] == state and off + length <= end:
                    append(same[3])
                    short_listed += 1
                    off += (length + 3) & ~3
                    continue
        raw = None
        if layout is not None and off + layout.size <= end:
            raw = layout.unpack(buf, off)
            if raw[0] != layout.length:  # another kind of socket
                other = layouts.get(raw[0])
                if other is not None and off + other.size <= end:
                    layout, raw = other, other.unpack(buf, off)
                else:
                    raw = None  # TIME_WAIT, no tcp_info, or not seen yet
        if raw is None and off + full <= end:
            raw = short_unpack(buf, off)
        if raw is not None:
            length, mtype = raw[0], raw[1]
            mseq = _SEQ.unpack_from(buf, off)[0] if seq is not None else None
        else:  # too short for a socket: NLMSG_DONE, NLMSG_ERROR
            length, mtype, _flags, mseq, _pid = header_unpack(buf, off)
        if length < _HDR_LEN or off + length > end:
            raise NetlinkError(f"malformed netlink message (length {length} at offset {off} of {end})")
        if seq is not None and mseq != seq:
            pass  # stale reply of an earlier request
        elif mtype == SOCK_DIAG_BY_FAMILY or mtype == TCPDIAG_GETSOCK:
            if length >= full:
                assert raw is not None  # read above: the message holds an inet_diag_msg
                msg_end = off + length
                keep = None  # the signature of this record in the next dump (see RawRecords)
                counters: TcpCounters | None
                if layout is not None and len(raw) > _HEADERS_AT and length == layout.length and (
                    raw[_HEADERS_AT:layout.counters_at] == layout.headers
                ):
                    c = layout.counters_at
                    counters = new(tcp_counters, raw[c + 1:c + 6] + raw[c:c + 1])
                    keep = layout
                else:
                    counters = _walk_attributes(buf, off + full, msg_end)
                    if counters is not None and length not in layouts and len(layouts) < _MAX_LAYOUTS:
                        learned = _layout_of(buf, off, off + full, msg_end)
                        if learned is not None:
                            layout = keep = layouts[length] = learned
                (_len, _type, family, state, sport, dport, src, dst, cookie, uid, inode) = raw[:_HEADERS_AT]
                if swap:
                    sport = ((sport & 0xFF) << 8) | (sport >> 8)
                    dport = ((dport & 0xFF) << 8) | (dport >> 8)
                if share is not None:  # see RawRecords.shared
                    src, dst, sport, dport, uid = share(src, src), share(dst, dst), share(sport, sport), share(
                        dport, dport), share(uid, uid)
                record = new(diag_socket, (family, state, sport, dport, src, dst, uid, inode, counters, cookie))
                if known is not None and cookie:
                    if keep is not None:
                        before = previous(cookie)
                        if before is None:
                            short.pop(cookie, None)  # a socket is full or a remnant, not both
                        entries[cookie] = (buf[off + keep.counters_start:off + keep.counters_end], state,
                                           _FIRST.unpack_from(buf, off)[3], record,
                                           *(_NO_CALLER_FIELDS if before is None else before[_PARSER_FIELDS:]))
                        listed += 1
                    elif counters is None and length < _SHORT_ONLY_BELOW:
                        if cookie not in short:
                            gone = entries.pop(cookie, None)  # the remnant of a full socket: same cookie
                            if gone is not None:
                                known.supersede(gone)
                        short[cookie] = (length, state, None, record)
                        short_listed += 1
                append(record)
        elif mtype == NLMSG_DONE:
            if known is not None:
                known.listed += listed
                known.short_listed += short_listed
            return sockets, True
        elif mtype == NLMSG_ERROR:
            if length < _HDR_LEN + NLMSG_ERRNO.size:
                raise NetlinkError("truncated NLMSG_ERROR")
            (neg_errno,) = NLMSG_ERRNO.unpack_from(buf, off + _HDR_LEN)
            if neg_errno:  # 0 would be a plain acknowledgement
                raise NetlinkError(-neg_errno, f"sock_diag request failed: {os.strerror(-neg_errno)}")
        off += (length + 3) & ~3
    if known is not None:
        known.listed += listed
        known.short_listed += short_listed
    return sockets, False


def _walk_attributes(buf, attr: int, msg_end: int) -> TcpCounters | None:
    """Counters from the INET_DIAG_INFO among the attributes in buf[attr:msg_end];
    None if absent or too short."""
    while attr + 4 <= msg_end:
        alen, atype = RTATTR.unpack_from(buf, attr)
        if alen < 4:
            return None  # malformed attribute: stop, keep what we have
        if atype == INET_DIAG_INFO:
            return parse_tcp_info(buf, attr + 4, min(attr + alen, msg_end))
        attr += (alen + 3) & ~3
    return None


class AddressFormatter:
    """Raw inet_diag addresses -> text, with a cache.

    A machine has few distinct local addresses, and typically few remote ones
    compared with its sockets, so caching the text saves an inet_ntop per
    socket. `by_family[family]` maps the raw 16 bytes (IPv4: 4 bytes then
    zeros) to the text, for hot loops to read inline; `format` fills it.
    Each cache is bounded: it is cleared when it grows past `limit`.
    """

    def __init__(self, limit: int = 65536) -> None:
        self.by_family: dict[int, dict[bytes, str]] = {socket.AF_INET: {}, socket.AF_INET6: {}}
        self._limit = limit

    def format(self, family: int, raw: bytes) -> str:
        """Text form: dotted quad, compressed IPv6, '::ffff:a.b.c.d' if mapped."""
        cache = self.by_family[family]
        text = cache.get(raw)
        if text is None:
            text = socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw)
            if len(cache) >= self._limit:
                cache.clear()
            cache[raw] = text
        return text


#: inet_diag's address of a socket with no remote end (listener, unconnected UDP).
UNSPECIFIED_ADDR = bytes(16)
