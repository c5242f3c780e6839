"""MonitorState on hand-made snapshots: ids, rates, lifecycle, totals, history."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies

from common.models import CONNECTION_FIELDS, REMOTE_FIELDS, STATS_FIELDS, Filter

UNKNOWN_APP = None  # the "process unknown" line of app_usage
from netmond.backends.base import InterfaceSample, Snapshot, SocketSample
from netmond.state import MAX_CLOSED_ROWS, MonitorState


def sock(port: int = 5000, sent: int | None = 0, recv: int | None = 0, *, state: str = "ESTABLISHED",
         pid: int | None = 42, name: str | None = "curl", remote: str = "93.184.216.34") -> SocketSample:
    key = ("TCP", "192.168.1.5", port, remote, 443)
    return SocketSample(key, "TCP", "IPv4", "192.168.1.5", port, remote, 443, state, pid, name,
                        "alice", sent, recv)


def snap(t: float, sockets=(), closed=(), ifaces=None) -> Snapshot:
    return Snapshot(monotonic=t, wall=1_000_000 + t, sockets=list(sockets), closed=list(closed),
                    interfaces=ifaces or [])


def row_of(state: MonitorState, port: int):
    return next(r for r in state.connections(True) if r.local_port == port)


def test_id_is_stable_and_rates_are_deltas_over_time():
    st = MonitorState(interval=1.0)
    st.apply(snap(0, [sock(sent=1000, recv=500)]))
    first = row_of(st, 5000)
    assert first.upload_speed is None  # baseline: no rate yet, never invented
    st.apply(snap(2, [sock(sent=5000, recv=2500)]))
    row = row_of(st, 5000)
    assert row.id == first.id
    assert row.upload_speed == pytest.approx(2000)
    assert row.download_speed == pytest.approx(1000)


def test_pre_existing_bytes_are_not_counted_but_new_connections_count_fully():
    st = MonitorState()
    st.apply(snap(0, [sock(5000, 10_000, 10_000)]))
    st.apply(snap(1, [sock(5000, 10_100, 10_000), sock(5001, 700, 300)]))
    usage = {a["process_name"]: a for a in st.app_usage()}
    assert usage["curl"]["bytes_sent"] == 100 + 700
    assert usage["curl"]["bytes_received"] == 300
    new = row_of(st, 5001)
    assert new.upload_speed == pytest.approx(700)


def test_counter_going_backwards_is_a_new_socket_not_a_negative_rate():
    st = MonitorState()
    st.apply(snap(0, [sock(sent=1000)]))
    old_id = row_of(st, 5000).id
    ch = st.apply(snap(1, [sock(sent=10)]))
    ids = {r.id for r in st.connections(True)}
    assert len(ids) == 2 and old_id in ids
    assert [r.id for r in ch.closed] == [old_id]
    new = st.open[sock().key]
    assert new.id != old_id and new.upload_speed == pytest.approx(10)


def test_vanished_connection_is_closed_retained_then_expired():
    st = MonitorState(closed_retention=5)
    st.apply(snap(0, [sock(sent=0)]))
    st.apply(snap(1, [sock(sent=300)]))
    ch = st.apply(snap(2, []))
    (row,) = ch.closed
    assert row.state == "CLOSED" and row.closed_at == 1_000_002 and row.bytes_sent == 300
    wire = row.to_wire(1_000_003)
    assert set(wire) == set(CONNECTION_FIELDS)
    assert wire["duration"] == pytest.approx(2)
    assert list(st.connections(False)) == []
    assert [r.id for r in st.connections(True)] == [row.id]
    st.apply(snap(8, []))
    assert list(st.connections(True)) == []
    # its bytes stay in the app's totals after the row is gone
    assert {a["process_name"]: a["bytes_sent"] for a in st.app_usage()} == {"curl": 300}


def test_destroy_event_of_a_connection_never_seen_counts_every_byte_as_unknown():
    st = MonitorState()
    st.apply(snap(0, []))
    ghost = sock(6000, 100_000, 20, pid=None, name=None)
    ch = st.apply(snap(1, [], closed=[ghost]))
    (row,) = ch.closed
    assert row.state == "CLOSED" and row.pid is None and row.bytes_sent == 100_000
    usage = {a["process_name"]: a for a in st.app_usage()}
    assert usage[UNKNOWN_APP]["bytes_sent"] == 100_000
    assert usage[UNKNOWN_APP]["connections"] == 0


def test_destroy_event_closes_open_row_with_final_counters():
    st = MonitorState()
    st.apply(snap(0, [sock(sent=0)]))
    st.apply(snap(1, [sock(sent=1000)]))
    rid = row_of(st, 5000).id
    # socket sent 500 more and closed between ticks; the dump (taken just
    # before the event was read) still lists it with older counters
    ch = st.apply(snap(2, [sock(sent=1200)], closed=[sock(sent=1500, state="CLOSE")]))
    assert [r.id for r in ch.closed] == [rid]
    assert not st.open  # the stale dump row did not resurrect it
    assert row_of(st, 5000).bytes_sent == 1500
    assert st.app_usage()[0]["bytes_sent"] == 1500


def test_late_destroy_event_tops_up_a_row_the_dump_already_saw_vanish():
    st = MonitorState()
    st.apply(snap(0, [sock(sent=0)]))
    st.apply(snap(1, [sock(sent=1000)]))
    st.apply(snap(2, []))  # vanished; last known 1000
    st.apply(snap(3, [], closed=[sock(sent=1800)]))
    rows = list(st.connections(True))
    assert len(rows) == 1 and rows[0].bytes_sent == 1800
    assert st.app_usage()[0]["bytes_sent"] == 1800


def test_unknown_counters_stay_none_and_are_never_zero():
    st = MonitorState()
    st.apply(snap(0, [sock(sent=None, recv=None)]))
    st.apply(snap(1, [sock(sent=None, recv=None)]))
    wire = row_of(st, 5000).to_wire(1_000_001)
    assert wire["bytes_sent"] is None and wire["upload_speed"] is None and wire["counters"] is None


def test_known_counters_are_kept_when_a_sample_lacks_them():
    st = MonitorState()
    st.apply(snap(0, [sock(sent=10)]))
    st.apply(snap(1, [sock(sent=None, recv=None, state="TIME_WAIT")]))
    row = row_of(st, 5000)
    assert row.bytes_sent == 10 and row.state == "TIME_WAIT"
    assert row.to_wire(0)["counters"] == "kernel"


def test_late_pid_attribution_is_adopted():
    st = MonitorState()
    st.apply(snap(0, [sock(pid=None, name=None)]))
    st.apply(snap(1, [sock(pid=7, name="ssh")]))
    row = row_of(st, 5000)
    assert (row.pid, row.process_name) == (7, "ssh")


def iface(name: str, sent: int, recv: int, lo: bool = False) -> InterfaceSample:
    return InterfaceSample(name, sent, recv, lo)


def test_interface_rates_totals_and_attribution_exclude_loopback():
    st = MonitorState(include_loopback=False)
    st.apply(snap(0, [sock(sent=0, recv=0)], ifaces=[iface("en0", 0, 0), iface("lo", 0, 0, True)]))
    st.apply(snap(2, [sock(sent=1000, recv=4000)],
                  ifaces=[iface("en0", 3000, 8000), iface("lo", 10**6, 10**6, True)]))
    s = st.stats(uptime=2, monitoring=True)
    assert set(s) == set(STATS_FIELDS)
    assert s["total_upload_speed"] == pytest.approx(1500)
    assert s["total_download_speed"] == pytest.approx(4000)
    assert s["attributed_upload_speed"] == pytest.approx(500)
    assert s["unattributed_download_speed"] == pytest.approx(2000)
    assert s["total_bytes_sent"] == 3000 and s["total_bytes_received"] == 8000
    assert s["top_app"] == "curl"
    assert s["active_connections"] == 1
    by_name = {i["name"]: i for i in s["interfaces"]}
    assert by_name["lo"]["upload_speed"] == pytest.approx(500_000)


def test_loopback_connections_are_not_attributed_unless_loopback_is_counted():
    lo_sock = sock(remote="127.0.0.1", sent=0)
    for include, expected in ((False, 0), (True, 100)):
        st = MonitorState(include_loopback=include)
        st.apply(snap(0, [lo_sock]))
        st.apply(snap(1, [sock(remote="127.0.0.1", sent=100)]))
        assert st.attributed_upload_speed == pytest.approx(expected)


def test_history_ring_is_bounded_and_clear_zeroes_everything():
    st = MonitorState(interval=1.0, history_seconds=5)
    for t in range(20):
        st.apply(snap(t, [sock(sent=100 * t)], ifaces=[iface("en0", 100 * t, 0)]))
    assert len(st.history) == 5
    assert st.bandwidth_history(3, now=1_000_019)[-1]["upload"] == pytest.approx(100)
    assert len(st.bandwidth_history(3, now=1_000_019)) == 4  # points at t=16..19
    st.clear()
    assert not st.history
    assert all(a["bytes_sent"] == 0 for a in st.app_usage())
    assert st.stats(uptime=0, monitoring=True)["total_bytes_sent"] == 0
    # after a clear the current counters are the new baseline
    st.apply(snap(20, [sock(sent=2000)], ifaces=[iface("en0", 2000, 0)]))
    st.apply(snap(21, [sock(sent=2050)], ifaces=[iface("en0", 2050, 0)]))
    assert st.app_usage()[0]["bytes_sent"] == 50


def test_interval_change_keeps_history_seconds():
    st = MonitorState(interval=1.0, history_seconds=10)
    st.set_interval(0.5)
    assert st.history.maxlen == 20


def test_closed_rows_are_bounded_under_churn():
    st = MonitorState(closed_retention=3600)
    st.apply(snap(0, []))
    ghosts = [sock(p, 1, 1) for p in range(MAX_CLOSED_ROWS + 10)]
    st.apply(snap(1, [], closed=ghosts))
    assert len(st.closed) == MAX_CLOSED_ROWS


def test_rebaseline_after_resume_does_not_count_the_pause():
    st = MonitorState()
    st.apply(snap(0, [sock(sent=0)]))
    st.apply(snap(1, [sock(sent=100)]))
    st.rebaseline()
    st.apply(snap(50, [sock(sent=90_000)]))
    st.apply(snap(51, [sock(sent=90_010)]))
    assert st.app_usage()[0]["bytes_sent"] == 110


def test_bytes_counted_before_the_pid_was_known_move_to_the_app():
    st = MonitorState()
    st.apply(snap(0, []))
    st.apply(snap(1, [sock(sent=500, pid=None, name=None)]))
    assert {a["process_name"]: a["bytes_sent"] for a in st.app_usage()} == {UNKNOWN_APP: 500}
    st.apply(snap(2, [sock(sent=800, pid=9, name="wget")]))
    totals = {a["process_name"]: a["bytes_sent"] for a in st.app_usage()}
    assert totals["wget"] == 800 and totals.get(UNKNOWN_APP, 0) == 0


def test_a_sample_handed_on_unchanged_gives_the_same_rows_as_an_equal_new_one():
    """The backend may repeat last tick's SocketSample object for an idle socket."""
    results = []
    for reuse in (False, True):
        st = MonitorState()
        idle, busy = sock(5000, 100, 50), sock(5001, 10, 10)
        st.apply(snap(0, [idle, busy]))
        st.apply(snap(1, [idle if reuse else sock(5000, 100, 50), sock(5001, 20, 10)]))
        changes = st.apply(snap(2, [idle if reuse else sock(5000, 100, 50), sock(5001, 20, 10)]))
        assert [r.local_port for r in changes.updated] == []
        row = row_of(st, 5000)
        results.append((row.upload_speed, row.download_speed, row.last_seen, row.bytes_sent, row.state,
                        st.app_usage(), st.attributed_upload_speed))
    assert results[0] == results[1]
    assert results[1][:3] == (0.0, 0.0, 1_000_002)


def test_a_handed_on_sample_is_not_skipped_at_a_baseline():
    st = MonitorState()
    s = sock(5000, 100, 50)
    st.apply(snap(0, [s]))
    st.apply(snap(1, [s]))
    assert row_of(st, 5000).upload_speed == 0.0
    st.rebaseline()  # resume after stop: rates unknown again, not 0
    st.apply(snap(5, [s]))
    assert row_of(st, 5000).upload_speed is None


def test_app_usage_over_filtered_rows_counts_only_those_rows():
    st = MonitorState()
    st.apply(snap(0, []))
    a = sock(5000, 100, 10, pid=1, name="python3")
    b = sock(5001, 7000, 70, pid=2, name="python3")
    st.apply(snap(1, [a, b]))
    only_a = [r for r in st.connections(True) if r.pid == 1]
    (usage,) = st.app_usage_of(only_a)
    assert usage["pids"] == [1] and usage["connections"] == 1
    assert (usage["bytes_sent"], usage["bytes_received"]) == (100, 10)
    (whole,) = st.app_usage()
    assert whole["pids"] == [1, 2] and whole["bytes_sent"] == 7100


def test_filters_judge_rows_as_they_judge_their_wire_dicts():
    """handlers filter ConnRows before building dicts: the verdicts must agree."""
    from common.models import Filter

    st = MonitorState()
    st.apply(snap(0, [sock(5000, 1, 1), sock(5001, name="Firefox", pid=7, remote="10.0.0.9"),
                      sock(5002, state="LISTEN", remote=None, name=None, pid=None),
                      sock(5003, remote="127.0.0.1")]))
    rows = list(st.connections(True))
    for wire in ({"proc": "fire"}, {"pid": 42}, {"state": ["LISTEN"]}, {"scope": "lan"}, {"remote_only": True},
                 {"listening": False}, {"port": 5001}, {"ip": "10.0.0.0/8"}, {"search": "127.0"},
                 {"family": 4}, {"proto": "udp"}):
        flt = Filter.from_wire(wire)
        assert [r.id for r in flt.apply(rows)] == [d["id"] for d in flt.apply([r.to_wire(5.0) for r in rows])], wire


def test_time_wait_remnants_are_listed_but_not_active_nor_an_apps_connection():
    st = MonitorState()
    st.apply(snap(0, [sock(5000, state="TIME_WAIT", pid=None, name=None), sock(5001)]))
    assert len(list(st.connections())) == 2
    assert st.stats(uptime=0, monitoring=True)["active_connections"] == 1
    assert [(a["process_name"], a["connections"]) for a in st.app_usage()] == [("curl", 1)]


# -- issue 11: numbers that add up ---------------------------------------------


def udp(port: int, name: str = "dnsd", remote: str | None = None) -> SocketSample:
    key = ("UDP", "192.168.1.5", port, remote, 53 if remote else None)
    return SocketSample(key, "UDP", "IPv4", "192.168.1.5", port, remote, 53 if remote else None, "NONE",
                        50, name, "alice")


def test_an_app_whose_sockets_have_no_counters_has_null_bytes_and_speeds():
    st = MonitorState()
    st.apply(snap(0, [udp(5353)]))
    st.apply(snap(1, [udp(5353), udp(40000, remote="192.168.1.1")]))
    [app] = st.app_usage()
    assert (app["bytes_sent"], app["bytes_received"], app["upload_speed"], app["download_speed"]) == (
        None, None, None, None)
    assert app["partial"] is False and app["connections"] == 1  # the connected one; 5353 listens
    st.apply(snap(2, []))  # all closed: still unknown, not 0
    [app] = st.app_usage_of(st.connections(True))
    assert app["bytes_sent"] is None


def test_an_app_with_counted_and_uncounted_sockets_is_partial():
    st = MonitorState()
    st.apply(snap(0, [sock(5000, 0, 0, name="dnsd"), udp(5353)]))
    st.apply(snap(1, [sock(5000, 300, 100, name="dnsd"), udp(5353)]))
    [app] = st.app_usage()
    assert (app["bytes_sent"], app["upload_speed"], app["partial"]) == (300, pytest.approx(300), True)


def test_bytes_of_unknown_processes_are_the_null_line_and_stats_gives_their_share():
    st = MonitorState()
    st.apply(snap(0, []))
    st.apply(snap(1, closed=[sock(5000, 700, 300, pid=None, name=None), sock(5001, 100, 0)]))
    apps = {a["process_name"]: a for a in st.app_usage()}
    assert apps[None]["bytes_sent"] == 700 and apps["curl"]["bytes_sent"] == 100
    s = st.stats(uptime=1, monitoring=True)
    assert (s["unknown_process_bytes_sent"], s["unknown_process_bytes_received"]) == (700, 300)
    assert (s["socket_bytes_sent"], s["socket_bytes_received"]) == (800, 300)
    assert s["top_app"] == "curl"  # never the unknown line


def test_one_definition_of_connections_for_every_view():
    st = MonitorState()
    rows = [sock(5000), sock(5001, state="LISTEN"), sock(5002, state="TIME_WAIT", pid=None, name=None),
            udp(5353, name="curl")]
    st.apply(snap(0, rows))
    counts = st.connection_counts()
    assert counts == {"sockets": 4, "connections": 1, "listeners": 2, "time_wait": 1}
    s = st.stats(uptime=0, monitoring=True)
    assert (s["active_connections"], s["listeners"], s["time_wait"]) == (1, 2, 1)
    assert sum(a["connections"] for a in st.app_usage()) == counts["connections"]


def test_without_loopback_no_view_has_loopback_sockets_or_bytes():
    st = MonitorState(include_loopback=False)
    lo = sock(6000, 0, 0, remote="127.0.0.1")
    st.apply(snap(0, [lo, sock(5000)], ifaces=[iface("lo", 0, 0, True), iface("en0", 0, 0)]))
    st.apply(snap(1, [sock(6000, 5000, 5000, remote="127.0.0.1"), sock(5000, 10, 0)],
                  closed=[sock(6001, 900, 0, remote="127.0.0.1")],
                  ifaces=[iface("lo", 10_000, 10_000, True), iface("en0", 60, 0)]))
    assert [r.local_port for r in st.connections(True)] == [5000]
    assert [(a["process_name"], a["bytes_sent"]) for a in st.app_usage()] == [("curl", 10)]
    s = st.stats(uptime=1, monitoring=True)
    assert (s["total_upload_speed"], s["attributed_upload_speed"]) == (pytest.approx(60), pytest.approx(10))
    # switching the policy on: loopback rows come back at a baseline (no burst of old bytes)
    st.set_include_loopback(True)
    st.apply(snap(2, [sock(6000, 6000, 5000, remote="127.0.0.1"), sock(5000, 10, 0)],
                  ifaces=[iface("lo", 11_000, 11_000, True), iface("en0", 60, 0)]))
    st.apply(snap(3, [sock(6000, 6500, 5000, remote="127.0.0.1"), sock(5000, 10, 0)],
                  ifaces=[iface("lo", 11_600, 11_600, True), iface("en0", 60, 0)]))
    assert {a["process_name"]: a["bytes_sent"] for a in st.app_usage()}["curl"] == 10 + 500


def test_unattributed_carries_an_excess_instead_of_clamping_it():
    st = MonitorState()
    st.apply(snap(0, [sock(5000, 0, 0)], ifaces=[iface("en0", 0, 0)]))
    # tick 1: the interface read a little early: sockets 1000, interface 900 (+0 unattributed)
    st.apply(snap(1, [sock(5000, 1000, 0)], ifaces=[iface("en0", 900, 0)]))
    assert st.unattributed_upload_speed == 0 and st.total_upload_speed == pytest.approx(1000)
    # tick 2: sockets 1000 more, interface 1300 (the 100 it owed + 200 of UDP)
    st.apply(snap(2, [sock(5000, 2000, 0)], ifaces=[iface("en0", 2200, 0)]))
    assert st.unattributed_upload_speed == pytest.approx(200)
    assert st.total_upload_speed == pytest.approx(1200)
    s = st.stats(uptime=2, monitoring=True)
    # over the run: interface bytes = socket bytes + unattributed bytes
    assert s["total_bytes_sent"] == s["socket_bytes_sent"] + s["unattributed_bytes_sent"] == 2200
    # a lasting excess (traffic on an interface that is not counted) does not pile up
    for t in range(3, 10):
        st.apply(snap(t, [sock(5000, 2000 + 1000 * (t - 2), 0)], ifaces=[iface("en0", 2200, 0)]))
    st.apply(snap(10, [sock(5000, 9000, 0)], ifaces=[iface("en0", 2200 + 5000, 0)]))
    assert st.unattributed_upload_speed == pytest.approx(5000 - 1000)
    # and the total is never below what the sockets explain
    assert all(p["upload"] >= 0 for p in st.history)


def test_total_is_never_below_the_app_rows_it_sits_above():
    st = MonitorState()
    st.apply(snap(0, [sock(5000, 0, 0), sock(5001, 0, 0, name="wget")], ifaces=[iface("en0", 0, 0)]))
    for t in range(1, 6):
        # the interface lags the sockets by a varying amount
        st.apply(snap(t, [sock(5000, 1000 * t, 0), sock(5001, 500 * t, 0, name="wget")],
                      ifaces=[iface("en0", 1500 * t - (300 if t % 2 else 0), 0)]))
        apps_up = sum(a["upload_speed"] or 0 for a in st.app_usage())
        assert st.total_upload_speed >= apps_up - 1e-9
        assert st.history[-1]["upload"] >= apps_up - 1e-9


def test_an_app_of_short_connections_moves_at_the_speed_its_totals_grow():
    # Connections that open and close between two samples (destroy events
    # only, each with its process known: a listener's owner or root mode):
    # the app's speed is what its sockets moved in the tick, closed ones
    # included, not the 0 B/s of the open rows it has none of.
    st = MonitorState()
    st.apply(snap(0, []))
    short = [sock(6000 + i, 20_000, 100, name="shortconn") for i in range(5)]
    st.apply(snap(2, [], closed=short))
    (app,) = [a for a in st.app_usage() if a["process_name"] == "shortconn"]
    assert app["bytes_sent"] == 100_000
    assert app["upload_speed"] == pytest.approx(50_000)  # 100,000 B over 2 s
    assert app["download_speed"] == pytest.approx(250)
    assert app["connections"] == 0  # nothing open: the rate is the closed ones'
    assert sum(a["upload_speed"] or 0 for a in st.app_usage()) == pytest.approx(st.attributed_upload_speed)
    st.apply(snap(3, []))  # a tick that moved nothing
    (app,) = [a for a in st.app_usage() if a["process_name"] == "shortconn"]
    assert (app["upload_speed"], app["download_speed"]) == (0.0, 0.0)
    assert app["bytes_sent"] == 100_000


def test_counts_follow_rows_that_come_go_or_change_state_and_hold_on_idle_ticks():
    st = MonitorState()
    a, b = sock(5000), sock(5001)
    st.apply(snap(0, [a, b]))
    assert st.connection_counts()["connections"] == 2
    st.apply(snap(1, [a, b]))  # the same samples: nothing to count again
    assert st.connection_counts() == {"sockets": 2, "connections": 2, "listeners": 0, "time_wait": 0}
    st.apply(snap(2, [a, sock(5001, state="TIME_WAIT", pid=None, name=None)]))  # a state change
    assert st.connection_counts() == {"sockets": 2, "connections": 1, "listeners": 0, "time_wait": 1}
    st.apply(snap(3, [a, sock(5002, state="LISTEN")]))  # one gone, one new
    assert st.connection_counts() == {"sockets": 2, "connections": 1, "listeners": 1, "time_wait": 0}
    st.apply(snap(4, [sock(5002, state="LISTEN")], closed=[a]))  # a destroy event
    assert st.connection_counts() == {"sockets": 1, "connections": 0, "listeners": 1, "time_wait": 0}


# -- remote names on rows, per-remote usage (issue 17) -----------------------------------------


def remote_sock(port: int, sent: int | None = 0, recv: int | None = 0, *, remote: str = "93.184.216.34",
                rport: int = 443, state: str = "ESTABLISHED", pid: int | None = 42,
                name: str | None = "curl") -> SocketSample:
    key = ("TCP", "192.168.1.5", port, remote, rport)
    return SocketSample(key, "TCP", "IPv4", "192.168.1.5", port, remote, rport, state, pid, name,
                        "alice", sent, recv)


def remote_listener(port: int) -> SocketSample:
    return SocketSample(("TCP", "0.0.0.0", port), "TCP", "IPv4", "0.0.0.0", port, None, None, "LISTEN",
                        7, "nginx", "root", 0, 0)


def remote_snap(t: float, sockets=(), closed=()) -> Snapshot:
    return Snapshot(monotonic=t, wall=1_000_000 + t, sockets=list(sockets), closed=list(closed))


class FakeNames:
    """A name lookup as the resolver offers it: answers at once, records what is asked."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, ip: str) -> str | None:
        self.asked.append(ip)
        return self.table.get(ip)


def remotes_by_key(rows):
    return {(r["remote_ip"], r["remote_port"]): r for r in rows}


def test_rows_carry_the_name_known_when_read_and_null_without_one():
    names = FakeNames({})
    st = MonitorState(names=names)
    st.apply(remote_snap(0, [remote_sock(5000), remote_sock(5001, remote="198.51.100.7"), remote_listener(80)]))
    assert names.asked == ["93.184.216.34", "198.51.100.7"]  # asked when the rows appear, not the listener's
    assert all(set(r.to_wire(0)) == set(CONNECTION_FIELDS) for r in st.connections())
    assert [r.remote_host for r in st.connections()] == [None, None, None]
    names.table["93.184.216.34"] = "example.com"  # the lookup finished meanwhile
    rows = {r.local_port: r.to_wire(0) for r in st.connections()}
    assert rows[5000]["remote_host"] == "example.com"
    assert rows[5001]["remote_host"] is None and rows[80]["remote_host"] is None


def test_names_off_means_null_names_and_no_lookups():
    names = FakeNames({"93.184.216.34": "example.com"})
    st = MonitorState(names=names)
    st.apply(remote_snap(0, [remote_sock(5000)]))
    assert next(iter(st.connections())).remote_host == "example.com"
    st.set_names(None)  # resolve = false, applied by a reload
    asked = len(names.asked)
    assert next(iter(st.connections())).to_wire(0)["remote_host"] is None
    assert st.remote_usage()[0]["hostname"] is None
    assert len(names.asked) == asked
    plain = MonitorState()  # no lookup at all (the default)
    plain.apply(remote_snap(0, [remote_sock(5000)]))
    assert next(iter(plain.connections())).remote_host is None


def test_one_row_per_remote_with_bytes_since_start_closed_ones_included():
    names = FakeNames({"93.184.216.34": "example.com"})
    st = MonitorState(names=names)
    st.apply(remote_snap(0, [remote_sock(5000, 1000, 1000), remote_listener(80)]))  # baseline: earlier bytes not counted
    st.apply(remote_snap(1, [
        remote_sock(5000, 1100, 1400),
        remote_sock(5001, 50, 70, name="wget", pid=43),
        remote_sock(5002, 9, 9, remote="198.51.100.7", rport=53),
    ]))
    # 5001 closes; its bytes stay with its remote while retained.
    st.apply(remote_snap(2, [remote_sock(5000, 1200, 1800), remote_sock(5002, 9, 9, remote="198.51.100.7", rport=53)],
                  closed=[remote_sock(5001, 80, 100, name="wget", pid=43)]))
    remotes = remotes_by_key(st.remote_usage())
    assert set(remotes) == {("93.184.216.34", None), ("198.51.100.7", None)}  # not the listener
    ex = remotes["93.184.216.34", None]
    assert set(ex) == set(REMOTE_FIELDS)
    assert ex["hostname"] == "example.com" and ex["scope"] == "internet"
    assert ex["bytes_sent"] == 200 + 80 and ex["bytes_received"] == 800 + 100
    assert ex["connections"] == 1  # the open one; the closed one counts bytes only
    assert ex["upload_speed"] == pytest.approx(100) and ex["download_speed"] == pytest.approx(400)
    assert ex["apps"] == ["curl", "wget"]  # most bytes first
    assert ex["partial"] is False
    other = remotes["198.51.100.7", None]
    assert other["hostname"] is None and other["bytes_sent"] == 9 and other["apps"] == ["curl"]
    # Busiest first.
    assert [r["remote_ip"] for r in st.remote_usage()] == ["93.184.216.34", "198.51.100.7"]
    # The same bytes as the apps of the same rows.
    apps = {a["process_name"]: a for a in st.app_usage()}
    assert apps["curl"]["bytes_sent"] + apps["wget"]["bytes_sent"] == sum(
        r["bytes_sent"] for r in st.remote_usage())


def test_by_port_groups_by_remote_service():
    st = MonitorState()
    st.apply(remote_snap(0, []))
    st.apply(remote_snap(1, [remote_sock(5000, 10, 20), remote_sock(5001, 1, 2, rport=80), remote_sock(5002, 3, 4, rport=80)]))
    remotes = remotes_by_key(st.remote_usage(by_port=True))
    assert set(remotes) == {("93.184.216.34", 443), ("93.184.216.34", 80)}
    assert remotes["93.184.216.34", 80]["bytes_sent"] == 4 and remotes["93.184.216.34", 80]["connections"] == 2
    assert remotes_by_key(st.remote_usage())["93.184.216.34", None]["bytes_sent"] == 14


def test_unknown_processes_and_uncounted_sockets():
    st = MonitorState()
    st.apply(remote_snap(0, []))
    st.apply(remote_snap(1, [remote_sock(5000, 10, 20, pid=None, name=None), remote_sock(5001, None, None, name="dig")]))
    (remote,) = st.remote_usage()
    assert remote["apps"] == ["dig"]  # the unknown process is not a name
    assert remote["bytes_sent"] == 10 and remote["partial"] is True
    st2 = MonitorState()
    st2.apply(remote_snap(0, []))
    st2.apply(remote_snap(1, [remote_sock(5000, None, None)]))
    (remote,) = st2.remote_usage()
    assert remote["bytes_sent"] is None and remote["upload_speed"] is None  # unknown, never 0


def test_remote_usage_of_some_rows_only():
    st = MonitorState(names=FakeNames({"93.184.216.34": "example.com"}))
    st.apply(remote_snap(0, []))
    st.apply(remote_snap(1, [remote_sock(5000, 10, 20), remote_sock(5001, 1, 2, remote="198.51.100.7")]))
    flt = Filter.from_wire({"host": "EXAMPLE"})
    (remote,) = st.remote_usage(flt.apply(st.connections(True)))
    assert remote["remote_ip"] == "93.184.216.34"


# -- issue 19: an idle tick costs nothing for rows that did not change ------------------------------


def test_rows_unchanged_since_a_tick_that_moved_them_read_idle_speeds():
    st = MonitorState()
    busy, quiet, uncounted = sock(5000, 100, 50), sock(5001, 7, 7), sock(5002, None, None)
    st.apply(snap(0, [busy, quiet, uncounted]))
    moved = sock(5000, 300, 50)
    st.apply(snap(1, [moved, quiet, uncounted]))
    assert (row_of(st, 5000).upload_speed, row_of(st, 5000).download_speed) == (200.0, 0.0)
    st.apply(snap(2, [moved, quiet, uncounted]))  # every sample handed on: nothing moved
    for port, idle in ((5000, 0.0), (5001, 0.0), (5002, None)):
        row = row_of(st, port)
        assert (row.upload_speed, row.download_speed) == (idle, idle), port
    assert st.app_usage()[0]["upload_speed"] == 0.0


def test_rows_unchanged_since_a_baseline_read_idle_speeds_at_the_next_tick():
    st = MonitorState()
    counted, uncounted = sock(5000, 100, 50), sock(5001, None, None)
    for t in (0, 10):  # daemon start, then a resume after `stop`
        if t:
            st.rebaseline()
        st.apply(snap(t, [counted, uncounted]))
        assert [(r.upload_speed, r.download_speed) for r in st.connections()] == [(None, None)] * 2
        st.apply(snap(t + 1, [counted, uncounted]))
        assert [(r.upload_speed, r.download_speed) for r in st.connections()] == [(0.0, 0.0), (None, None)]


def test_speeds_hold_over_a_tick_without_a_time_step():
    st = MonitorState()
    st.apply(snap(0, [sock(5000, 0, 0)]))
    moved = sock(5000, 100, 0)
    st.apply(snap(1, [moved]))
    st.apply(snap(1, [moved]))  # the clock did not advance: no rate can be taken
    assert row_of(st, 5000).upload_speed == 100.0
    st.apply(snap(2, [moved]))
    assert row_of(st, 5000).upload_speed == 0.0


def test_last_seen_on_the_wire_is_the_last_tick_for_open_rows_and_the_close_for_closed_ones():
    st = MonitorState(closed_retention=60)
    idle, leaving = sock(5000, 1, 1), sock(5001, 1, 1)
    st.apply(snap(0, [idle, leaving]))
    (new,) = st.apply(snap(1, [idle, leaving, sock(5002, 5, 5)])).updated
    wire = new.to_wire(1_000_001)
    assert wire["first_seen"] == wire["last_seen"] == 1_000_001  # what `watch` calls a new row
    st.apply(snap(2, [idle, leaving, new.sample]))
    st.apply(snap(3, [idle, new.sample]))
    st.apply(snap(4, [idle, new.sample]))
    wires = {w["local_port"]: w for w in (r.to_wire(1_000_004.5) for r in st.connections(True))}
    assert (wires[5000]["first_seen"], wires[5000]["last_seen"]) == (1_000_000, 1_000_004)
    assert (wires[5002]["first_seen"], wires[5002]["last_seen"]) == (1_000_001, 1_000_004)
    assert wires[5001]["last_seen"] == wires[5001]["closed_at"] == 1_000_003
    assert row_of(st, 5001).get("last_seen") == 1_000_003  # what filters read
    assert st.open[idle.key].get("last_seen") == 1_000_004


def test_a_row_vanished_among_rows_handed_on_unchanged_is_closed():
    st = MonitorState()
    samples = [sock(port, port, port) for port in range(6000, 6100)]
    st.apply(snap(0, samples))
    st.apply(snap(1, samples))
    gone = samples[37]
    left = samples[:37] + samples[38:]
    changes = st.apply(snap(2, left))
    assert [r.local_port for r in changes.closed] == [gone.local_port]
    assert gone.key not in st.open and len(st.open) == 99
    # One gone and one new in the same tick: the counts must not cancel out.
    changes = st.apply(snap(3, left[1:] + [sock(7000)]))
    assert [r.local_port for r in changes.closed] == [left[0].local_port]
    assert [r.local_port for r in changes.updated] == [7000]
    assert st.connection_counts()["sockets"] == 99


def test_updated_lists_the_rows_whose_sample_changed_what_a_row_shows():
    st = MonitorState()
    a, b, c, d = sock(5000, 1, 1), sock(5001, 1, 1), sock(5002, 1, 1, pid=None, name=None), sock(5003, 1, 1)
    st.apply(snap(0, [a, b, c, d]))
    changes = st.apply(snap(1, [a, sock(5001, 9, 1), sock(5002, 1, 1, pid=None, name=None),
                                sock(5003, 1, 1, state="CLOSE_WAIT")]))
    # a handed on, c a new object equal to the last one: neither is news.
    assert [r.local_port for r in changes.updated] == [5001, 5003]
    changes = st.apply(snap(2, [a, sock(5001, 9, 1), sock(5002, 1, 1, pid=8, name="ssh"), sock(5004)]))
    assert [r.local_port for r in changes.updated] == [5002, 5004]
    assert [r.local_port for r in changes.closed] == [5003]


def _wire_of(st: MonitorState, now: float) -> tuple:
    rows = [r.to_wire(now) for r in st.connections(True)]
    return (rows, st.app_usage(), st.remote_usage(), st.connection_counts(),
            st.stats(uptime=0, monitoring=True), list(st.history))


def _changes_of(changes) -> tuple:
    return [r.id for r in changes.updated], [r.id for r in changes.closed], changes.history_point


#: What happens to socket N (0-5) in one tick; "same": handed on unchanged.
_OPS = strategies.lists(strategies.tuples(strategies.integers(0, 5), strategies.sampled_from(
    ["same", "same", "gone", "bytes", "state", "pid", "none", "reset", "destroy", "connect",
     "stale"])), max_size=8)
#: Ticks: (time step, 0 included; rebaseline first?; samples listed in another order?; what happens).
_TICKS = strategies.lists(strategies.tuples(strategies.sampled_from([0.0, 1.0, 1.0, 2.5]), strategies.booleans(),
                                            strategies.booleans(), _OPS), min_size=1, max_size=12)


@given(ticks=_TICKS)
@settings(max_examples=150, deadline=None)
def test_handing_on_an_unchanged_sample_gives_what_an_equal_new_sample_gives(ticks):
    """The state skips samples handed on unchanged (backends/base.py:
    SocketSample): every view must be as if each had been a new, equal object."""
    import dataclasses

    handed_on, copied = MonitorState(closed_retention=30), MonitorState(closed_retention=30)
    current: dict[int, SocketSample] = {p: sock(5000 + p, 100 * p, 10 * p) for p in range(6)}
    t = 0.0
    for step, rebaseline, reorder, ops in ticks:
        t += step
        closed = []
        for port, op in ops:
            s = current.get(port)
            if s is None:
                if op != "gone":
                    current[port] = sock(5000 + port, 5, 5)  # a new socket
            elif op == "gone":
                del current[port]
            elif op == "bytes":
                current[port] = dataclasses.replace(s, bytes_sent=(s.bytes_sent or 0) + 40 * port + 1)
            elif op == "state":
                current[port] = dataclasses.replace(s, state="LISTEN" if s.state != "LISTEN" else "TIME_WAIT")
            elif op == "pid":
                current[port] = dataclasses.replace(s, pid=(s.pid or 0) + 1, process_name=f"p{port}")
            elif op == "none":
                current[port] = dataclasses.replace(s, bytes_sent=None, bytes_received=None)
            elif op == "reset":
                current[port] = dataclasses.replace(s, bytes_sent=0, bytes_received=0)
            elif op == "connect":  # new endpoints, the same key (Linux keys are socket cookies)
                current[port] = dataclasses.replace(s, local_ip="10.0.0.5", remote_ip=f"10.0.0.{port}", remote_port=53)
            elif op == "stale":  # a destroy event, the dump still listing the socket
                closed.append(dataclasses.replace(s, bytes_received=(s.bytes_received or 0) + 3))
            elif op == "destroy":
                closed.append(dataclasses.replace(current.pop(port), bytes_received=(s.bytes_received or 0) + 3))
        if rebaseline:
            handed_on.rebaseline()
            copied.rebaseline()
        sockets = list(current.values())
        if reorder:
            sockets = sockets[1:] + sockets[:1]
        got = handed_on.apply(snap(t, sockets, closed))
        want = copied.apply(snap(t, [dataclasses.replace(s) for s in sockets], closed))
        assert _changes_of(got) == _changes_of(want)
        assert _wire_of(handed_on, 1_000_000 + t + 0.5) == _wire_of(copied, 1_000_000 + t + 0.5)


def test_a_row_follows_its_socket_to_new_endpoints_under_the_same_key():
    """The Linux key is the kernel's socket cookie: a UDP socket listed before
    it connect()s keeps its key and row, and the row shows where it goes now."""
    names = FakeNames({"10.0.0.53": "dns.lan"})
    st = MonitorState(names=names)
    unconnected = SocketSample(("UDP", 77), "UDP", "IPv4", "0.0.0.0", 5353, None, None, "NONE", 9, "resolved",
                               "root", None, None)
    st.apply(snap(0, [unconnected]))
    (row,) = st.connections()
    assert row.is_listener and st.connection_counts()["listeners"] == 1
    connected = SocketSample(("UDP", 77), "UDP", "IPv4", "10.0.0.5", 5353, "10.0.0.53", 53, "NONE", 9, "resolved",
                             "root", None, None)
    changes = st.apply(snap(1, [connected]))
    assert changes.updated == [row] and st.open[("UDP", 77)] is row
    wire = row.to_wire(1_000_001)
    assert (wire["local_addr"], wire["remote_addr"], wire["scope"], wire["remote_host"]) == (
        "10.0.0.5:5353", "10.0.0.53:53", "lan", "dns.lan")
    assert st.connection_counts() == {"sockets": 1, "connections": 1, "listeners": 0, "time_wait": 0}
    assert "10.0.0.53" in names.asked


def test_samples_handed_on_in_another_order_are_still_unchanged_and_a_vanished_one_closes():
    st = MonitorState()
    samples = [sock(port, port, port) for port in range(6000, 6010)]
    st.apply(snap(0, samples))
    st.apply(snap(1, samples))
    changes = st.apply(snap(2, samples[::-1]))  # a backend may list them in any order
    assert (changes.updated, changes.closed) == ([], [])
    shuffled = samples[5:] + samples[:4]  # 6004 gone
    changes = st.apply(snap(3, shuffled))
    assert ([r.local_port for r in changes.closed], changes.updated) == ([6004], [])
    changes = st.apply(snap(4, shuffled[:3] + [sock(6000, 6000, 9999)] + shuffled[4:]))  # one moved in place
    assert [r.local_port for r in changes.updated] == [6000]
    assert row_of(st, 6000).download_speed == 9999 - 6000 and row_of(st, 6008).download_speed == 0.0


def test_a_dump_sample_handed_on_after_the_destroy_event_of_its_socket_opens_no_row():
    """A dump taken just before the destroy event lists the socket as before:
    its row closes at the event and the stale sample is not a new one; a
    sample that no open row holds is never taken as unchanged, though, even
    in the place it had: listed again, it is an open socket."""
    st = MonitorState(closed_retention=60)
    samples = [sock(port, port, port) for port in range(6000, 6004)]
    st.apply(snap(0, samples))
    st.apply(snap(1, samples))
    final = sock(6001, 6001, 7000)
    changes = st.apply(snap(2, samples, closed=[final]))
    assert [r.local_port for r in changes.closed] == [6001] and changes.updated == []
    assert final.key not in st.open
    (closed,) = changes.closed
    changes = st.apply(snap(3, samples))
    assert [r.local_port for r in changes.updated] == [6001] and changes.closed == []
    assert st.open[final.key].id != closed.id
    changes = st.apply(snap(4, samples[:1] + samples[2:]))
    assert ([r.local_port for r in changes.closed], changes.updated) == ([6001], [])
    assert sorted(r.local_port for r in st.connections()) == [6000, 6002, 6003]
