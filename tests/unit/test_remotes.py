"""Remote names on rows and the per-remote view (MonitorState.remote_usage),
on hand-made snapshots with an injected name lookup; the host filter."""

from __future__ import annotations

import pytest

from common.models import CONNECTION_FIELDS, REMOTE_FIELDS, Filter, FilterError
from netmond.backends.base import Snapshot, SocketSample
from netmond.state import MonitorState


def sock(port: int, sent: int | None = 0, recv: int | None = 0, *, remote: str = "93.184.216.34",
         rport: int = 443, state: str = "ESTABLISHED", pid: int | None = 42,
         name: str | None = "curl") -> SocketSample:
    key = ("TCP", "192.168.1.5", port, remote, rport)
    return SocketSample(key, "TCP", "IPv4", "192.168.1.5", port, remote, rport, state, pid, name,
                        "alice", sent, recv)


def listener(port: int) -> SocketSample:
    return SocketSample(("TCP", "0.0.0.0", port), "TCP", "IPv4", "0.0.0.0", port, None, None, "LISTEN",
                        7, "nginx", "root", 0, 0)


def snap(t: float, sockets=(), closed=()) -> Snapshot:
    return Snapshot(monotonic=t, wall=1_000_000 + t, sockets=list(sockets), closed=list(closed))


class Names:
    """A name lookup as the resolver offers it: answers at once, records what is asked."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, ip: str) -> str | None:
        self.asked.append(ip)
        return self.table.get(ip)


def by_ip(rows):
    return {(r["remote_ip"], r["remote_port"]): r for r in rows}


def test_rows_carry_the_name_known_when_read_and_null_without_one():
    names = Names({})
    st = MonitorState(names=names)
    st.apply(snap(0, [sock(5000), sock(5001, remote="198.51.100.7"), listener(80)]))
    assert names.asked == ["93.184.216.34", "198.51.100.7"]  # asked when the rows appear, not the listener's
    assert all(set(r.to_wire(0)) == set(CONNECTION_FIELDS) for r in st.connections())
    assert [r.remote_host for r in st.connections()] == [None, None, None]
    names.table["93.184.216.34"] = "example.com"  # the lookup finished meanwhile
    rows = {r.local_port: r.to_wire(0) for r in st.connections()}
    assert rows[5000]["remote_host"] == "example.com"
    assert rows[5001]["remote_host"] is None and rows[80]["remote_host"] is None


def test_names_off_means_null_names_and_no_lookups():
    names = Names({"93.184.216.34": "example.com"})
    st = MonitorState(names=names)
    st.apply(snap(0, [sock(5000)]))
    assert next(iter(st.connections())).remote_host == "example.com"
    st.set_names(None)  # resolve = false, applied by a reload
    asked = len(names.asked)
    assert next(iter(st.connections())).to_wire(0)["remote_host"] is None
    assert st.remote_usage()[0]["hostname"] is None
    assert len(names.asked) == asked
    plain = MonitorState()  # no lookup at all (the default)
    plain.apply(snap(0, [sock(5000)]))
    assert next(iter(plain.connections())).remote_host is None


def test_one_row_per_remote_with_bytes_since_start_closed_ones_included():
    names = Names({"93.184.216.34": "example.com"})
    st = MonitorState(names=names)
    st.apply(snap(0, [sock(5000, 1000, 1000), listener(80)]))  # baseline: earlier bytes not counted
    st.apply(snap(1, [
        sock(5000, 1100, 1400),
        sock(5001, 50, 70, name="wget", pid=43),
        sock(5002, 9, 9, remote="198.51.100.7", rport=53),
    ]))
    # 5001 closes; its bytes stay with its remote while retained.
    st.apply(snap(2, [sock(5000, 1200, 1800), sock(5002, 9, 9, remote="198.51.100.7", rport=53)],
                  closed=[sock(5001, 80, 100, name="wget", pid=43)]))
    remotes = by_ip(st.remote_usage())
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
    st.apply(snap(0, []))
    st.apply(snap(1, [sock(5000, 10, 20), sock(5001, 1, 2, rport=80), sock(5002, 3, 4, rport=80)]))
    remotes = by_ip(st.remote_usage(by_port=True))
    assert set(remotes) == {("93.184.216.34", 443), ("93.184.216.34", 80)}
    assert remotes["93.184.216.34", 80]["bytes_sent"] == 4 and remotes["93.184.216.34", 80]["connections"] == 2
    assert by_ip(st.remote_usage())["93.184.216.34", None]["bytes_sent"] == 14


def test_unknown_processes_and_uncounted_sockets():
    st = MonitorState()
    st.apply(snap(0, []))
    st.apply(snap(1, [sock(5000, 10, 20, pid=None, name=None), sock(5001, None, None, name="dig")]))
    (remote,) = st.remote_usage()
    assert remote["apps"] == ["dig"]  # the unknown process is not a name
    assert remote["bytes_sent"] == 10 and remote["partial"] is True
    st2 = MonitorState()
    st2.apply(snap(0, []))
    st2.apply(snap(1, [sock(5000, None, None)]))
    (remote,) = st2.remote_usage()
    assert remote["bytes_sent"] is None and remote["upload_speed"] is None  # unknown, never 0


def test_remote_usage_of_some_rows_only():
    st = MonitorState(names=Names({"93.184.216.34": "example.com"}))
    st.apply(snap(0, []))
    st.apply(snap(1, [sock(5000, 10, 20), sock(5001, 1, 2, remote="198.51.100.7")]))
    flt = Filter.from_wire({"host": "EXAMPLE"})
    (remote,) = st.remote_usage(flt.apply(st.connections(True)))
    assert remote["remote_ip"] == "93.184.216.34"


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
