"""`netmonctl watch` as people use it: a subprocess against a real netmond
subprocess, read line by line with deadlines while the test opens and closes
loopback connections, stops the daemon and starts another on the same socket.

Also the pure parts (line formats, backoff) at the end, without a daemon.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

import pytest

from netmonctl.commands import watch as watch_cmd
from netmonctl.live import Backoff
from tests.conftest import netmonctl_cmd
from tests.helpers import REPO, wait_until

DAEMON_ARGS = ("--include-loopback", "--interval", "0.2")


class Watch:
    """A running `netmonctl watch`; threads collect its stdout and stderr lines."""

    def __init__(self, socket_path: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("NETMON_SOCKET", "NO_COLOR")}
        self.proc = subprocess.Popen(
            netmonctl_cmd("--socket", socket_path, "watch", *args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []  # every stdout line taken from the queue so far
        self.err: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.err.append), daemon=True).start()

    @staticmethod
    def _pump(stream: Any, put: Callable[[str], None]) -> None:
        for line in stream:
            put(line.rstrip("\n"))

    def next_matching(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        """The next stdout line that satisfies predicate; fail after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no matching line within {timeout}s; stderr: {self.err!r}; "
                    f"last lines: {self.seen[-5:]!r}"
                )
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                assert self.proc.poll() is None, f"watch exited {self.proc.returncode}: {self.err!r}"
                continue
            self.seen.append(line)
            if predicate(line):
                return line

    def stderr_says(self, text: str, timeout: float = 15.0) -> None:
        wait_until(lambda: any(text in line for line in self.err), timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def watching() -> Iterator[Callable[..., Watch]]:
    """Factory: start `netmonctl --socket S watch ARGS`; killed at teardown."""
    started: list[Watch] = []

    def start(socket_path: str, *args: str) -> Watch:
        w = Watch(socket_path, *args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def event_for_port(event: str, port: int) -> Callable[[str], bool]:
    """A predicate: a JSON line of `event` with a row on local or remote `port`."""

    def check(line: str) -> bool:
        obj = json.loads(line)
        return obj["event"] == event and any(
            port in (row["local_port"], row["remote_port"]) for row in obj["data"]["connections"]
        )

    return check


def subscribed(socket_path: str, clients: int) -> None:
    """Wait until the daemon serves `clients` other clients (watch has subscribed)."""
    from common.client import Client

    def count() -> bool:
        with Client.connect(socket_path) as c:
            return c.call("status")["clients"] - 1 >= clients

    wait_until(count, timeout=15)
    time.sleep(0.3)  # connect, hello and subscribe are three round trips (status shows no subscriptions)


def live(w: Watch, listener: socket.socket) -> None:
    """Wait until w's subscription delivers: a probe connection to listener
    shows up. (status counts watch's connection, not its subscription, and
    under load the connection's first tick could pass before subscribe: its
    rows were missed, and the next update had one end without the other.)"""

    def probe_seen() -> bool:
        client, server = open_and_talk(listener)
        probe = client.getsockname()[1]
        client.close()
        server.close()
        try:
            w.next_matching(event_for_port("connection_closed", probe), timeout=5)
        except AssertionError:
            return False  # closed before the subscription took: try another
        return True

    wait_until(probe_seen, timeout=60, interval=0, what="a probe connection's close in watch's output")


def open_and_talk(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A loopback connection to listener, with some bytes each way."""
    client = socket.create_connection(listener.getsockname()[:2], timeout=5)
    server, _ = listener.accept()
    client.sendall(b"x" * 10_000)
    server.recv(65536)
    server.sendall(b"y" * 5_000)
    client.recv(65536)
    return client, server


# -- end to end -----------------------------------------------------------------


def test_processes_the_tests_start_can_be_ended_with_ctrl_c():
    # The Ctrl-C tests below need SIGINT to reach watch as in a terminal. A
    # suite started in the background of a script inherits it ignored, and
    # then every netmonctl a test starts ignored it too (tests/conftest.py
    # undoes that): say so here rather than as a watch that "hangs".
    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", f"SIGINT ignored in the processes tests start: {out!r}"


def test_watch_json_follows_connections_across_a_daemon_restart(start_daemon_process, watching):
    daemon = start_daemon_process(*DAEMON_ARGS)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    w = watching(daemon.socket, "--json", "--events", "connection_update,connection_closed",
                 "--port", str(port))
    try:
        subscribed(daemon.socket, 1)
        live(w, listener)

        # A new connection shows as connection_update, its end as connection_closed.
        client, server = open_and_talk(listener)
        cport = client.getsockname()[1]
        update = json.loads(w.next_matching(event_for_port("connection_update", cport)))
        assert set(update) == {"event", "timestamp", "data"}
        assert abs(update["timestamp"] - time.time()) < 30
        row = next(r for r in update["data"]["connections"] if r["local_port"] == cport)
        assert row["remote_port"] == port and row["protocol"] == "TCP" and row["closed_at"] is None
        client.close()
        server.close()
        closed = json.loads(w.next_matching(event_for_port("connection_closed", cport)))
        final = next(r for r in closed["data"]["connections"] if r["local_port"] == cport)
        assert final["state"] == "CLOSED" and final["closed_at"] is not None

        # The daemon goes away: watch says so on stderr and keeps running.
        assert daemon.stop() == 0
        w.stderr_says("netmond went away")
        assert w.proc.poll() is None
        # Another daemon on the same socket: watch resubscribes (same filter) by itself.
        start_daemon_process(*DAEMON_ARGS, socket_path=daemon.socket)
        w.stderr_says("reconnected to netmond", timeout=20)
        client, server = open_and_talk(listener)
        cport2 = client.getsockname()[1]
        w.next_matching(event_for_port("connection_update", cport2))
        client.close()
        server.close()
        w.next_matching(event_for_port("connection_closed", cport2))
    finally:
        listener.close()

    # Ctrl-C: exit 0, quietly.
    w.proc.send_signal(signal.SIGINT)
    assert w.proc.wait(10) == 0
    time.sleep(0.2)  # let the reader threads take the last lines
    assert not any("Traceback" in line for line in w.err), w.err
    assert sum("went away" in line for line in w.err) == 1  # once per outage, not per attempt

    # Every line is one JSON event, and the daemon applied the port filter.
    while not w.lines.empty():
        w.seen.append(w.lines.get())
    assert w.seen
    for line in w.seen:
        obj = json.loads(line)
        assert obj["event"] in ("connection_update", "connection_closed", "lagged")
        for r in obj["data"].get("connections", []):
            assert port in (r["local_port"], r["remote_port"])


def test_watch_readable_lines_and_count(start_daemon_process):
    daemon = start_daemon_process(*DAEMON_ARGS)
    out = subprocess.run(
        netmonctl_cmd("--socket", daemon.socket, "watch", "--events", "stats_update,bandwidth_data",
                      "--count", "4"),
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4
    assert {line.split()[1] for line in lines} == {"STATS", "BW"}
    for line in lines:
        time.strptime(line.split()[0], "%H:%M:%S")
        assert "↑" in line and "↓" in line


def test_watch_duration_ends_quietly(start_daemon_process):
    daemon = start_daemon_process(*DAEMON_ARGS)
    t0 = time.monotonic()
    out = subprocess.run(
        netmonctl_cmd("--socket", daemon.socket, "watch", "--json", "--duration", "1", "--port", "1"),
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert 1.0 <= time.monotonic() - t0 < 15
    assert out.stderr == ""


def test_watch_into_a_closed_pipe_exits_0_without_a_traceback(start_daemon_process):
    daemon = start_daemon_process(*DAEMON_ARGS)
    proc = subprocess.Popen(
        netmonctl_cmd("--socket", daemon.socket, "watch", "--json", "--events", "all"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        json.loads(proc.stdout.readline())  # like `| head -1`
        proc.stdout.close()
        assert proc.wait(15) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.parametrize("args", [["status"], ["conns"], ["apps", "--json"], ["history", "--format", "csv"]])
def test_a_command_whose_reader_left_exits_0_without_a_traceback(start_daemon_process, args):
    # `netmonctl conns | head -3` with more rows than the pipe holds: the write
    # fails with EPIPE. click's own handling made that exit 1, "daemon error".
    daemon = start_daemon_process(*DAEMON_ARGS)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has left before the first byte
    try:
        out = subprocess.run(netmonctl_cmd("--socket", daemon.socket, *args), stdout=write_end,
                             stderr=subprocess.PIPE, text=True, timeout=30, cwd=REPO)
    finally:
        os.close(write_end)
    assert (out.returncode, out.stderr) == (0, "")


def test_watch_without_a_daemon_is_exit_3_with_a_hint(short_dir):
    out = subprocess.run(
        netmonctl_cmd("--socket", os.path.join(short_dir, "none.sock"), "watch"),
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )
    assert out.returncode == 3
    assert "start the daemon with" in out.stderr


def test_watch_usage_errors(short_dir):
    for args, needle in ((["--events", "nope"], "unknown event 'nope'"),
                         (["--format", "csv"], "csv is not supported"),
                         (["--duration", "0"], "more than 0")):
        out = subprocess.run(netmonctl_cmd("--socket", os.path.join(short_dir, "s"), "watch", *args),
                             capture_output=True, text=True, timeout=30, cwd=REPO)
        assert out.returncode == 2, (args, out.stderr)
        assert needle in out.stderr


# -- pure parts -------------------------------------------------------------------


ROW = {
    "protocol": "TCP", "local_addr": "127.0.0.1:5000", "remote_addr": "127.0.0.1:80",
    "state": "ESTABLISHED", "pid": 123, "process_name": "curl", "upload_speed": 1_200_000.0,
    "download_speed": 3_000.0, "bytes_sent": 1_000_000, "bytes_received": 2_000,
    "duration": 192.0, "first_seen": 100.0, "last_seen": 100.0,
}


def test_readable_lines():
    t = time.mktime((2024, 1, 1, 12, 0, 1, 0, 0, -1))
    opened = watch_cmd.readable_lines("connection_update", {"connections": [ROW]}, t)
    assert opened == ["12:00:01 OPEN  TCP 127.0.0.1:5000 -> 127.0.0.1:80 ESTABLISHED curl(123) "
                      "↑1.2 MB/s ↓3.0 kB/s"]
    changed = {**ROW, "last_seen": 105.0, "remote_addr": None, "pid": None, "process_name": None,
               "upload_speed": None}
    assert watch_cmd.readable_lines("connection_update", {"connections": [changed]}, t) == [
        "12:00:01 UPD   TCP 127.0.0.1:5000 -> * ESTABLISHED ? ↑- ↓3.0 kB/s"]
    closed = {**ROW, "state": "CLOSED"}
    assert watch_cmd.readable_lines("connection_closed", {"connections": [closed, closed]}, t) == [
        "12:00:01 CLOSE TCP 127.0.0.1:5000 -> 127.0.0.1:80 CLOSED curl(123) "
        "sent 1.0 MB recv 2.0 kB after 3m 12s"] * 2
    stats = {"total_upload_speed": 1000.0, "total_download_speed": 3000.0, "active_connections": 7,
             "top_app": "curl", "unattributed_upload_speed": 0.0, "unattributed_download_speed": 1000.0}
    assert watch_cmd.readable_lines("stats_update", stats, t) == [
        "12:00:01 STATS ↑1.0 kB/s ↓3.0 kB/s  7 active  top curl  unattributed 25%"]
    assert watch_cmd.readable_lines("bandwidth_data", {"timestamp": t, "upload": 5.0, "download": None}, t) == [
        "12:00:01 BW    ↑5 B/s ↓-"]
    assert watch_cmd.readable_lines("lagged", {"missed": 12}, t) == [
        "12:00:01 !     lagged: missed 12 updates (this client fell behind)"]
    evil = {**ROW, "process_name": "x\x1b[2Jy"}
    assert "\x1b" not in watch_cmd.readable_lines("connection_update", {"connections": [evil]}, t)[0]


def test_json_line_is_one_compact_object():
    line = watch_cmd.json_line("bandwidth_data", {"timestamp": 1.5, "upload": 1.0, "download": 2.0},
                               1700000000.12345)
    assert "\n" not in line
    assert json.loads(line) == {"event": "bandwidth_data", "timestamp": 1700000000.123,
                                "data": {"timestamp": 1.5, "upload": 1.0, "download": 2.0}}


def test_backoff_doubles_to_a_cap_and_resets():
    b = Backoff(0.2, 5.0)
    assert [b.next() for _ in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    b.reset()
    assert b.next() == 0.2
