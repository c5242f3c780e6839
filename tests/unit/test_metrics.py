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
from netmond.metrics import OTHER, TICK_BUCKETS, Accountant, Health, MetricsExporter, TickHistogram  # noqa: E402
from netmond.state import MonitorState  # noqa: E402
from tests.helpers import NO_PROMTOOL, PROMTOOL, promtool_check_metrics  # noqa: E402

HEALTH_NAMES = {
    "netmon_sampling", "netmon_sample_interval_seconds", "netmon_last_sample_timestamp_seconds",
    "netmon_last_sample_age_seconds", "netmon_tick_duration_seconds_bucket", "netmon_tick_duration_seconds_count",
    "netmon_tick_duration_seconds_sum", "netmon_destroy_events_lost_total", "netmon_sample_errors_total",
}


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
    # connections are active ones, as `apps` counts them: git's listener is not one
    assert series(out) == {"curl": (9000, 5000, 1), "ssh": (300, 100, 1), OTHER: (20, 10, 1)}
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
    st, acc = MonitorState(include_loopback=False), Accountant()
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


def test_bytes_of_unknown_processes_have_their_own_counters_not_an_app_label():
    st, acc = MonitorState(), Accountant()
    st.apply(snap(0, []))
    acc.update(st, "x")
    st.apply(snap(1, closed=[sock(1, None, 700, 300), sock(2, "curl", 10, 20)]))
    out = acc.update(st, "x")
    assert (out.unknown_process_receive_bytes, out.unknown_process_transmit_bytes) == (300, 700)
    assert series(out) == {"curl": (20, 10, 0), OTHER: (0, 0, 0)}


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
    exporter.on_tick(st, "linux", Health(True, 1.0, 1.0, 1_000_001.0, 0.01))
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
    assert {n for n in names if n.startswith("netmon_")} == {
        "netmon_process_receive_bytes_total", "netmon_process_transmit_bytes_total",
        "netmon_process_connections", "netmon_connections", "netmon_unattributed_receive_bytes_total",
        "netmon_unattributed_transmit_bytes_total", "netmon_build_info",
        "netmon_unknown_process_receive_bytes_total", "netmon_unknown_process_transmit_bytes_total",
        *HEALTH_NAMES,
    }
    assert {"netmond_process_cpu_seconds_total", "netmond_process_resident_memory_bytes"} <= names
    assert not any(n.startswith("process_") for n in names)  # would clash with node_exporter's
    # dns has UDP sockets only: its bytes are unknown, so it has no byte series at all
    assert ("netmon_process_receive_bytes_total", (("app", "dns"),)) not in got
    # No per-connection, address or pid labels anywhere.
    assert {k for _, labels in got for k, _ in labels} <= {"app", "protocol", "state", "version", "backend", "le"}
    # The textfile holds the same exposition, and no temporary file is left.
    text = (tmp_path / "netmon.prom").read_text()
    assert 'netmon_process_receive_bytes_total{app="curl"} 9.87654321e+08' in text
    assert os.listdir(tmp_path) == ["netmon.prom"]
    exporter.stop()


def test_a_textfile_that_cannot_work_is_refused_at_start(tmp_path):
    exporter = MetricsExporter(None, str(tmp_path / "missing" / "netmon.prom"))
    with pytest.raises(metrics.ConfigError, match=f"directory {tmp_path}/missing does not exist: create it"):
        exporter.start("x")


def test_textfile_errors_are_logged_once_and_sampling_goes_on(tmp_path, caplog):
    (tmp_path / "gone").mkdir()
    exporter = MetricsExporter(None, str(tmp_path / "gone" / "netmon.prom"))
    exporter.start("x")
    (tmp_path / "gone" / "netmon.prom").unlink()
    (tmp_path / "gone").rmdir()  # removed while netmond runs
    st = MonitorState()
    for t in range(3):
        st.apply(snap(t))
        exporter.on_tick(st, "x")
    assert [r.message for r in caplog.records if "textfile" in r.message] == [
        f"cannot write metrics textfile {tmp_path}/gone/netmon.prom: directory {tmp_path}/gone does not "
        "exist: create it, or choose another --metrics-textfile"
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
    # A package that exists under that name (the index's "netmon" is another project's).
    with pytest.raises(metrics.ConfigError, match=r" -m pip install prometheus-client$"):
        MetricsExporter.from_config(build_config({}, metrics_listen="127.0.0.1:9101"))


def test_listen_addresses():
    assert metrics.split_listen("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert metrics.split_listen("[::1]:9101") == ("::1", 9101)


# -- the daemon's own health --------------------------------------------------------


def test_tick_histogram_buckets_are_cumulative():
    h = TickHistogram()
    for seconds in (0.001, 0.02, 0.02, 3.0, 60.0):
        h = h.observe(seconds)
    by_bound = dict(zip(TICK_BUCKETS, h.buckets))
    assert (by_bound[0.005], by_bound[0.025], by_bound[2.5], by_bound[5.0], by_bound[10.0]) == (1, 3, 3, 4, 4)
    assert h.count == 5 and h.total == pytest.approx(63.041)
    assert list(h.buckets) == sorted(h.buckets)


def test_health_is_exported_and_a_pause_reaches_the_textfile_without_a_tick(tmp_path):
    import time

    path = tmp_path / "netmon.prom"
    exporter = MetricsExporter(None, str(path))
    exporter.start("linux", Health(sampling=True, interval=1.0))
    got = _exposition(exporter)
    assert got[("netmon_sampling", ())] == 1 and got[("netmon_sample_interval_seconds", ())] == 1.0
    assert ("netmon_last_sample_age_seconds", ()) not in got  # no sample yet: no age, rather than a made-up one
    assert got[("netmon_tick_duration_seconds_count", ())] == 0

    st = MonitorState()
    st.apply(snap(0))
    mono, wall = time.monotonic(), time.time()
    for tick_seconds in (0.004, 0.03, 0.7):
        exporter.on_tick(st, "linux", Health(True, 0.5, mono - 2.0, wall - 2.0, tick_seconds, events_lost=3,
                                             sample_errors=1))
    got = _exposition(exporter)
    assert got[("netmon_sample_interval_seconds", ())] == 0.5
    assert got[("netmon_last_sample_timestamp_seconds", ())] == pytest.approx(wall - 2.0)
    assert 2.0 <= got[("netmon_last_sample_age_seconds", ())] < 60  # the age at scrape time
    assert got[("netmon_tick_duration_seconds_bucket", (("le", "0.005"),))] == 1
    assert got[("netmon_tick_duration_seconds_bucket", (("le", "0.05"),))] == 2
    assert got[("netmon_tick_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    assert got[("netmon_tick_duration_seconds_sum", ())] == pytest.approx(0.734)
    assert got[("netmon_destroy_events_lost_total", ())] == 3
    assert got[("netmon_sample_errors_total", ())] == 1

    # `netmonctl stop`: no more ticks, yet the textfile must say so at once.
    exporter.on_health(Health(False, 0.5, mono - 2.0, wall - 2.0, tick_seconds=0.9))
    text = path.read_text()
    assert "netmon_sampling 0.0" in text
    assert "netmon_tick_duration_seconds_count 3.0" in text  # a pause is no tick
    exporter.stop()


def test_process_metrics_without_proc_come_from_psutil():
    import psutil
    from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

    fallback = {m.name: m.samples[0].value for m in metrics.PsutilProcessCollector().collect()}
    native = {m.name: m.samples[0].value
              for m in ProcessCollector(namespace=metrics.PROCESS_NAMESPACE, registry=None).collect()}
    # The same names (prometheus_client drops the _total of a counter's family name) ...
    assert set(fallback) == set(native) == {"netmond_process_" + n for n in (
        "cpu_seconds", "resident_memory_bytes", "virtual_memory_bytes", "start_time_seconds", "open_fds",
        "max_fds")}
    # ... and, measuring the same process, about the same values.
    p = "netmond_process_"
    assert fallback[p + "start_time_seconds"] == pytest.approx(native[p + "start_time_seconds"], abs=2)
    assert fallback[p + "resident_memory_bytes"] == pytest.approx(psutil.Process().memory_info().rss, rel=0.5)
    assert fallback[p + "cpu_seconds"] == pytest.approx(native[p + "cpu_seconds"], abs=1)
    assert fallback[p + "max_fds"] == native[p + "max_fds"]
    registry = CollectorRegistry()
    registry.register(metrics.PsutilProcessCollector())
    if PROMTOOL:
        promtool_check_metrics(generate_latest(registry).decode())


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_accepts_the_exposition(tmp_path):
    path = tmp_path / "netmon.prom"
    exporter = MetricsExporter(None, str(path), top_n=2)
    exporter.start("linux", Health(sampling=True, interval=1.0))
    st = MonitorState()
    st.apply(snap(0, [sock(1, "curl", 0, 0), sock(2, 'we"ird\\app\nname', 0, 0), sock(3, "ssh", 0, 0)]))
    st.apply(snap(1, [sock(1, "curl", 10, 20), sock(2, 'we"ird\\app\nname', 30, 40), sock(3, "ssh", 1, 1)]))
    exporter.on_tick(st, "linux", Health(True, 1.0, 1.0, 1_000_001.0, 0.01))
    promtool_check_metrics(path.read_text())
    from prometheus_client import generate_latest

    promtool_check_metrics(generate_latest(exporter._registry).decode())
    exporter.stop()


def test_the_http_server_drops_a_silent_client_and_the_connections_over_its_bound() -> None:
    """What keeps other local users from holding the daemon's descriptors
    (metrics.py, "Safe on a shared machine"), on the server alone."""
    import socket
    import threading
    import time

    from prometheus_client import CollectorRegistry

    from netmond.metrics_http import BoundedHTTPServer
    from tests.helpers import wait_until

    server = BoundedHTTPServer("127.0.0.1", 0, CollectorRegistry(), max_connections=1, request_timeout=0.3)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    silent = socket.create_connection(server.server_address, timeout=10)
    try:
        wait_until(lambda: server._slots._value == 0, timeout=10, what="the silent client holding the one slot")
        over = socket.create_connection(server.server_address, timeout=10)
        with over:
            assert over.recv(1) == b"", "a connection over the bound is closed at once"
        t0 = time.monotonic()
        assert silent.recv(1) == b"", "a client that sends nothing is dropped"
        assert time.monotonic() - t0 < 5
        # Its slot is free again: a scrape is served.
        with socket.create_connection(server.server_address, timeout=10) as scrape:
            scrape.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := scrape.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.0 200")
    finally:
        silent.close()
        server.shutdown()
        server.server_close()
        thread.join(5)
