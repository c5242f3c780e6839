"""What a hostile or careless local client can do to netmond: nothing lasting.

Bad frames, length bombs, wrong params, idle and half-open peers, too many
clients, a subscriber that stops reading, random bytes and random msgpack
(hypothesis), load and churn, and access control decided from peer
credentials (run as `nobody` through setpriv).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import msgpack
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import protocol
from common.client import Client, wait_for_daemon
from netmond.backends.base import Backend, Snapshot, SocketSample, now
from netmond.handlers import HANDLERS
from tests.helpers import REPO, throwaway_group, wait_until
from tests.integration.test_server import raw_exchange

# -- helpers -------------------------------------------------------------------


def exchange_until_eof(path: str, payload: bytes, timeout: float = 5.0) -> tuple[list, bool]:
    """Send payload, half-close, read until the daemon closes.

    Returns (decoded messages, whether the stream ended cleanly). Half-closing
    means the daemon sees EOF right after the payload, so no test waits for
    an idle timeout whatever the payload was.
    """
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    try:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon already gave up on us: fine, read what it said
        u = msgpack.Unpacker(raw=False, strict_map_key=False)
        msgs: list = []
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                return msgs, True
            if not data:
                return msgs, True
            u.feed(data)
            msgs.extend(u)
    except socket.timeout:
        return msgs, False
    finally:
        s.close()


def assert_is_response(msg: object) -> None:
    """A well-formed response: [1, msgid, nil|{code, message}, result]."""
    assert isinstance(msg, list) and len(msg) == 4 and msg[0] == protocol.RESPONSE, msg
    err = msg[2]
    if err is not None:
        assert set(err) == {"code", "message"}, err
        assert err["code"] in protocol.ERROR_CODES, err


class ChattyBackend(Backend):
    """Many sockets whose counters move every tick: a fat connection_update each time."""

    name = "chatty"
    per_socket_bytes = True

    def __init__(self, sockets: int = 300) -> None:
        self.count = sockets
        self.n = 0

    def sample(self) -> Snapshot:
        self.n += 1
        mono, wall = now()
        socks = [
            SocketSample(
                key=i, protocol="TCP", family="IPv4", local_ip="10.0.0.1", local_port=10000 + i,
                remote_ip="10.0.0.2", remote_port=443, state="ESTABLISHED", pid=1,
                process_name="chatty", user="root", bytes_sent=self.n * 1000, bytes_received=self.n * 2000,
            )
            for i in range(self.count)
        ]
        return Snapshot(mono, wall, socks)


# -- bad frames ----------------------------------------------------------------

BOMBS = [
    pytest.param(b"\xdb" + struct.pack(">I", 2**31), id="str32-2GiB"),
    pytest.param(b"\xc6" + struct.pack(">I", 2**31), id="bin32-2GiB"),
    pytest.param(b"\xc9" + struct.pack(">I", 2**31) + b"\x01", id="ext32-2GiB"),
    pytest.param(b"\xdd" + struct.pack(">I", 0xFFFFFFFF), id="array32-4G"),
    pytest.param(b"\xdf" + struct.pack(">I", 0xFFFFFFFF), id="map32-4G"),
    # the bomb inside an otherwise valid request
    pytest.param(b"\x94\x00\x01\xa6status\x91\xdf" + struct.pack(">I", 0xFFFFFFFF), id="params-map-4G"),
    pytest.param(msgpack.packb([0, 1, "status", [{"k": list(range(5000))}]]), id="array-over-4096"),
]


@pytest.mark.parametrize("payload", BOMBS)
def test_length_bombs_are_answered_too_large_and_disconnected(start_daemon_thread, payload):
    d = start_daemon_thread()
    rss_before = psutil.Process().memory_info().rss
    with d.client() as bystander:
        msgs, closed = raw_exchange(d.socket, payload)
        assert closed
        assert len(msgs) == 1
        assert_is_response(msgs[0])
        assert msgs[0][1] == 0 and msgs[0][2]["code"] == protocol.TOO_LARGE
        assert bystander.call("status")["monitoring"] is True
    # The header alone never made anyone allocate what it claimed.
    assert psutil.Process().memory_info().rss - rss_before < 32 * 1024 * 1024


def test_a_megabyte_of_tiny_objects_costs_milliseconds_not_seconds(start_daemon_thread):
    # The most objects a client can pack into the 1 MiB limit: decoding them
    # must not hold the event loop (the pure-Python msgpack needs ~4 s), and
    # the object budget (protocol.MAX_OBJECTS) stops the decoder early.
    d = start_daemon_thread()
    payload = msgpack.packb([0, 9, "status", [{"k": [[None] * 250] * 4000}]])
    assert len(payload) > 1_000_000
    t0 = time.monotonic()
    msgs, _ = exchange_until_eof(d.socket, payload)
    assert time.monotonic() - t0 < 1.0
    assert msgs[0][1] == 0 and msgs[0][2]["code"] == protocol.TOO_LARGE
    assert "objects in one message" in msgs[0][2]["message"]


def test_a_slow_but_honest_sender_is_answered(start_daemon_thread):
    d = start_daemon_thread()
    request = protocol.pack_request(5, "bandwidth_history", {"seconds": 30})
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(d.socket)
    with s:
        s.sendall(request[:7])
        time.sleep(0.8)  # past the stall check: nothing wrong in the first bytes
        s.sendall(request[7:])
        u = msgpack.Unpacker(raw=False)
        while not (msgs := list(u)):
            u.feed(s.recv(65536))
    assert msgs[0][1] == 5 and msgs[0][2] is None


@pytest.mark.parametrize("value", [
    {"method": "status"},
    [],
    [0],
    [0, "one", "status", [{}]],  # msgid not an integer
    [0, True, "status", [{}]],  # a bool is not a msgid
    [0, 1, 5, [{}]],  # method not a string
    [0, 1, "status", [{}], "extra"],
    [2, "status", {}],  # a notification's params must be an array
    [2, 5, []],  # ... and its method a string
    [1, 1, None, {}],  # clients answer nothing: netmond sends no requests
    [7, 1, "status", [{}]],
    ["SECRET-PAYLOAD-MARKER", 1],
])
def test_valid_msgpack_that_is_no_request_is_a_protocol_error(start_daemon_thread, caplog, value):
    d = start_daemon_thread()
    with caplog.at_level(logging.INFO, logger="netmond"):
        msgs, closed = exchange_until_eof(d.socket, msgpack.packb(value))
        assert closed and len(msgs) == 1
        assert_is_response(msgs[0])
        assert msgs[0][2]["code"] == protocol.PROTOCOL_ERROR
        with d.client() as c:
            assert c.call("status")["monitoring"] is True
    # One line about that client, and no payload in it.
    lines = [r.getMessage() for r in caplog.records if r.name == "netmond.server"]
    assert len(lines) == 1, lines
    assert "SECRET" not in lines[0] and "protocol_error" in lines[0]


def test_client_notifications_get_no_answer_and_keep_the_connection(start_daemon_thread, caplog):
    # The spec lets a client notify and forbids an answer (pynvim opens with one).
    d = start_daemon_thread()
    payload = b"".join([
        msgpack.packb([2, b"nvim_set_client_info", ["x", {}, "remote", {}, {}]], use_bin_type=True),
        msgpack.packb([2, "SECRET-PAYLOAD-MARKER", []]),
        msgpack.packb([2, b"\xff\xfe", []], use_bin_type=True),  # not UTF-8: still only ignored
        protocol.pack_request(3, "status"),
    ])
    with caplog.at_level(logging.DEBUG, logger="netmond"):
        msgs, ended = exchange_until_eof(d.socket, payload)
    assert ended and len(msgs) == 1 and msgs[0][1] == 3 and msgs[0][2] is None
    lines = [r.getMessage() for r in caplog.records if r.name == "netmond.server"]
    assert [r.levelno for r in caplog.records if r.name == "netmond.server"] == [logging.DEBUG] * 3, lines
    assert "3 so far" in lines[-1] and not any("SECRET" in line for line in lines)


def test_a_flood_of_notifications_is_logged_within_a_budget(start_daemon_thread, caplog):
    d = start_daemon_thread()
    payload = msgpack.packb([2, "ping", [{}]]) * 500 + protocol.pack_request(4, "status")
    with caplog.at_level(logging.DEBUG, logger="netmond"):
        msgs, ended = exchange_until_eof(d.socket, payload)
    assert ended and [m[1] for m in msgs] == [4]
    lines = [r for r in caplog.records if r.name == "netmond.server"]
    assert len(lines) == d.daemon.server.debug_note.burst
    assert d.daemon.server.note._count == 0  # and no warning budget spent


def test_method_names_sent_as_bin_are_utf8(start_daemon_thread):
    d = start_daemon_thread()
    payload = b"".join([
        msgpack.packb([0, 1, "status".encode(), [{}]], use_bin_type=True),
        msgpack.packb([0, 2, b"\xc3\x28", [{}]], use_bin_type=True),  # invalid UTF-8
        msgpack.packb([0, 3, "h\u00e9llo".encode(), [{}]], use_bin_type=True),
        protocol.pack_request(4, "hello"),
    ])
    msgs, ended = exchange_until_eof(d.socket, payload)
    assert ended and [m[1] for m in msgs] == [1, 2, 3, 4]
    assert msgs[0][2] is None and "monitoring" in msgs[0][3]
    assert msgs[1][2]["code"] == protocol.PROTOCOL_ERROR  # that message only
    assert msgs[2][2]["code"] == protocol.UNKNOWN_METHOD and "h\u00e9llo" in msgs[2][2]["message"]
    assert msgs[3][2] is None


def test_garbage_is_logged_as_one_line_without_payload(start_daemon_thread, caplog):
    d = start_daemon_thread()
    with caplog.at_level(logging.INFO, logger="netmond"):
        msgs, closed = exchange_until_eof(d.socket, b"\xc1SECRET-PAYLOAD-MARKER" * 10)
        assert closed and msgs[0][2]["code"] == protocol.PROTOCOL_ERROR
        wait_until(lambda: not d.daemon.server.sessions)
    lines = [r.getMessage() for r in caplog.records if r.name == "netmond.server"]
    assert len(lines) == 1 and "SECRET" not in lines[0], lines
    assert "pid=" in lines[0] and "uid=" in lines[0]  # names the peer instead


def test_a_client_reconnecting_with_garbage_cannot_flood_the_log(start_daemon_thread, caplog):
    d = start_daemon_thread()
    with caplog.at_level(logging.INFO, logger="netmond"):
        for _ in range(200):
            exchange_until_eof(d.socket, b"\xc1")
        with d.client() as c:
            assert c.call("status")["monitoring"] is True
    lines = [r for r in caplog.records if r.name == "netmond.server"]
    assert len(lines) == d.daemon.server.note.burst


def test_the_log_budget_summarises_what_it_suppressed(caplog):
    from netmond.server import LogBudget

    budget = LogBudget(burst=2, period=0.2)
    with caplog.at_level(logging.INFO, logger="netmond.server"):
        for i in range(5):
            budget(logging.WARNING, "problem %d", i)
        time.sleep(0.25)
        budget(logging.WARNING, "problem %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "problem 0", "problem 1", caplog.records[2].getMessage(), "problem 5"]
    assert caplog.records[2].getMessage().startswith("3 more client problems were not logged")


def test_wrong_params_get_invalid_params_and_keep_the_connection(start_daemon_thread):
    d = start_daemon_thread()
    payload = b"".join(msgpack.packb(m) for m in [
        [0, 11, "status", "not-an-array"],
        [0, 12, "status", [1, 2]],
        [0, 13, "status", [{"bogus": 1}]],
        [0, 14, "connections", [{"filter": "everything"}]],
        [0, 15, "bandwidth_history", [{"seconds": float("nan")}]],
        [0, 16, "configure", [{"interval": float("inf")}]],
        [0, 17, "subscribe", [{"topics": "stats_update"}]],
        [0, 18, "no_such_method", []],
        [0, 19, "status", []],
    ])
    msgs, closed = exchange_until_eof(d.socket, payload)
    assert closed
    for m in msgs:
        assert_is_response(m)
    by_id = {m[1]: m for m in msgs}
    assert sorted(by_id) == list(range(11, 20))
    for msgid in range(11, 18):
        assert by_id[msgid][2]["code"] == protocol.INVALID_PARAMS, by_id[msgid]
    assert by_id[18][2]["code"] == protocol.UNKNOWN_METHOD
    assert by_id[19][2] is None and by_id[19][3]["monitoring"] is True


# -- time: idle, half-open, slow senders ------------------------------------------


def test_idle_half_sent_and_trickling_clients_time_out_subscribers_stay(start_daemon_thread):
    d = start_daemon_thread(client_idle_timeout=1)
    silent = socket.socket(socket.AF_UNIX)
    half = socket.socket(socket.AF_UNIX)
    trickle = socket.socket(socket.AF_UNIX)
    for s in (silent, half, trickle):
        s.connect(d.socket)
    half.sendall(b"\x94\x00\x01")  # the first bytes of a request, never finished
    trickle.sendall(b"\x94\x00\x01\xda\x10\x00")  # a 4 KiB method name ...
    sub = d.client()
    sub.call("subscribe", {"topics": ["stats_update"]})
    t0 = time.monotonic()
    stop = threading.Event()

    def drip() -> None:  # ... sent one byte every 0.3 s: never idle, never done
        while not stop.is_set():
            try:
                trickle.send(b"x")
            except OSError:
                return
            time.sleep(0.3)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        for s in (silent, half, trickle):
            s.settimeout(5)
            while s.recv(4096):  # a last error response, if any, then EOF
                pass
        elapsed = time.monotonic() - t0
        assert 0.8 < elapsed < 4, elapsed
        # The subscriber sent nothing either, but it listens: it stays.
        note = sub.next_notification(timeout=2)
        assert note is not None and note.method == "stats_update"
        assert d.daemon.server.client_count == 1
    finally:
        stop.set()
        for s in (silent, half, trickle):
            s.close()
        sub.close()


# -- count: the client cap --------------------------------------------------------


def test_a_flood_beyond_the_cap_is_refused_without_leaking_descriptors(start_daemon_thread):
    d = start_daemon_thread(max_clients=4)
    me = psutil.Process()
    held = [d.client() for _ in range(4)]
    fds_before = me.num_fds()
    refused = 0
    for _ in range(300):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(d.socket)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        s.close()
        u = msgpack.Unpacker(raw=False)
        u.feed(data)
        (msg,) = list(u)
        assert_is_response(msg)
        refused += msg[2]["code"] == protocol.TOO_MANY_CLIENTS
    for c in held:
        c.close()
    assert refused == 300
    wait_until(lambda: d.daemon.server.client_count == 0)
    assert me.num_fds() <= fds_before


# -- queue: a subscriber that stops reading ---------------------------------------------


def test_a_subscriber_that_stops_reading_lags_and_stalls_nobody(start_daemon_thread):
    d = start_daemon_thread(ChattyBackend(), interval=0.1, subscriber_queue=8)
    stalled = d.client()
    # A small receive buffer so that the socket fills quickly (the daemon's
    # send buffer and transport still hold a few hundred KiB: bounded).
    stalled._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.call("subscribe", {})
    session = wait_until(lambda: next((s for s in d.daemon.server.sessions if s.topics), None))
    rss_before = psutil.Process().memory_info().rss
    with d.client() as other:
        ticks = other.call("status")["ticks"]
        slowest = 0.0
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # not a wait: measures status latency for 2.5 s
            t0 = time.monotonic()
            status = other.call("status")
            slowest = max(slowest, time.monotonic() - t0)
            # bounded: at most queue_size updates wait, plus what the transport holds
            assert session.queued <= 8
            assert session.writer.transport.get_write_buffer_size() < 2 * 1024 * 1024
            time.sleep(0.05)
        assert status["ticks"] >= ticks + 10, "sampling stalled"
        assert slowest < 0.5, f"another client waited {slowest:.2f}s"
    assert session._missed > 0 or any(not u for u, _ in session._queue)
    assert psutil.Process().memory_info().rss - rss_before < 40 * 1024 * 1024
    # Reading again: the backlog, then `lagged` with how many were missed.
    for _ in range(200):
        note = stalled.next_notification(timeout=5)
        assert note is not None
        if note.method == protocol.LAGGED:
            assert note.payload["missed"] > 0
            break
    else:
        pytest.fail("no lagged notification")
    # ... and the stream goes on after it.
    assert stalled.next_notification(timeout=5) is not None
    stalled.close()


def test_a_subscriber_that_never_reads_is_dropped_after_the_idle_timeout(start_daemon_thread, caplog):
    d = start_daemon_thread(ChattyBackend(), interval=0.1, subscriber_queue=4, client_idle_timeout=1)
    with caplog.at_level(logging.INFO, logger="netmond.server"):
        stalled = d.client()
        stalled._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.call("subscribe", {"topics": ["connection_update"]})
        wait_until(lambda: d.daemon.server.client_count == 0, timeout=10)
        stalled.close()
    assert any("stopped reading" in r.getMessage() for r in caplog.records)


# -- random input (hypothesis) ----------------------------------------------------------

SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(SCALARS.filter(
        lambda k: not isinstance(k, float) or k == k), children, max_size=5),
    max_leaves=25,
)
PARAM_KEYS = st.sampled_from(
    ["client_version", "filter", "include_closed", "fields", "seconds", "action",
     "interval", "topics"]
)
FILTER_KEYS = st.sampled_from(
    ["proc", "pid", "proto", "state", "scope", "remote_only", "listening", "port", "ip",
     "search", "family", "bogus"]
)
PARAMS = st.dictionaries(
    PARAM_KEYS | st.text(max_size=8),
    VALUES | st.dictionaries(FILTER_KEYS, VALUES, max_size=4),
    max_size=4,
)
REQUESTS = st.builds(
    lambda msgid, method, params: [0, msgid, method, params],
    st.integers(1, 2**32),
    st.sampled_from(sorted(HANDLERS)) | st.text(max_size=12),
    st.lists(PARAMS, min_size=1, max_size=1) | VALUES,
)
FUZZ = settings(max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PROBE_ID = 2**40  # no generated request uses it


@pytest.fixture
def fuzz_daemon(start_daemon_thread):
    """One daemon for all examples of a test, and a bystander that must stay served."""
    d = start_daemon_thread()
    with d.client() as bystander:
        yield d, bystander
        assert bystander.call("status")["monitoring"] in (True, False)


def check_still_serving(d, bystander) -> None:
    assert bystander.call("hello")["protocol"] == protocol.PROTOCOL_VERSION
    with d.client(timeout=5) as fresh:
        assert "ticks" in fresh.call("status")


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_never_hurt_the_daemon(fuzz_daemon, data):
    d, bystander = fuzz_daemon
    msgs, ended = exchange_until_eof(d.socket, data)
    assert ended
    for m in msgs:
        assert_is_response(m)
        assert m[2] is None or m[2]["code"] != protocol.INTERNAL
    check_still_serving(d, bystander)


@FUZZ
@given(value=VALUES | REQUESTS)
def test_random_msgpack_values_get_an_answer_or_a_clean_disconnect(fuzz_daemon, value):
    d, bystander = fuzz_daemon
    payload = msgpack.packb(value, use_bin_type=True) + protocol.pack_request(PROBE_ID, "status")
    msgs, ended = exchange_until_eof(d.socket, payload)
    assert ended and msgs
    for m in msgs:
        assert_is_response(m)
        assert m[2] is None or m[2]["code"] != protocol.INTERNAL, m
    if msgs[-1][1] == 0:  # not a request: refused, and the probe never read
        assert msgs[-1][2]["code"] in (protocol.PROTOCOL_ERROR, protocol.TOO_LARGE)
    else:  # a request (answered, rightly or with an error), then the probe
        assert msgs[-1][1] == PROBE_ID and msgs[-1][2] is None
        if isinstance(value, list) and len(value) == 4 and value[0] == 0 and isinstance(value[2], str):
            assert [m[1] for m in msgs] == [value[1], PROBE_ID]
    check_still_serving(d, bystander)


# -- load and churn -----------------------------------------------------------------------


def test_load_100_concurrent_clients_times_10_calls(start_daemon_process):
    d = start_daemon_process("--backend", "portable", "--include-loopback")
    n_clients, n_calls = 100, 10
    barrier = threading.Barrier(n_clients)
    errors: list[BaseException] = []
    durations: list[float] = []
    methods = ["status", "connections", "stats", "apps", "bandwidth_history"]

    def worker(i: int) -> None:
        try:
            with Client.connect(d.socket, timeout=30) as c:
                c.hello()
                barrier.wait(30)  # all 100 connected at once
                t0 = time.monotonic()
                for k in range(n_calls):
                    c.call(methods[(i + k) % len(methods)])
                durations.append(time.monotonic() - t0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wall = time.monotonic() - t0
    assert not errors, errors[:3]
    assert len(durations) == n_clients
    print(f"\nload: {n_clients}x{n_calls} calls in {wall:.2f}s; slowest client {max(durations):.2f}s")
    assert wall < 30


def _churn(path: str, unix_conns: int, tcp_conns: int, procs: int) -> None:
    """Sessions on the daemon socket, loopback TCP pairs, short-lived processes."""
    for i in range(unix_conns):
        with Client.connect(path, timeout=10) as c:
            if i % 2:
                c.hello()  # half do a call, half just connect and leave
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(512)
    port = lst.getsockname()[1]
    linger0 = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT rows left behind
    for start in range(0, tcp_conns, 250):
        pairs = []
        for _ in range(min(250, tcp_conns - start)):
            c = socket.create_connection(("127.0.0.1", port))
            pairs.append((c, lst.accept()[0]))
        time.sleep(0.12)  # live across a tick: rows are created, then closed
        for pair in pairs:
            for sk in pair:
                sk.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
                sk.close()
    code = (
        "import socket,struct,time;"
        f"c=socket.create_connection(('127.0.0.1',{port}));time.sleep(0.3);"
        "c.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0))"
    )
    for start in range(0, procs, 10):
        batch = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(min(10, procs - start))]
        accepted = [lst.accept()[0] for _ in batch]
        for p in batch:
            assert p.wait(30) == 0
        for sk in accepted:
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
            sk.close()
    lst.close()


def churn_and_measure(workdir: str) -> dict:
    """Start a netmond, churn, and report its RSS before and after (JSON-able).

    Runs in whatever network namespace it is called in: the test calls it
    in a private one, so that the daemon's table holds our sockets only and
    nothing else on the machine moves its memory.
    """
    from tests.conftest import netmond_cmd

    sock = os.path.join(workdir, "churn.sock")
    with open(os.path.join(workdir, "churn.log"), "wb") as log:
        proc = subprocess.Popen(
            netmond_cmd("--socket", sock, "--backend", "portable", "--include-loopback",
                        "--closed-retention", "0.1", "--interval", "0.1"),
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    try:
        wait_for_daemon(sock, timeout=15)
        rss = lambda: psutil.Process(proc.pid).memory_info().rss  # noqa: E731
        _churn(sock, 300, 2000, 10)  # warm-up: caches, allocator arenas, peak table size
        time.sleep(1.0)  # the warm-up's rows close and expire: a table left to shrink
        before = rss()
        t0 = time.monotonic()
        _churn(sock, 2000, 2000, 50)
        took = time.monotonic() - t0
        time.sleep(1.0)  # closed rows expire (0.1 s retention)
        after = rss()
        with Client.connect(sock) as c:
            status = c.call("status")
    finally:
        proc.terminate()
        proc.wait(10)
    return {"before": before, "after": after, "took": took, "clients": status["clients"],
            "closed_retained": status["closed_retained"], "connections": status["connections"]}


CHURN_IN_NETNS = """
import json, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
from tests.integration.test_hardening import churn_and_measure
print(json.dumps(churn_and_measure(sys.argv[1])))
"""


def test_churn_keeps_the_daemon_rss_flat(short_dir):
    isolated = os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip")
    if isolated:
        out = subprocess.run(["unshare", "--net", "--", sys.executable, "-c", CHURN_IN_NETNS, short_dir],
                             capture_output=True, text=True, timeout=120, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr[-3000:]
        r = json.loads(out.stdout.strip().splitlines()[-1])
    else:  # shares the machine's sockets: other activity may add noise
        r = churn_and_measure(short_dir)
    print(f"\nchurn: 2000 sessions + 2000 tcp + 50 procs in {r['took']:.1f}s; "
          f"rss {r['before'] / 2**20:.1f} -> {r['after'] / 2**20:.1f} MiB")
    assert r["clients"] == 1 and r["closed_retained"] < 50 and r["connections"] < 50
    assert r["after"] - r["before"] < 4 * 1024 * 1024


# -- access control: peer credentials (run as nobody) -------------------------------------

NOBODY = 65534
PEER_SCRIPT = r'''
import errno, socket, sys
path, request = sys.argv[1], bytes.fromhex(sys.argv[2])
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
try:
    s.connect(path)
except OSError as e:
    print("ERRNO", errno.errorcode.get(e.errno, e.errno))
    sys.exit(0)
s.sendall(request)
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print("DATA", data.hex())
'''
needs_root_tools = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("groupadd")
    or not os.path.exists("/usr/bin/python3"),
    reason="needs root, setpriv, groupadd and a system python3 runnable by nobody",
)


@pytest.fixture(scope="module")
def test_group():
    """A throw-away group (name, gid); nobody is not a member."""
    with throwaway_group() as group:
        yield group


def as_nobody(short_dir: str, sock: str, requests: list[tuple[str, dict]], groups: list[int] | None = None):
    """Run PEER_SCRIPT as uid/gid 65534; returns ("ERRNO", name) or ("DATA", {msgid: response})."""
    script = os.path.join(short_dir, "peer.py")
    with open(script, "w") as fh:
        fh.write(PEER_SCRIPT)
    os.chmod(script, 0o644)
    payload = b"".join(protocol.pack_request(i + 1, m, p) for i, (m, p) in enumerate(requests))
    group_args = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    out = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", *group_args,
         "/usr/bin/python3", "-I", script, sock, payload.hex()],
        capture_output=True, text=True, timeout=30, cwd="/",
    )
    assert out.returncode == 0, out.stderr
    kind, value = out.stdout.split()
    if kind == "ERRNO":
        return kind, value
    u = msgpack.Unpacker(raw=False)
    u.feed(bytes.fromhex(value))
    return kind, {m[1]: m for m in u}


CALLS = [("hello", {}), ("status", {}), ("control", {"action": "stop"}),
         ("configure", {"interval": 0.5}), ("control", {"action": "start"})]


@needs_root_tools
def test_root_daemon_socket_is_0660_with_its_group_and_refuses_others(start_daemon_thread, short_dir, test_group):
    name, gid = test_group
    d = start_daemon_thread(socket_group=name)
    st_ = os.stat(d.socket)
    assert (oct(st_.st_mode & 0o777), st_.st_uid, st_.st_gid) == ("0o660", 0, gid)
    assert as_nobody(short_dir, d.socket, CALLS) == ("ERRNO", "EACCES")


@needs_root_tools
def test_group_members_may_query_and_control(start_daemon_thread, short_dir, test_group):
    name, gid = test_group
    d = start_daemon_thread(socket_group=name)
    kind, answers = as_nobody(short_dir, d.socket, CALLS, groups=[gid])
    assert kind == "DATA"
    for msgid in range(1, 6):
        assert answers[msgid][2] is None, answers[msgid]
    assert answers[3][3] == {"monitoring": False} and answers[4][3] == {"interval": 0.5}


@needs_root_tools
def test_control_is_decided_by_peer_credentials_not_only_by_the_file_mode(start_daemon_thread, short_dir, test_group):
    # Should an admin open the socket to everyone (chmod 666), others may look
    # but still not touch: control rights come from the kernel's credentials.
    name, _ = test_group
    d = start_daemon_thread(socket_group=name)
    os.chmod(d.socket, 0o666)
    kind, answers = as_nobody(short_dir, d.socket, CALLS)
    assert kind == "DATA"
    assert answers[1][2] is None and answers[2][2] is None  # hello, status
    for msgid in (3, 4, 5):
        assert answers[msgid][2]["code"] == protocol.ACCESS_DENIED, answers[msgid]
        assert "group" in answers[msgid][2]["message"]
    with d.client() as root:  # root is never refused, and nothing was changed
        status = root.call("status")
        assert status["monitoring"] is True and status["interval"] == 0.2
        assert root.call("control", {"action": "stop"}) == {"monitoring": False}
