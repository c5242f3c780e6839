"""Filter validation and matching, scope classification, address formatting."""

from __future__ import annotations

import pytest

from common.models import Filter, FilterError, classify_scope, connection_scope, format_addr


def row(**kw):
    base = dict(protocol="TCP", family="IPv4", local_ip="10.0.0.2", local_port=50000,
                remote_ip="140.82.112.3", remote_port=443, state="ESTABLISHED", pid=100,
                process_name="Google Chrome Helper", scope="internet")
    base.update(kw)
    return base


ROWS = {
    "chrome": row(),
    "listener": row(process_name="sshd", pid=1, local_ip="0.0.0.0", local_port=22, remote_ip=None,
                    remote_port=None, state="LISTEN", scope=None),
    "udp": row(protocol="UDP", process_name="mDNSResponder", pid=5, local_ip="0.0.0.0", local_port=5353,
               remote_ip=None, remote_port=None, state="NONE", scope=None),
    "lo6": row(family="IPv6", process_name="python3", pid=7, local_ip="::1", local_port=8000,
               remote_ip="::1", remote_port=40000, scope="loopback"),
    "lan": row(process_name="smbd", pid=9, remote_ip="192.168.1.20", remote_port=445, scope="lan",
               state="TIME_WAIT"),
}


def select(**kw):
    flt = Filter.from_wire(kw)
    return sorted(name for name, r in ROWS.items() if flt.matches(r))


@pytest.mark.parametrize("kw,expected", [
    ({"proc": "chrome"}, ["chrome"]),
    ({"proc": "CHROME helper"}, ["chrome"]),
    ({"pid": 7}, ["lo6"]),
    ({"proto": "udp"}, ["udp"]),
    ({"state": ["LISTEN", "time-wait"]}, ["lan", "listener"]),
    ({"state": "established"}, ["chrome", "lo6"]),
    ({"scope": "loopback"}, ["lo6"]),
    ({"remote_only": True}, ["chrome", "lan"]),
    ({"listening": True}, ["listener", "udp"]),
    ({"listening": False}, ["chrome", "lan", "lo6"]),
    ({"port": 22}, ["listener"]),
    ({"port": 40000}, ["lo6"]),
    ({"ip": "192.168.0.0/16"}, ["lan"]),
    ({"ip": "::1"}, ["lo6"]),
    ({"ip": "140.82.112.3"}, ["chrome"]),
    ({"search": "ssh"}, ["listener"]),
    ({"search": "5353"}, ["udp"]),
    ({"search": "192.168"}, ["lan"]),
    ({"family": 6}, ["lo6"]),
    ({"family": "4", "proto": "tcp", "state": ["ESTABLISHED"]}, ["chrome"]),
    ({}, ["chrome", "lan", "listener", "lo6", "udp"]),
])
def test_filters_select_exactly(kw, expected):
    assert select(**kw) == expected


@pytest.mark.parametrize("kw,field", [
    ({"ip": "not-an-ip"}, "ip"),
    ({"port": 70000}, "port"),
    ({"port": "80"}, "port"),
    ({"state": ["BOGUS"]}, "state"),
    ({"proto": "icmp"}, "proto"),
    ({"family": 5}, "family"),
    ({"scope": "mars"}, "scope"),
    ({"listening": "yes"}, "listening"),
    ({"colour": "red"}, "colour"),
])
def test_invalid_filters_name_the_field(kw, field):
    with pytest.raises(FilterError) as exc:
        Filter.from_wire(kw)
    assert exc.value.field == field


def test_filter_wire_roundtrip():
    f = Filter.from_wire({"proc": "x", "state": ["LISTEN"], "listening": False, "family": 6})
    assert Filter.from_wire(f.to_wire()) == f
    assert Filter().is_empty()


def test_ipv4_mapped_addresses_match_ipv4_cidrs():
    flt = Filter.from_wire({"ip": "127.0.0.0/8"})
    assert flt.matches(row(local_ip="::ffff:127.0.0.1", remote_ip="::ffff:127.0.0.1"))


@pytest.mark.parametrize("ip,scope", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("10.1.2.3", "lan"), ("192.168.1.1", "lan"), ("fe80::1%en0", "lan"), ("fd00::1", "lan"),
    ("169.254.1.1", "lan"), ("8.8.8.8", "internet"), ("2606:4700::1111", "internet"),
    ("0.0.0.0", None), (None, None), ("garbage", None),
])
def test_scope(ip, scope):
    assert classify_scope(ip) == scope


def test_connection_scope_prefers_the_peer():
    assert connection_scope("192.168.1.5", "8.8.8.8") == "internet"
    assert connection_scope("127.0.0.1", None) == "loopback"


def test_format_addr():
    assert format_addr("::1", 80) == "[::1]:80"
    assert format_addr("1.2.3.4", 5) == "1.2.3.4:5"
    assert format_addr(None, None) is None


def test_the_host_filter_matches_names_case_insensitively_and_never_unnamed_rows():
    flt = Filter.from_wire({"host": "Local"})
    assert flt.matches({"remote_host": "localhost"})
    assert flt.matches({"remote_host": "my.LOCALDOMAIN"})
    assert not flt.matches({"remote_host": "example.com"})
    assert not flt.matches({"remote_host": None, "remote_ip": "127.0.0.1"})
    assert flt.to_wire() == {"host": "Local"}
    for bad in ("", 5, "x" * 257):
        with pytest.raises(FilterError, match="host"):
            Filter.from_wire({"host": bad})


def test_search_also_matches_names():
    flt = Filter.from_wire({"search": "google"})
    assert flt.matches({"remote_host": "fra16s52-in-f14.1e100.GOOGLE.com", "remote_ip": "142.250.185.78"})
    assert not flt.matches({"remote_host": None, "remote_ip": "142.250.185.78", "process_name": "curl"})
