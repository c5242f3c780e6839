"""Prometheus shows whether netmond is healthy: a real daemon's /metrics and
textfile while it samples, is paused, loses events and is slow; both checked
by `promtool check metrics` where promtool is installed."""

from __future__ import annotations

import os
import socket
import time
import urllib.request

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from netmond.backends.base import Backend, BackendStatus, Snapshot, SocketSample, now  # noqa: E402
from tests.helpers import NO_PROMTOOL, PROMTOOL, promtool_check_metrics, wait_until  # noqa: E402


class LossyBackend(Backend):
    """One socket; says it lost close events; each sample can be made slow."""

    name = "lossy"
    per_socket_bytes = True

    def __init__(self) -> None:
        self.lost = 0
        self.slow_once = False

    def sample(self) -> Snapshot:
        if self.slow_once:
            self.slow_once = False
            time.sleep(0.6)
        mono, wall = now()
        sock = SocketSample(key=1, protocol="TCP", family="IPv4", local_ip="10.0.0.1", local_port=1000,
                            remote_ip="10.0.0.2", remote_port=443, state="ESTABLISHED", pid=1,
                            process_name="app", user="root", bytes_sent=0, bytes_received=0)
        return Snapshot(mono, wall, [sock])

    def status(self) -> BackendStatus:
        return BackendStatus(privileged=True, events_lost=self.lost)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def values(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_sampling_staleness_tick_duration_lost_events_and_own_cost(start_daemon_thread, short_dir):
    backend = LossyBackend()
    port = free_port()
    textfile = os.path.join(short_dir, "netmon.prom")
    d = start_daemon_thread(backend=backend, interval=0.2, metrics_listen=f"127.0.0.1:{port}",
                            metrics_textfile=textfile)

    def scrape_text() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def scrape() -> dict:
        return values(scrape_text())

    ticks = lambda m: m[("netmon_tick_duration_seconds_count", ())]  # noqa: E731
    wait_until(lambda: ticks(scrape()) >= 3)
    m = scrape()
    assert m[("netmon_sampling", ())] == 1
    assert m[("netmon_sample_interval_seconds", ())] == 0.2
    assert 0 <= m[("netmon_last_sample_age_seconds", ())] < 5
    assert m[("netmon_destroy_events_lost_total", ())] == 0
    assert m[("netmond_process_resident_memory_bytes", ())] > 1_000_000  # the daemon's own (this process here)
    assert ("netmond_process_cpu_seconds_total", ()) in m

    # A slow tick lands in the upper buckets.
    backend.slow_once = True
    wait_until(lambda: scrape()[("netmon_tick_duration_seconds_bucket", (("le", "0.5"),))] < ticks(scrape()))

    # Lost events are exported as the backend reports them.
    backend.lost = 7
    wait_until(lambda: scrape()[("netmon_destroy_events_lost_total", ())] == 7)

    # Paused: sampling 0 at once, in the textfile too, and the age grows.
    with d.client() as c:
        c.call("control", {"action": "stop"})
        wait_until(lambda: "netmon_sampling 0.0" in open(textfile).read())
        paused_ticks = ticks(scrape())
        age = scrape()[("netmon_last_sample_age_seconds", ())]
        wait_until(lambda: scrape()[("netmon_last_sample_age_seconds", ())] > age + 0.5)
        assert scrape()[("netmon_sampling", ())] == 0 and ticks(scrape()) == paused_ticks
        c.call("configure", {"interval": 0.3})
        assert scrape()[("netmon_sample_interval_seconds", ())] == 0.3
        c.call("control", {"action": "start"})
        wait_until(lambda: ticks(scrape()) > paused_ticks and scrape()[("netmon_sampling", ())] == 1)

    if PROMTOOL:
        promtool_check_metrics(scrape_text())
        promtool_check_metrics(open(textfile).read())


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_accepts_a_real_daemons_metrics_and_textfile(start_daemon_process, short_dir):
    # A subprocess, as users run it, with the real default backend.
    port = free_port()
    textfile = os.path.join(short_dir, "netmon.prom")
    start_daemon_process("--metrics-listen", f"127.0.0.1:{port}", "--metrics-textfile", textfile,
                         "--include-loopback")
    wait_until(lambda: _count(textfile) >= 2)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        promtool_check_metrics(resp.read().decode())
    promtool_check_metrics(open(textfile).read())


def _count(path: str) -> float:
    try:
        return values(open(path).read()).get(("netmon_tick_duration_seconds_count", ()), 0)
    except OSError:
        return 0
