"""The Prometheus exporter end to end: a real netmond with the Linux backend,
/metrics scraped over HTTP and the textfile, both parsed with
prometheus_client's own parser, and counters checked against the bytes a
loopback connection really moved.

The traffic comes from a helper process with its own name ("nmmetrics", set
with prctl before its sockets exist), so that other processes on the machine
(other test runs included) cannot add to the app label we check.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from common.client import Client  # noqa: E402
from tests.helpers import linux_backend_works, wait_until  # noqa: E402

APP = "nmmetrics"
UP = 3_000_000  # client -> server
DOWN = 700_000  # server -> client

# Both ends of one loopback connection, in one process named APP. Each
# "go" line moves UP bytes one way and DOWN bytes back, read in full.
HELPER = f"""
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"{APP}", 0, 0, 0)
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen()
cli = socket.create_connection(lst.getsockname()); srv, _ = lst.accept()

def move(src, dst, n):
    chunk = b"x" * 65536
    left = n
    while left:
        left -= src.send(chunk[:min(left, len(chunk))])
    got = 0
    while got < n:
        got += len(dst.recv(1 << 20))

print("ready", flush=True)
for line in sys.stdin:
    move(cli, srv, {UP}); move(srv, cli, {DOWN})
    print("done", flush=True)
"""


pytestmark = pytest.mark.skipif(not linux_backend_works(), reason="needs the Linux backend (netlink sock_diag)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def app_bytes(metrics: dict, app: str = APP) -> tuple[float, float]:
    return (
        metrics.get(("netmon_process_transmit_bytes_total", (("app", app),)), 0.0),
        metrics.get(("netmon_process_receive_bytes_total", (("app", app),)), 0.0),
    )


@pytest.fixture
def helper():
    proc = subprocess.Popen([sys.executable, "-c", HELPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


def test_counters_grow_by_the_bytes_a_loopback_connection_moved(start_daemon_process, short_dir, helper):
    port = free_port()
    textfile = os.path.join(short_dir, "netmon.prom")
    d = start_daemon_process("--backend", "linux", "--interval", "0.2",
                         "--metrics-listen", f"127.0.0.1:{port}", "--metrics-textfile", textfile)

    def scrape() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
            return parse(resp.read().decode())

    # Bytes moved before the daemon knows a socket's process count for app
    # "unknown": start once all three of the helper's sockets are its own.
    def attributed() -> bool:
        with Client.connect(d.socket) as c:
            rows = c.call("connections", {"filter": {"pid": helper.pid}})["connections"]
        return len(rows) == 3 and all(r["process_name"] == APP for r in rows)

    wait_until(attributed, timeout=10, interval=0.2)
    first = scrape()
    assert first[("netmon_build_info", (("backend", "linux"), ("version", "0.1.0")))] == 1
    before = app_bytes(first)

    for round_ in (1, 2):
        helper.stdin.write("go\n")
        helper.stdin.flush()
        assert helper.stdout.readline().strip() == "done"
        want = (before[0] + round_ * (UP + DOWN), before[1] + round_ * (UP + DOWN))
        # Both ends are the helper's: it sent UP + DOWN and received as much.
        seen: list[tuple[float, float]] = []

        def reached() -> bool:
            seen.append(app_bytes(scrape()))
            return seen[-1] == want

        try:
            wait_until(reached, timeout=10, interval=0.2)
        except AssertionError:
            raise AssertionError(f"{APP} (transmit, receive) went {seen[:3]} ... {seen[-3:]}, want {want}")

    # Counters never go backwards between scrapes; gauges and the rest are there.
    previous = scrape()
    for _ in range(3):
        now = scrape()
        for key, value in previous.items():
            if key[0].endswith("_total") and key in now:
                assert now[key] >= value, key
        previous = now
    assert previous[("netmon_process_connections", (("app", APP),))] == 2  # both ends (a listener is not one)
    assert previous[("netmon_connections", (("protocol", "TCP"), ("state", "ESTABLISHED")))] >= 2
    assert ("netmon_unattributed_receive_bytes_total", ()) in previous
    assert ("netmon_process_transmit_bytes_total", (("app", "other"),)) in previous
    assert not any(k for _, labels in previous for k, _ in labels if k in ("pid", "remote_ip", "id"))

    # The textfile says the same, and only the finished file is there.
    want = app_bytes(previous)
    wait_until(lambda: app_bytes(parse(open(textfile).read())) == want, timeout=5, interval=0.2)
    assert sorted(os.listdir(short_dir)) == ["netmon.prom", "p0.log", "p0.sock"]


def test_a_taken_metrics_port_stops_the_daemon_with_a_clear_message(start_daemon_process):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = start_daemon_process("--backend", "portable", "--metrics-listen", f"127.0.0.1:{port}", wait=False)
        assert d.proc.wait(15) == 1
    assert f"metrics_listen 127.0.0.1:{port}" in d.log() and "in use" in d.log()
    assert not os.path.exists(d.socket)


def test_bad_metrics_listen_is_a_usage_error(start_daemon_process):
    d = start_daemon_process("--metrics-listen", "localhost", wait=False)
    assert d.proc.wait(15) == 2
    assert "metrics_listen must be HOST:PORT" in d.log()
