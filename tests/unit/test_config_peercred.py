"""Config validation messages, the daemon's flags as config keys, and
peer-credential decoding (netmond.platform, incl. macOS xucred)."""

from __future__ import annotations

import os
import struct

import pytest

from netmond.config import Config, ConfigError, build_config, load_config
from netmond.main import build_parser, config_overrides
from netmond.peercred import PeerCredentials, may_control
from netmond.platform import peer_credentials
from netmond.platform.darwin import decode_xucred
from netmond.platform.linux import decode_ucred


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "n.toml"
    f.write_text('interval = 2\nhistory_seconds = 600\n[netmond]\ninclude_loopback = true\n')
    cfg = load_config(str(f), interval=0.5)
    assert cfg.interval == 0.5 and cfg.history_seconds == 600 and cfg.include_loopback is True


@pytest.mark.parametrize("kw,needle", [
    ({"interval": 0}, "interval must be between"),
    ({"interval": "fast"}, "interval must be a number"),
    ({"history_seconds": 1.5}, "whole number"),
    ({"backend": "bpf"}, "backend must be one of"),
    ({"log_level": "loud"}, "log_level"),
    ({"metrics_listen": "9100"}, "HOST:PORT"),
    ({"socket": "/tmp/" + "x" * 200}, "too long"),
    ({"bogus_key": 1}, "unknown setting 'bogus_key'"),
])
def test_invalid_values_have_clear_messages(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config({}, **kw)


def test_every_daemon_flag_is_its_config_key():
    argv = ["--socket", "/tmp/s.sock", "--interval", "2", "--history-seconds", "60", "--closed-retention", "5",
            "--no-include-loopback", "--backend", "portable", "--socket-group", "0", "--max-clients", "7",
            "--log-level", "debug", "--metrics-listen", "127.0.0.1:9101", "--metrics-textfile", "/tmp/m.prom",
            "--no-ebpf", "--config", "/tmp/n.toml"]
    flags = {a.dest for a in build_parser()._actions if a.dest not in ("help", "version", "config")}
    overrides = config_overrides(build_parser().parse_args(argv))
    assert set(overrides) == flags and flags <= set(Config.__dataclass_fields__)
    cfg = build_config(**overrides)
    assert (cfg.interval, cfg.history_seconds, cfg.include_loopback, cfg.ebpf, cfg.max_clients) == (2, 60, False, False, 7)
    assert config_overrides(build_parser().parse_args([])) == {}  # nothing given: the file and defaults decide


def test_bad_toml_names_the_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("interval = = 2")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(str(f))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.toml"))


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
