"""The Prometheus exporter on hand-made snapshots: names, labels, top N + other,
counters that never go backwards (clear, forgotten apps, top-N churn),
unattributed bytes, the exposition as Prometheus parses it, the textfile."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from netmond import metrics  # noqa: E402
from netmond.backends.base import InterfaceSample, Snapshot, SocketSample  # noqa: E402
from netmond.config import build_config  # noqa: E402
from netmond.metrics import OTHER, Accountant, MetricsExporter  # noqa: E402
from netmond.state import MonitorState  # noqa: E402


def sock(port: int, name: str, sent: int | None, recv: int | None, *, proto: str = "TCP",
         state: str = "ESTABLISHED", remote: str | None = "93.184.216.34") -> SocketSample:
    key = (proto, "192.168.1.5", port, remote, 443)
    return SocketSample(key, proto, "IPv4", "192.168.1.5", port, remote, 443 if remote else None, state,
                        100 + port, name, "alice", sent, recv)


def snap(t: float, sockets=(), closed=(), ifaces=()) -> Snapshot:
    return Snapshot(monotonic=t, wall=1_000_000 + t, sockets=list(sockets), closed=list(closed),
                    interfaces=list(ifaces))


def series(snapshot) -> dict[str, tuple[int, int, int]]:
    return {s.app: (s.receive_bytes, s.transmit_bytes, s.connections) for s in snapshot.apps}


def test_per_app_bytes_and_connections_with_other_bucket():
    st, acc = MonitorState(), Accountant(top_n=2)
    st.apply(snap(0, [sock(1, "curl", 0, 0), sock(2, "ssh", 0, 0), sock(3, "git", 0, 0)]))
    acc.update(st, "linux")
    st.apply(snap(1, [sock(1, "curl", 5000, 9000), sock(2, "ssh", 100, 300), sock(3, "git", 10, 20),
                      sock(4, "git", 0, 0, state="LISTEN", remote=None)]))
    out = acc.update(st, "linux")
    assert series(out) == {"curl": (9000, 5000, 1), "ssh": (300, 100, 1), OTHER: (20, 10, 2)}
    assert out.connections == (("TCP", "ESTABLISHED", 3), ("TCP", "LISTEN", 1))
    assert out.backend == "linux"


def test_counters_survive_clear_and_closed_connections():
    st, acc = MonitorState(closed_retention=0), Accountant()
    st.apply(snap(0, [sock(1, "curl", 0, 0)]))
    acc.update(st, "x")
    st.apply(snap(1, [sock(1, "curl", 1000, 2000)]))
    assert series(acc.update(st, "x"))["curl"] == (2000, 1000, 1)
    st.clear()  # totals restart from 0 in the state (and the next tick is a new baseline)...
    st.apply(snap(2, [sock(1, "curl", 1500, 2500)]))
    st.apply(snap(3, [sock(1, "curl", 1600, 2600)]))
    assert st.apps["curl"].bytes_sent == 100
    assert series(acc.update(st, "x"))["curl"] == (2000 + 100, 1000 + 100, 1)  # ...not here
    st.apply(snap(4, []))  # the connection closes and its row goes
    assert series(acc.update(st, "x"))["curl"] == (2100, 1100, 0)  # exited apps keep their bytes


def test_an_app_forgotten_by_the_state_counts_again_from_its_new_totals():
    st, acc = MonitorState(), Accountant()
    st.apply(snap(0, [sock(1, "curl", 0, 0)]))
    st.apply(snap(1, [sock(1, "curl", 10, 10)]))
    acc.update(st, "x")
    del st.apps["curl"]  # what MonitorState._bound_apps does to idle apps
    st.apply(snap(2, [sock(1, "curl", 15, 15)]))
    assert series(acc.update(st, "x"))["curl"] == (15, 15, 1)


def test_top_n_churn_never_lowers_a_counter():
    st, acc = MonitorState(), Accountant(top_n=1)
    st.apply(snap(0, [sock(1, "a", 0, 0), sock(2, "b", 0, 0)]))
    acc.update(st, "x")
    seen: dict[str, float] = {}
    tops = []
    sent_a = sent_b = 0
    for t in range(1, 30):
        # a leads, then b overtakes it: the top-1 label changes hands.
        sent_a += 100 if t < 10 else 1
        sent_b += 10 if t < 10 else 500
        st.apply(snap(t, [sock(1, "a", sent_a, 0), sock(2, "b", sent_b, 0)]))
        out = acc.update(st, "x")
        for s in out.apps:
            assert s.transmit_bytes >= seen.get(s.app, 0), (t, s)
            seen[s.app] = s.transmit_bytes
        tops.append(out.apps[0].app)
    assert tops[0] == "a" and tops[-1] == "b"
    final = series(out)
    assert set(final) == {"b", OTHER}
    assert final["b"][1] == sent_b  # its label carries all its bytes
    # a's bytes go to "other" since it left the top, one per tick.
    st.apply(snap(30, [sock(1, "a", sent_a + 1, 0), sock(2, "b", sent_b + 500, 0)]))
    after = series(acc.update(st, "x"))
    assert (after[OTHER][1] - final[OTHER][1], after["b"][1] - final["b"][1]) == (1, 500)


def test_a_process_named_other_does_not_collide_with_the_bucket():
    st, acc = MonitorState(), Accountant()
    st.apply(snap(0, [sock(1, OTHER, 0, 0)]))
    st.apply(snap(1, [sock(1, OTHER, 7, 9)]))
    out = acc.update(st, "x")
    assert [s.app for s in out.apps] == [OTHER] and series(out)[OTHER] == (9, 7, 1)


def test_unattributed_is_interface_bytes_minus_socket_bytes_and_never_decreases():
    st, acc = MonitorState(), Accountant()
    lo = InterfaceSample("lo", 0, 0, is_loopback=True)
    st.apply(snap(0, [sock(1, "curl", 0, 0)], ifaces=[InterfaceSample("eth0", 0, 0), lo]))
    acc.update(st, "x")
    st.apply(snap(2, [sock(1, "curl", 1000, 4000)],
                  ifaces=[InterfaceSample("eth0", 1500, 10_000), InterfaceSample("lo", 9e6, 9e6, True)]))
    out = acc.update(st, "x")
    assert (out.unattributed_receive_bytes, out.unattributed_transmit_bytes) == (6000, 500)
    # Socket counters running ahead of the interface's for a tick: no decrease.
    st.apply(snap(3, [sock(1, "curl", 2000, 5000)],
                  ifaces=[InterfaceSample("eth0", 1600, 10_100), InterfaceSample("lo", 9e6, 9e6, True)]))
    out = acc.update(st, "x")
    assert (out.unattributed_receive_bytes, out.unattributed_transmit_bytes) == (6000, 500)


def _exposition(exporter: MetricsExporter) -> dict[tuple[str, tuple], float]:
    from prometheus_client import generate_latest

    text = generate_latest(exporter._registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_the_exposition_parses_with_the_documented_names(tmp_path):
    exporter = MetricsExporter(None, str(tmp_path / "netmon.prom"), top_n=5)
    exporter.start("linux")
    st = MonitorState()
    st.apply(snap(0, [sock(1, "curl", 0, 0)]))
    exporter.on_tick(st, "linux")
    st.apply(snap(1, [sock(1, "curl", 123_456_789, 987_654_321),
                      sock(2, "dns", None, None, proto="UDP", state="NONE")]))
    exporter.on_tick(st, "linux")
    got = _exposition(exporter)
    assert got[("netmon_process_receive_bytes_total", (("app", "curl"),))] == 987_654_321
    assert got[("netmon_process_transmit_bytes_total", (("app", "curl"),))] == 123_456_789
    assert got[("netmon_process_transmit_bytes_total", (("app", OTHER),))] == 0
    assert got[("netmon_process_connections", (("app", "curl"),))] == 1
    assert got[("netmon_process_connections", (("app", OTHER),))] == 1  # dns moved no counted bytes
    assert got[("netmon_connections", (("protocol", "UDP"), ("state", "NONE")))] == 1
    assert got[("netmon_unattributed_receive_bytes_total", ())] == 0
    assert got[("netmon_build_info", (("backend", "linux"), ("version", metrics.__version__)))] == 1
    names = {name for name, _ in got}
    assert names == {
        "netmon_process_receive_bytes_total", "netmon_process_transmit_bytes_total",
        "netmon_process_connections", "netmon_connections", "netmon_unattributed_receive_bytes_total",
        "netmon_unattributed_transmit_bytes_total", "netmon_build_info",
    }
    # No per-connection, address or pid labels anywhere.
    assert {k for _, labels in got for k, _ in labels} <= {"app", "protocol", "state", "version", "backend"}
    # The textfile holds the same exposition, and no temporary file is left.
    text = (tmp_path / "netmon.prom").read_text()
    assert 'netmon_process_receive_bytes_total{app="curl"} 9.87654321e+08' in text
    assert os.listdir(tmp_path) == ["netmon.prom"]
    exporter.stop()


def test_textfile_errors_are_logged_once_and_sampling_goes_on(tmp_path, caplog):
    exporter = MetricsExporter(None, str(tmp_path / "missing" / "netmon.prom"))
    exporter.start("x")
    st = MonitorState()
    for t in range(3):
        st.apply(snap(t))
        exporter.on_tick(st, "x")
    assert [r.message for r in caplog.records if "textfile" in r.message] == [
        f"cannot write metrics textfile {tmp_path}/missing/netmon.prom: No such file or directory"
    ]


def test_off_unless_configured_and_a_clear_message_without_the_library(monkeypatch):
    assert MetricsExporter.from_config(build_config({})) is None
    assert MetricsExporter.from_config(build_config({}, metrics_textfile="/tmp/x.prom")) is not None
    import builtins

    real_import = builtins.__import__

    def no_prometheus(name, *args, **kwargs):
        if name.startswith("prometheus_client"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_prometheus)
    with pytest.raises(metrics.ConfigError, match=r"pip install 'netmon\[metrics\]'"):
        MetricsExporter.from_config(build_config({}, metrics_listen="127.0.0.1:9101"))


def test_listen_addresses():
    assert metrics.split_listen("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert metrics.split_listen("[::1]:9101") == ("::1", 9101)
