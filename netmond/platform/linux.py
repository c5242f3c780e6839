"""Linux: peer credentials (SO_PEERCRED, SO_PEERGROUPS) and glibc's malloc tuning.

SO_PEERCRED gives struct ucred {pid, uid, gid}, and SO_PEERGROUPS (4.13+)
the peer's supplementary groups as the kernel saw them at connect(): that is
what a process started with `sg`, `newgrp` or `setpriv --groups` really
holds, which /etc/group may not say. The decoding is a pure function.
"""

from __future__ import annotations

import errno
import socket
import struct

from ..peercred import PeerCredentials

_UCRED = struct.Struct("=iII")  # pid_t, uid_t, gid_t
# Not in Python's socket module; 59 in asm-generic and on x86 and arm.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_NGROUPS_MAX = 65536
# mallopt's M_MMAP_THRESHOLD, and glibc's default for it.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 128 * 1024


def decode_ucred(raw: bytes, groups_raw: bytes | None = None) -> PeerCredentials:
    """Decode a Linux struct ucred, plus the gid_t array of SO_PEERGROUPS if known.

    With the array, `groups` is the complete set (primary included, so an
    empty supplementary list still means "no other groups"); without it
    `groups` stays empty and in_group() falls back to the user database.
    """
    pid, uid, gid = _UCRED.unpack_from(raw)
    groups: tuple[int, ...] = ()
    if groups_raw is not None:
        count = len(groups_raw) // 4
        groups = tuple(dict.fromkeys((gid, *struct.unpack_from(f"={count}I", groups_raw))))
    return PeerCredentials(uid=uid, gid=gid, pid=pid or None, groups=groups)


def _peer_groups(sock: socket.socket) -> bytes | None:
    """SO_PEERGROUPS: the gid_t array, or None where the kernel does not offer it."""
    size = 64 * 4
    while size <= _NGROUPS_MAX * 4:
        try:
            return sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno != errno.ERANGE:  # ENOPROTOOPT before 4.13
                return None
            size *= 4  # more groups than fit: ask again with room for them
    return None


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    """Credentials of the peer of a connected AF_UNIX socket, or None if unknown."""
    try:
        ucred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        return decode_ucred(ucred, _peer_groups(sock))
    except (OSError, ValueError, struct.error):
        return None


def tune_allocator() -> None:
    """Pin glibc's mmap threshold at its default, 128 KiB.

    Each tick builds and drops a few tables of ~300 KB at 10,000 sockets, and
    a `connections` reply several MB. glibc would raise its threshold to the
    largest block freed, then keep such blocks in its heaps after they are
    freed; pinned, they are returned to the OS (~3 MB less RSS at 10,000
    sockets, more after large replies; bench/steady.py). Not glibc (musl):
    nothing.
    """
    try:
        import ctypes  # here: only the daemon's start needs it

        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass
