"""darwin.py's pure parts: nettop's command line and whole seconds, sockets
from a recorded sample, names and users, what status says before nettop ran.
tests/integration/test_darwin_backend.py runs it against the fake nettop."""

from __future__ import annotations

import pytest

from netmond.backends.darwin import DarwinBackend, nettop_command, nettop_seconds, sockets_from_sample
from netmond.backends.nettop_parser import parse_text

from tests.darwin_fakes import APSD, DATA, MIXED, StubProcesses


@pytest.mark.parametrize(
    "interval, seconds",
    [(0.1, 1), (0.5, 1), (1.0, 1), (1.0000000001, 1), (1.2, 2), (2.0, 2), (2.5, 3), (10, 10)],
)
def test_nettop_takes_whole_seconds_rounded_up(interval, seconds):
    assert nettop_seconds(interval) == seconds


def test_command_line():
    # no -m: nettop watches TCP and UDP by default, and -m would pick one
    assert nettop_command("/usr/bin/nettop", 2.5) == [
        "/usr/bin/nettop", "-L", "0", "-s", "3", "-x", "-n",
    ]


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "1"])
def test_interval_is_validated(bad):
    with pytest.raises(ValueError):
        DarwinBackend(bad)


def test_sockets_from_a_recorded_sample():
    sockets = sockets_from_sample(MIXED[0])
    assert len(sockets) == 24
    assert len({s.key for s in sockets}) == 24
    by_key = {s.key: s for s in sockets}

    apsd = by_key[APSD]
    assert (apsd.pid, apsd.process_name, apsd.user, apsd.state, apsd.family) == (
        388, "apsd", None, "ESTABLISHED", "IPv4",
    )
    # bytes_sent is what went out, bytes_received what came in
    assert (apsd.bytes_sent, apsd.bytes_received) == (7189392, 3177530)

    # listeners: "*" is the unspecified address, the pid is part of the key,
    # and there are no counters (unknown, not 0)
    ssh4 = by_key[("TCP", "0.0.0.0", 22, None, None, 1)]
    ssh6 = by_key[("TCP", "::", 22, None, None, 1)]
    for listener in (ssh4, ssh6):
        assert (listener.state, listener.pid, listener.process_name) == ("LISTEN", 1, "launchd")
        assert listener.bytes_sent is None and listener.bytes_received is None
    assert ssh6.family == "IPv6"

    mdns = by_key[("UDP", "0.0.0.0", 5353, None, None, 412)]
    assert (mdns.state, mdns.bytes_received, mdns.bytes_sent) == ("NONE", 52613305, 12620001)
    quic = by_key[("UDP", "192.168.1.5", 61234, "142.250.74.110", 443)]
    assert (quic.state, quic.pid) == ("NONE", 1272)

    scoped = by_key[("TCP", "fe80::1c2b:3aff:fe4d:5e6f%en0", 49823, "fe80::8a2:1bff:fe33:44aa%en0", 7000)]
    assert scoped.process_name == "rapportd"
    mapped = by_key[("TCP", "::ffff:192.168.1.5", 50800, "::ffff:10.0.0.7", 22)]
    assert (mapped.family, mapped.bytes_received) == ("IPv6", 5400)
    assert by_key[("TCP", "192.168.1.5", 50600, "13.107.42.14", 443)].process_name == "Microsoft Edge"


def test_the_same_tuple_twice_gets_distinct_keys():
    header = (DATA / "nettop" / "mixed.csv").read_text().split("\n")[0]
    row = "t,udp4 *:5353<->*:*,en0,,1,2,,,,,,,,,,,,,,so,"
    (sample,) = parse_text(f"{header}\nt,a.7,,,0,0,0,0,0,,,,,,,,,,,,\n{row}\n{row}\n")
    keys = [s.key for s in sockets_from_sample(sample)]
    assert keys == [("UDP", "0.0.0.0", 5353, None, None, 7), ("UDP", "0.0.0.0", 5353, None, None, 7, 1)]


def test_names_and_users_come_from_psutil_when_they_match():
    procs = StubProcesses(
        {
            1272: ("Google Chrome Helper", "alice"),  # nettop truncated it
            388: ("launchd", "root"),  # pid reused since nettop's sample
            412: (None, None),  # vanished or access denied
        }
    )
    backend = DarwinBackend(1.0, process_cache=procs)
    found = {s.pid: (s.process_name, s.user) for s in backend._sockets(MIXED[0])}
    assert found[1272] == ("Google Chrome Helper", "alice")
    assert found[388] == ("apsd", None)
    assert found[412] == ("mDNSResponder", None)
    assert procs.forgotten_except == {1, 412, 388, 1272, 13476, 530, 772, 6001, 5120, 7001, 650}


def test_backend_identity():
    backend = DarwinBackend(1.0)
    assert backend.name == "darwin"
    assert backend.per_socket_bytes
    assert "per_socket_bytes" in backend.capabilities()
    backend.close()  # closing a backend that never started is fine


def test_the_hang_limit_follows_the_interval():
    backend = DarwinBackend(1.0)
    assert backend._runner.hang_seconds() == 5.0  # max(3 x 1 s, 5 s)
    backend.set_interval(2.5)
    assert backend._runner.hang_seconds() == 9.0  # 3 x 3 s
    backend.close()


def test_an_interval_nettop_cannot_take_is_said():
    backend = DarwinBackend(1.5)
    st = backend.status()
    assert st.effective_interval == 2.0
    assert any("nettop samples every 2s, not every 1.5s" in w for w in st.warnings)
    backend.set_interval(3)
    assert backend.status().effective_interval == 3.0
    assert not any("samples every" in w for w in backend.status().warnings)
    backend.close()
