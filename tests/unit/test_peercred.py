"""peercred.py: the peer's credentials as netmond.platform decodes them (Linux
ucred with SO_PEERGROUPS, macOS xucred) and who may control the daemon."""

from __future__ import annotations

import os
import struct

import pytest

from netmond.peercred import PeerCredentials, may_control
from netmond.platform import peer_credentials
from netmond.platform.darwin import decode_xucred
from netmond.platform.linux import decode_ucred


def test_decode_xucred_from_macos_layout():
    # struct xucred { u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]; }
    groups = [20, 12, 61, 79, 80, 81, 98, 33] + [0] * 8
    raw = struct.pack("=IIh2x16I", 0, 501, 8, *groups)
    assert len(raw) == 76
    creds = decode_xucred(raw)
    assert creds.uid == 501 and creds.gid == 20 and creds.groups == tuple(groups[:8])
    assert creds.in_group(80) and not creds.in_group(999)


def test_decode_xucred_rejects_short_and_unknown_versions():
    with pytest.raises(ValueError):
        decode_xucred(b"\x00" * 10)
    with pytest.raises(ValueError):
        decode_xucred(struct.pack("=IIh2x16I", 3, 0, 0, *([0] * 16)))


def test_decode_ucred():
    assert decode_ucred(struct.pack("=iII", 1234, 1000, 1000)) == PeerCredentials(1000, 1000, 1234)


def test_control_rights():
    me = os.geteuid()
    assert may_control(PeerCredentials(0, 0), None)
    assert may_control(PeerCredentials(me, 0), None)
    stranger = PeerCredentials(4242, 4242, groups=(4242, 555))
    assert not may_control(stranger, None) or me == 4242
    assert may_control(stranger, 555)
    assert not may_control(None, 555)


def test_decode_ucred_with_peer_groups_is_the_complete_set():
    ucred = struct.pack("=iII", 1234, 65534, 65534)
    creds = decode_ucred(ucred, struct.pack("=2I", 100, 1001))
    assert creds.groups == (65534, 100, 1001)
    assert creds.in_group(1001) and not creds.in_group(4242)
    # Known to hold no supplementary group: the user database is not consulted.
    assert decode_ucred(ucred, b"").groups == (65534,)
    assert not decode_ucred(ucred, b"").in_group(0)


def test_peer_credentials_of_a_real_socketpair():
    import socket

    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        creds = peer_credentials(a)
    assert creds is not None
    assert (creds.uid, creds.gid, creds.pid) == (os.geteuid(), os.getegid(), os.getpid())
    assert set(os.getgroups()) <= set(creds.groups) | {creds.gid}
