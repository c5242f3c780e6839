"""Who is on the other end of a Unix socket: peer credentials per OS (docs/DESIGN.md §7).

Linux: SO_PEERCRED gives struct ucred {pid, uid, gid}, and SO_PEERGROUPS
(4.13+) the peer's supplementary groups as the kernel saw them at connect():
that is what a process started with `sg`, `newgrp` or `setpriv --groups`
really holds, which /etc/group may not say.
macOS: LOCAL_PEERCRED = getsockopt(SOL_LOCAL=0, 1) gives struct xucred
{u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]},
packed as '=IIh2x16I' (the 2x is the padding before the gid array); the pid
comes from LOCAL_PEERPID (0x002). The decoding is a pure function so it is
tested here without a Mac.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import socket
import struct
import sys
from dataclasses import dataclass, field

_UCRED = struct.Struct("=iII")  # pid_t, uid_t, gid_t
# Not in Python's socket module; 59 in asm-generic and on x86 and arm.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_NGROUPS_MAX = 65536
_XUCRED = struct.Struct("=IIh2x16I")
SOL_LOCAL = 0
LOCAL_PEERCRED = 1
LOCAL_PEERPID = 2
XUCRED_VERSION = 0


@dataclass(frozen=True)
class PeerCredentials:
    """The connecting process's identity, as the kernel vouches for it."""

    uid: int
    gid: int
    pid: int | None = None
    groups: tuple[int, ...] = field(default=())

    def in_group(self, gid: int) -> bool:
        """True if gid is the peer's primary or a supplementary group."""
        if gid == self.gid or gid in self.groups:
            return True
        if self.groups:
            return False
        # No group list from the kernel (old Linux): look it up by user name.
        try:
            name = pwd.getpwuid(self.uid).pw_name
            return gid in os.getgrouplist(name, self.gid)
        except (KeyError, OSError):
            return False


def decode_xucred(raw: bytes) -> PeerCredentials:
    """Decode a macOS struct xucred; ValueError if it is not one."""
    if len(raw) < _XUCRED.size:
        raise ValueError(f"xucred too short: {len(raw)} bytes")
    version, uid, ngroups, *groups = _XUCRED.unpack_from(raw)
    if version != XUCRED_VERSION:
        raise ValueError(f"unknown xucred version {version}")
    ngroups = max(0, min(ngroups, 16))
    gids = tuple(groups[:ngroups])
    return PeerCredentials(uid=uid, gid=gids[0] if gids else -1, groups=gids)


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


def _linux_peer_groups(sock: socket.socket) -> bytes | None:
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
        if sys.platform.startswith("linux"):
            ucred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            return decode_ucred(ucred, _linux_peer_groups(sock))
        if sys.platform == "darwin":
            creds = decode_xucred(sock.getsockopt(SOL_LOCAL, LOCAL_PEERCRED, _XUCRED.size))
            try:
                pid = struct.unpack("=i", sock.getsockopt(SOL_LOCAL, LOCAL_PEERPID, 4))[0]
            except OSError:
                pid = None
            return PeerCredentials(uid=creds.uid, gid=creds.gid, pid=pid, groups=creds.groups)
    except (OSError, ValueError, struct.error):
        return None
    return None


def resolve_group(group: str | int | None) -> int | None:
    """A group name or id to a gid; None if unset; KeyError if unknown."""
    if group is None:
        return None
    if isinstance(group, int) or (isinstance(group, str) and group.isdigit()):
        return int(group)
    return grp.getgrnam(group).gr_gid


def is_owner(peer: PeerCredentials | None) -> bool:
    """Root or the user the daemon runs as, by the kernel's word."""
    return peer is not None and peer.uid in (0, os.geteuid())


def may_control(peer: PeerCredentials | None, control_gid: int | None) -> bool:
    """Control rights: root, the daemon's own uid, or the configured group."""
    if peer is None:
        return False
    if is_owner(peer):
        return True
    return control_gid is not None and peer.in_group(control_gid)
