"""Fakes for the Linux backend's unit tests: netlink messages crafted byte by
byte (as the kernel sends them) and a directory shaped like /proc."""

from __future__ import annotations

import os
import socket
import struct

from netmond.backends import netlink
from netmond.backends.netlink import TcpCounters

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

def info(acked: int = 0, received: int = 0, data_segs_in: int = 0, sent: int = 0, retrans: int = 0,
                 unacked: int = 0) -> TcpCounters:
    """Raw counters as netlink.parse_messages returns them."""
    return TcpCounters(acked, received, data_segs_in, sent, retrans, unacked)


# -- a fake /proc ----------------------------------------------------------------


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
