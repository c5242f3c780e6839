"""macOS: peer credentials (LOCAL_PEERCRED, LOCAL_PEERPID) and launchd socket activation.

LOCAL_PEERCRED = getsockopt(SOL_LOCAL=0, 1) gives struct xucred
{u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]},
packed as '=IIh2x16I' (the 2x is the padding before the gid array); the pid
comes from LOCAL_PEERPID (0x002). The decoding is a pure function, and
launch_activate_socket takes its libc as an argument, so both are tested on
Linux.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import struct
import sys
from typing import Any

from ..peercred import PeerCredentials

_XUCRED = struct.Struct("=IIh2x16I")
SOL_LOCAL = 0
LOCAL_PEERCRED = 1
LOCAL_PEERPID = 2
XUCRED_VERSION = 0


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


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    """Credentials of the peer of a connected AF_UNIX socket, or None if unknown."""
    try:
        creds = decode_xucred(sock.getsockopt(SOL_LOCAL, LOCAL_PEERCRED, _XUCRED.size))
        try:
            pid = struct.unpack("=i", sock.getsockopt(SOL_LOCAL, LOCAL_PEERPID, 4))[0]
        except OSError:
            pid = None
        return PeerCredentials(uid=creds.uid, gid=creds.gid, pid=pid, groups=creds.groups)
    except (OSError, ValueError, struct.error):
        return None


def tune_allocator() -> None:
    """Nothing to tune: macOS's allocator returns large blocks by itself."""


def _load_libc() -> ctypes.CDLL | None:
    if sys.platform != "darwin":
        return None
    libc_path = ctypes.util.find_library("c")
    return ctypes.CDLL(libc_path) if libc_path else None


def launch_activate_socket(name: str, libc: Any = None) -> list[int]:
    """The descriptors launchd passed us for the plist's Sockets entry `name`;
    [] when launchd did not start us with one, or off macOS.

    `launch_activate_socket(name, int **fds, size_t *cnt)` (macOS 10.10+)
    returns 0 and a malloc'ed fd array (freed here) when launchd started us
    with that Sockets entry, ESRCH/ENOENT otherwise. `libc` is for tests.
    """
    libc = libc if libc is not None else _load_libc()
    func = getattr(libc, "launch_activate_socket", None) if libc is not None else None
    if func is None:
        return []
    func.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.POINTER(ctypes.c_int)),
                     ctypes.POINTER(ctypes.c_size_t)]
    func.restype = ctypes.c_int
    fds = ctypes.POINTER(ctypes.c_int)()
    count = ctypes.c_size_t(0)
    err = func(name.encode(), ctypes.byref(fds), ctypes.byref(count))
    if err != 0 or count.value < 1:
        return []  # not launched by launchd with a Sockets key (ESRCH/ENOENT)
    fd_list = [fds[i] for i in range(count.value)]
    libc.free(fds)
    return fd_list
