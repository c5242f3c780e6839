"""linux.py's bookkeeping on crafted dumps and destroy events (no netlink
socket opened): keys, TIME_WAIT remnants, destroy events, owners remembered,
floors; and RecentKeys.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess

import psutil
import pytest

from netmond.backends import linux, netlink
from netmond.backends.netlink import CALLER_FIELDS, DiagSocket, NetlinkError, TcpCounters

from tests.linux_fakes import V4_LOOPBACK, V4_MAPPED, info

MY_NAME = psutil.Process().name()


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




#: A peer on another machine: no loopback peer's count to wait for (see
#: the tests of an end destroyed before its peer's FIN).
REMOTE = socket.inet_aton("10.0.0.9") + bytes(12)


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
        if family not in (socket.AF_INET, socket.AF_UNSPEC):
            return []
        records = [r for r in (self.tcp if protocol == socket.IPPROTO_TCP else self.udp) if states & (1 << r.state)]
        if known is None:
            return records
        # As parse_messages does: a record equal to a known one is that one
        # (its entry stays as it is); another one gets an entry of its own
        # (signature, state, owner, record), the caller's fields carried over.
        out = []
        for r in records:
            before = known.entries.get(r.cookie)
            if before is not None and before[3] == r:
                r = before[3]
            elif r.cookie:
                kept = before[4:] if before is not None else (None,) * CALLER_FIELDS
                known.entries[r.cookie] = (None, r.state, None, r, *kept)
            known.listed += bool(r.cookie)
            out.append(r)
        return out

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
    CLIENT_COOKIE_KEY, SERVER_COOKIE_KEY = 7, 8
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
    backend._owners.changed.add(200)  # as SocketOwners notes whenever an owner changes
    owned = by_key(backend.sample().sockets)[SERVER_COOKIE_KEY]
    assert owned.pid == 1 and owned.state == "CLOSE_WAIT"
    # What destroy events need is kept for handed-on sockets too.
    assert backend._remembered_owner(CLIENT_COOKIE_KEY)[4:] == (1500, 700)


def test_a_late_destroy_event_of_a_socket_handed_on_unchanged_still_finds_its_owner(crafted) -> None:
    # Handed on for ticks (its entry made once, never copied), then gone from
    # the dump before its destroy event came: the owner it had still counts.
    backend, dumper, listener = crafted
    dumper.tcp = [record(1, CLIENT_PORT, SERVER_PORT, 100, info(acked=1001, received=700, data_segs_in=1, sent=1000), dst=REMOTE, cookie=91)]
    for _ in range(3):
        backend.sample()
    dumper.tcp = []
    assert backend.sample().sockets == []
    listener.events = [record(7, CLIENT_PORT, SERVER_PORT, 0, info(acked=1002, received=701, data_segs_in=1, sent=1000), dst=REMOTE, cookie=91)]
    [closed] = backend.sample().closed
    assert (closed.key, closed.pid, closed.bytes_sent, closed.bytes_received) == (91, os.getpid(), 1000, 700)


def built(backend: linux.LinuxBackend) -> list[int]:
    """The cookies of the sockets whose sample is kept with the parser's entry."""
    return [c for c, e in backend._tcp_records.entries.items() if e[linux._BUILT_SAMPLE] is not None]


def test_what_is_kept_of_handed_on_sockets_goes_with_them(crafted) -> None:
    backend, dumper, _ = crafted
    dumper.tcp = [record(1, 40000 + i, SERVER_PORT, 1000 + i, info(acked=11, received=0, sent=10), cookie=1000 + i)
                  for i in range(50)]
    backend.sample()
    backend.sample()
    assert sorted(built(backend)) == list(range(1000, 1050))
    del dumper.tcp[10:]
    backend.sample()
    assert sorted(built(backend)) == list(range(1000, 1010))
    assert sorted(backend._tcp_records.entries) == list(range(1000, 1010))
    # Gone: only the owner tables of the last few ticks remember them.
    for _ in range(linux.OWNER_GENERATIONS):
        backend.sample()
    assert backend._remembered_owner(1020) is None and backend._remembered_owner(1005) is not None


def test_samples_keep_their_places_when_a_socket_among_them_changes(crafted) -> None:
    # MonitorState tells a handed-on sample by its place in the list: one
    # socket that moves must not shift the others.
    backend, dumper, _ = crafted
    dumper.tcp = [record(1, 40000 + i, SERVER_PORT, 2000 + i, info(acked=11, received=0, sent=10), cookie=2000 + i)
                  for i in range(5)]
    first = backend.sample().sockets
    dumper.tcp[1] = record(1, 40001, SERVER_PORT, 2001, info(acked=21, received=0, sent=20), cookie=2001)
    again = backend.sample().sockets
    assert [s.key for s in again] == [s.key for s in first]
    assert [a is b for a, b in zip(again, first)] == [True, False, True, True, True]
    assert again[1].bytes_sent == 20


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
        [mapped] if family in (socket.AF_INET6, socket.AF_UNSPEC) and protocol == socket.IPPROTO_TCP else [])
    [row] = backend.sample().sockets
    key = ("TCP", "::ffff:127.0.0.1", CLIENT_PORT, "::ffff:127.0.0.1", SERVER_PORT)
    assert (row.key, row.family, row.bytes_sent) == (key, "IPv6", 10)
    listener.events = [mapped._replace(state=7, inode=0, counters=TcpCounters(12, 0, 0, 10, 0))]
    [closed] = backend.sample().closed
    assert closed.key == key and closed.pid == os.getpid()


def test_without_root_other_users_sockets_make_attribution_incomplete(crafted, monkeypatch) -> None:
    backend, dumper, _ = crafted
    monkeypatch.setattr(linux, "is_root", lambda: False)
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
    assert (closed.key, closed.bytes_sent, closed.bytes_received) == (21, 333_333, 0)


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
    assert second.key == 32 != first.key and second.bytes_sent == 50_000
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
    server, client = closed[41], closed[42]
    assert (server.pid, server.process_name, server.bytes_sent, server.bytes_received) == (
        os.getpid(), MY_NAME, 1000, 100)
    assert (client.pid, client.process_name, client.bytes_sent, client.bytes_received) == (None, None, 100, 1000)
    assert client.user  # the uid is known


# A server that answers 1000 bytes to a 100-byte request and closes first. Its
# FIN acknowledged on its own, it is destroyed before the client's FIN comes
# (raw bytes_received 100, no FIN in it); the client, closing second, counts
# the server's FIN (1001). A server destroyed after the client's FIN would read
# 101: the same final state, so tcp_info alone cannot tell 100 from 101 - 1.
SERVER_CLOSED_FIRST = info(acked=1001, received=100, data_segs_in=1, sent=1000)
CLIENT_CLOSED_SECOND = info(acked=102, received=1001, data_segs_in=1, sent=100)


def test_an_end_destroyed_before_its_peers_fin_counts_exactly_by_its_loopback_peer(crafted) -> None:
    backend, dumper, listener = crafted
    dumper.tcp = [record(10, SERVER_PORT, 0, 300, info(), dst=bytes(16), cookie=40)]
    backend.sample()
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, SERVER_CLOSED_FIRST, cookie=41),
                       record(7, CLIENT_PORT, SERVER_PORT, 0, CLIENT_CLOSED_SECOND, cookie=42)]
    closed = by_key(backend.sample().closed)
    assert (closed[41].bytes_sent, closed[41].bytes_received) == (1000, 100)
    assert (closed[42].bytes_sent, closed[42].bytes_received) == (100, 1000)


def test_an_end_whose_peer_closes_a_tick_later_waits_for_it_once(crafted) -> None:
    backend, dumper, listener = crafted
    dumper.tcp = [record(10, SERVER_PORT, 0, 300, info(), dst=bytes(16), cookie=40)]
    backend.sample()
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, SERVER_CLOSED_FIRST, cookie=41)]
    assert backend.sample().closed == []  # held a tick for its peer
    listener.events = [record(7, CLIENT_PORT, SERVER_PORT, 0, CLIENT_CLOSED_SECOND, cookie=42)]
    closed = by_key(backend.sample().closed)
    assert (closed[41].pid, closed[41].bytes_sent, closed[41].bytes_received) == (os.getpid(), 1000, 100)
    assert (closed[42].bytes_sent, closed[42].bytes_received) == (100, 1000)
    # An end whose peer closed a tick before finds its count without waiting;
    # one whose peer closed longer ago has nothing to wait for.
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT + 1, 0, SERVER_CLOSED_FIRST, cookie=51),
                       record(7, CLIENT_PORT + 2, SERVER_PORT, 0, CLIENT_CLOSED_SECOND, cookie=62)]
    assert backend.sample().closed == []  # both held: neither peer known yet
    listener.events = [record(7, CLIENT_PORT + 1, SERVER_PORT, 0, CLIENT_CLOSED_SECOND, cookie=52)]
    closed = by_key(backend.sample().closed)
    assert closed[51].bytes_received == 100 and set(closed) == {51, 52, 62}
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT + 1, 0, SERVER_CLOSED_FIRST, cookie=53)]
    assert by_key(backend.sample().closed)[53].bytes_received == 100
    for _ in range(2):
        backend.sample()
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT + 1, 0, SERVER_CLOSED_FIRST, cookie=54)]
    assert [s.key for s in backend.sample().closed] == [54]


def test_an_end_whose_peer_stays_open_is_reported_a_tick_later_as_tcpbytes_reads_it(crafted) -> None:
    backend, dumper, listener = crafted
    dumper.tcp = [record(10, SERVER_PORT, 0, 300, info(), dst=bytes(16), cookie=40)]
    backend.sample()
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, SERVER_CLOSED_FIRST, cookie=41)]
    assert backend.sample().closed == []
    closed = by_key(backend.sample().closed)
    assert (closed[41].bytes_sent, closed[41].bytes_received) == (1000, 99)  # the graceful-close reading
    assert backend.sample().closed == []  # reported once
    # A remote peer's end is never held: nothing on this machine can settle it.
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, SERVER_CLOSED_FIRST, dst=socket.inet_aton("10.0.0.9") + bytes(12), cookie=61)]
    assert [s.key for s in backend.sample().closed] == [61]


def test_short_connection_of_a_shared_listener_has_its_name_not_a_pid(crafted) -> None:
    backend, dumper, listener = crafted
    backend._owners.shared.add(300)  # as if forked workers held it too
    dumper.tcp = [record(10, SERVER_PORT, 0, 300, info(), dst=bytes(16), cookie=50)]
    backend._owners.refresh({300})
    backend._owners.shared.add(300)
    backend.sample()
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, info(acked=11, received=6, data_segs_in=1, sent=10),
                              dst=REMOTE, cookie=51)]
    [closed] = backend.sample().closed
    assert (closed.pid, closed.process_name) == (None, MY_NAME)


def test_short_connections_are_their_listeners_when_its_process_exits_before_the_tick_looks_it_up(
        crafted, fake_proc) -> None:
    # The integration flake: the server exits as soon as it has served its
    # last connection, after the tick's dump listed its listener but before
    # the tick looked its pid up (after a /proc walk, slow under load). The
    # pid gone, the index forgets what it held, and this tick's listener
    # table lists the listener with no owner; the connections it accepted,
    # all closed within that tick, are the server's all the same.
    backend, dumper, listener = crafted
    server = subprocess.Popen(["sleep", "60"])
    try:
        fake_proc.add(server.pid, 3, "socket:[400]")
        dumper.tcp = [record(10, SERVER_PORT, 0, 400, info(), dst=bytes(16), cookie=40)]
        [listening] = backend.sample().sockets
        assert (listening.pid, listening.process_name) == (server.pid, "sleep")
    finally:
        server.kill()
        server.wait()
    short = info(acked=1001, received=101, data_segs_in=1, sent=1000)
    # Listed with no owner for longer than the listener history is kept.
    for tick in range(linux.OWNER_GENERATIONS + 2):
        listener.events = [record(7, SERVER_PORT, CLIENT_PORT + tick, 0, short, dst=REMOTE, cookie=41 + tick)]
        snap = backend.sample()
        assert [s.pid for s in snap.sockets] == [None]  # the listener: its pid is gone
        [closed] = snap.closed
        assert (closed.pid, closed.process_name, closed.bytes_sent) == (server.pid, "sleep", 1000)
    # Another listener on that address (another inode) owned by no one known
    # is not the old one: its connections never get the old owner.
    dumper.tcp = [record(10, SERVER_PORT, 0, 401, info(), dst=bytes(16), cookie=60)]
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, short, dst=REMOTE, cookie=61)]
    [closed] = backend.sample().closed
    assert (closed.pid, closed.process_name) == (None, None)


def test_accept_queue_socket_closed_before_its_process_took_it_is_its_listeners(crafted) -> None:
    backend, dumper, listener = crafted
    dumper.tcp = [record(10, SERVER_PORT, 0, 300, info(), dst=bytes(16), cookie=60),
                  # accepted by the kernel, not yet by the process: no file, no inode
                  record(1, SERVER_PORT, CLIENT_PORT, 0, info(acked=0, received=100, data_segs_in=1), dst=REMOTE, cookie=61)]
    [row] = [s for s in backend.sample().sockets if s.key == 61]
    assert row.pid is None
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, info(acked=501, received=101, data_segs_in=1, sent=500),
                              dst=REMOTE, cookie=61)]
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
                                                                   sent=1200), dst=REMOTE, cookie=80)]
    dumper.tcp = [record(6, SERVER_PORT, CLIENT_PORT, 0, None, dst=REMOTE, cookie=81)]  # same tick
    snap = backend.sample()
    assert [c.key for c in snap.closed] == [80] and snap.sockets == []
    assert backend.sample().sockets == []  # and later ticks


def test_remnant_listed_before_its_destroy_event_is_the_row_the_event_ends(crafted) -> None:
    backend, dumper, listener = crafted
    dumper.tcp = [record(6, SERVER_PORT, CLIENT_PORT, 0, None, dst=REMOTE, cookie=91)]
    [remnant] = backend.sample().sockets
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, info(acked=1201, received=101, data_segs_in=1,
                                                                   sent=1200), dst=REMOTE, cookie=90)]
    snap = backend.sample()
    assert [(c.key, c.bytes_sent) for c in snap.closed] == [(remnant.key, 1200)] and snap.sockets == []


def test_time_wait_remnants_are_dumped_one_tick_in_a_few_and_handed_on_between(crafted) -> None:
    backend, dumper, listener = crafted
    asked = []
    fake_dump = dumper.dump

    def dump(family, protocol, ext, states, known=None):
        if protocol == socket.IPPROTO_TCP:
            asked.append(bool(states & (1 << netlink.TCP_TIME_WAIT)))
        return fake_dump(family, protocol, ext, states, known)

    dumper.dump = dump
    unseen = record(6, CLIENT_PORT, SERVER_PORT, 0, None, cookie=51)  # closed before we looked: a row
    dumper.tcp = [unseen, record(6, SERVER_PORT, CLIENT_PORT, 0, None, cookie=52)]
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, info(acked=701, received=1001, data_segs_in=1,
                                                                   sent=700), cookie=52)]
    first = backend.sample().sockets
    assert [s.key for s in first] == [51]  # the other's row ended at its destroy event
    every = linux.TIMEWAIT_DUMP_EVERY_TICKS
    later = [backend.sample().sockets for _ in range(2 * every)]
    assert asked == [True] + ([False] * (every - 1) + [True]) * 2
    assert all(sockets == first and sockets[0] is first[0] for sockets in later)
    # Gone from the kernel: the row goes at the next dump that lists remnants.
    dumper.tcp = []
    ticks = 0
    while backend.sample().sockets:
        ticks += 1
    assert ticks < every


def test_a_remnant_keeps_the_owner_it_was_first_given(crafted) -> None:
    backend, dumper, listener = crafted
    listener_rec, client, server = established_pair(info(acked=1001, received=700, data_segs_in=1, sent=1000),
                                                    info(acked=700, received=1000, data_segs_in=1, sent=700))
    client = client._replace(cookie=61)
    dumper.tcp = [listener_rec, client, server]
    backend.sample()
    # Its destroy event was lost (so the next dump lists remnants): the
    # remnant (same cookie) is the row, still ours.
    listener.events_lost += 1
    dumper.tcp = [listener_rec, record(6, CLIENT_PORT, SERVER_PORT, 0, None, cookie=61), server]
    rows = [by_key(backend.sample().sockets)[61] for _ in range(2 * linux.TIMEWAIT_DUMP_EVERY_TICKS)]
    assert {(r.state, r.pid) for r in rows} == {("TIME_WAIT", os.getpid())}


def test_a_late_destroy_event_ends_a_handed_on_remnant_row_for_good(crafted) -> None:
    backend, dumper, listener = crafted
    dumper.tcp = [record(6, SERVER_PORT, CLIENT_PORT, 0, None, dst=REMOTE, cookie=71)]
    [remnant] = backend.sample().sockets
    backend.sample()  # TIME_WAIT left out: the row is handed on
    listener.events = [record(7, SERVER_PORT, CLIENT_PORT, 0, info(acked=1201, received=101, data_segs_in=1,
                                                                   sent=1200), dst=REMOTE, cookie=70)]
    snap = backend.sample()
    assert [c.key for c in snap.closed] == [remnant.key] and snap.sockets == []
    for _ in range(2 * linux.TIMEWAIT_DUMP_EVERY_TICKS):
        assert backend.sample().sockets == []  # listed again, and hidden


def test_tcp_of_both_families_in_one_dump_or_one_each(fake_proc) -> None:
    class OldKernel(FakeDumper):
        def dump(self, family, protocol, ext, states, known=None):
            if family == socket.AF_UNSPEC:
                raise NetlinkError(errno.EINVAL, "Invalid argument")
            return super().dump(family, protocol, ext, states, known)

    for dumper, expected in ((FakeDumper(), [socket.AF_UNSPEC]), (OldKernel(), [socket.AF_INET, socket.AF_INET6])):
        backend = linux.LinuxBackend(proc_root=str(fake_proc.root), destroy_listener=FakeDestroyListener(),
                                     dumper=dumper)
        backend.start()
        dumper.tcp = [record(1, CLIENT_PORT, SERVER_PORT, 100, info(acked=11, received=0, sent=10), cookie=5)]
        assert [s.key for s in backend.sample().sockets] == [5]
        assert [f for f, p, _ in backend._dumps if p == socket.IPPROTO_TCP] == expected
        assert not backend.status().warnings or "refused" not in " ".join(backend.status().warnings)
        backend.close()
