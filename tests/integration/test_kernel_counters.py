"""End to end on Linux: a real netmond on kernel counters, asked through netmonctl.

Each test moves a known number of bytes over loopback and checks what
`netmonctl ... --json` reports: exact totals on both ends, rates while a paced
stream runs, connections shorter than a tick, and a daemon without root.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import netmonctl_cmd
from tests.helpers import REPO, tcp_pair, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux kernel counters")

NOBODY = 65534


def netmonctl_json(sock: str, *args: str) -> dict:
    out = subprocess.run(
        netmonctl_cmd("--socket", sock, *args, "--json"),
        capture_output=True, text=True, timeout=30, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def exchange(a: socket.socket, b: socket.socket, a_to_b: int, b_to_a: int) -> None:
    """Send a_to_b bytes from a to b and b_to_a back, reading all of both."""

    def pump(src: socket.socket, dst: socket.socket, n: int) -> None:
        chunk = b"x" * 65536
        sent = 0
        while sent < n:
            sent += src.send(chunk[: min(65536, n - sent)])

    def drain(sock: socket.socket, n: int) -> None:
        got = 0
        while got < n:
            data = sock.recv(1 << 20)
            assert data
            got += len(data)

    threads = [
        threading.Thread(target=pump, args=(a, b, a_to_b)),
        threading.Thread(target=pump, args=(b, a, b_to_a)),
        threading.Thread(target=drain, args=(b, a_to_b)),
        threading.Thread(target=drain, args=(a, b_to_a)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()


@pytest.fixture
def kernel_daemon(start_daemon_process):
    return start_daemon_process("--backend", "linux", "--include-loopback", "--interval", "0.5")


def test_bulk_transfer_reported_exactly_on_both_ends(kernel_daemon):
    with tcp_pair() as (_lst, cli, srv):
        exchange(cli, srv, 5_000_000, 3_000_000)
        port = cli.getsockname()[1]

        c_addr = "%s:%d" % cli.getsockname()
        s_addr = "%s:%d" % srv.getsockname()

        def both_ends():
            rows = netmonctl_json(kernel_daemon.socket, "conns", "--port", str(port))["connections"]
            # match on the whole 4-tuple: another process may reuse our port
            ends = {(r["local_addr"], r["remote_addr"]): r for r in rows}
            c, s = ends.get((c_addr, s_addr)), ends.get((s_addr, c_addr))
            # a sample may predate the last ACKs: wait for one taken after them
            if c and s and (c["bytes_sent"] or 0) >= 4_950_000 and (s["bytes_sent"] or 0) >= 2_970_000 \
                    and c["pid"] and s["pid"]:
                return c, s
            return None

        c, s = wait_until(both_ends, timeout=10)
    for row, sent, received in ((c, 5_000_000, 3_000_000), (s, 3_000_000, 5_000_000)):
        assert row["counters"] == "kernel"
        assert row["bytes_sent"] == pytest.approx(sent, rel=0.01)
        assert row["bytes_received"] == pytest.approx(received, rel=0.01)
        assert row["pid"] == os.getpid()


def test_paced_stream_rate_is_reported_while_it_runs(kernel_daemon):
    rate = 1_000_000  # bytes/s
    duration = 4.0
    with tcp_pair() as (_lst, cli, srv):
        stop = threading.Event()

        def paced_sender() -> None:
            start = time.monotonic()
            sent = 0
            chunk = b"y" * 10_000
            while not stop.is_set() and time.monotonic() - start < duration + 2:
                due = (time.monotonic() - start) * rate
                while sent < due:
                    cli.sendall(chunk)
                    sent += len(chunk)
                time.sleep(0.005)

        def reader() -> None:
            srv.settimeout(1)
            while not stop.is_set():
                try:
                    if not srv.recv(1 << 20):
                        return
                except socket.timeout:
                    continue

        threads = [threading.Thread(target=paced_sender), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        try:
            port = cli.getsockname()[1]
            peer = "%s:%d" % srv.getsockname()
            speeds = []

            def rated() -> list:
                rows = netmonctl_json(kernel_daemon.socket, "conns", "--port", str(port))["connections"]
                return [r for r in rows if r["local_port"] == port and r["remote_addr"] == peer
                        and r["upload_speed"] is not None]

            # Two samples of the stream give its first speed: from there, measure.
            wait_until(rated, 30, 0.2, what="the paced stream's first speed")
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:  # not a wait: samples the speed for `duration`
                mine = rated()
                if mine:
                    speeds.append(mine[0]["upload_speed"])
                time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
    assert len(speeds) >= 3, speeds
    median = sorted(speeds)[len(speeds) // 2]
    assert median == pytest.approx(rate, rel=0.20), speeds


def test_connections_shorter_than_a_tick_appear_closed_with_their_bytes(kernel_daemon):
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(64)
    port = lst.getsockname()[1]
    payload = b"z" * 100_000
    try:
        # wait until the daemon has seen the listener, so timing is honest
        wait_until(lambda: netmonctl_json(kernel_daemon.socket, "conns", "--port", str(port))["connections"])
        t0 = time.monotonic()
        for _ in range(30):
            c = socket.create_connection(("127.0.0.1", port))
            s, _ = lst.accept()
            c.sendall(payload)
            got = 0
            while got < len(payload):
                got += len(s.recv(1 << 20))
            c.close()
            s.close()
        elapsed = time.monotonic() - t0
    finally:
        lst.close()
    assert elapsed < 2.0  # each one far shorter than the 0.5 s interval

    def closed_rows():
        rows = netmonctl_json(kernel_daemon.socket, "conns", "--closed", "--port", str(port))["connections"]
        servers = [r for r in rows if r["local_port"] == port and r["state"] == "CLOSED"]
        clients = [r for r in rows if r["remote_port"] == port and r["state"] == "CLOSED"]
        if len(servers) >= 30 and len(clients) >= 30:
            return servers, clients
        return None

    servers, clients = wait_until(closed_rows, timeout=10)
    assert sum(r["bytes_received"] for r in servers) == pytest.approx(3_000_000, rel=0.05)
    assert sum(r["bytes_sent"] for r in clients) == pytest.approx(3_000_000, rel=0.05)
    assert all(r["counters"] == "kernel" and r["closed_at"] is not None for r in servers + clients)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_daemon_without_root_reports_roots_socket_bytes(start_daemon_process, short_dir):
    run_dir = os.path.join(short_dir, "nobody")
    os.mkdir(run_dir, 0o700)
    os.chown(run_dir, NOBODY, NOBODY)
    sock_path = os.path.join(run_dir, "n.sock")
    d = start_daemon_process(
        "--backend", "linux", "--include-loopback", "--interval", "0.5",
        socket_path=sock_path, wait=False,
        prefix=["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"],
    )
    try:
        wait_until(lambda: os.path.exists(sock_path) or d.proc.poll() is not None, timeout=15)
    except AssertionError:
        pytest.fail(f"daemon as nobody did not start: {d.log()}")
    if d.proc.poll() is not None:
        pytest.skip(f"the test interpreter is not usable by uid {NOBODY}: {d.log()[-300:]}")
    with tcp_pair() as (_lst, cli, srv):
        exchange(cli, srv, 200_000, 50_000)
        port = cli.getsockname()[1]

        def my_row():
            rows = netmonctl_json(sock_path, "conns", "--port", str(port))["connections"]
            # the sample may predate the last ACKs: wait for the final count
            mine = [r for r in rows if r["local_addr"] == "127.0.0.1:%d" % port
                    and r["remote_addr"] == "%s:%d" % srv.getsockname() and r["bytes_sent"] == 200_000]
            return mine[0] if mine else None

        row = wait_until(my_row, timeout=10)
        status = netmonctl_json(sock_path, "status")
    assert row["bytes_sent"] == 200_000 and row["bytes_received"] == 50_000
    assert row["pid"] is None and row["counters"] == "kernel"
    assert status["privileged"] is False and status["attribution_complete"] is False
    assert any("without root" in w for w in status["warnings"]), status["warnings"]


def test_closed_rows_sort_with_the_open_ones(kernel_daemon):
    """`conns --closed --sort bytes`: a big closed transfer comes before a small open one
    (issue 13: closed rows used to be put after every open row, whatever the sort)."""
    with tcp_pair() as (_lst, small_cli, small_srv):
        exchange(small_cli, small_srv, 10_000, 0)
        small = "%s:%d" % small_cli.getsockname()
        with tcp_pair() as (_lst2, big_cli, big_srv):
            exchange(big_cli, big_srv, 3_000_000, 0)
            big = "%s:%d" % big_cli.getsockname()

            def counted() -> bool:
                rows = netmonctl_json(kernel_daemon.socket, "conns", "--port", big.rsplit(":", 1)[1])
                return any(r["local_addr"] == big and (r["bytes_sent"] or 0) >= 2_900_000
                           for r in rows["connections"])

            wait_until(counted, timeout=10)
        # big pair closed here; the small one stays open.

        def ordered() -> list[str] | None:
            rows = netmonctl_json(kernel_daemon.socket, "conns", "--closed", "--sort", "bytes",
                                  "--ip", "127.0.0.1")["connections"]
            mine = [(r["local_addr"], r["closed_at"] is not None) for r in rows
                    if r["local_addr"] in (big, small)]
            return mine if (big, True) in mine and (small, False) in mine else None

        mine = wait_until(ordered, timeout=10)
    assert mine.index((big, True)) < mine.index((small, False)), mine
