"""LinuxBackend on real loopback sockets (127.0.0.1 and ::1 only).

Each test drives the backend directly (start, sample, close) while this
process moves a known number of bytes, and checks what the kernel counters
say, on both ends of each connection. Every loop is bounded in count and
time; every socket is closed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from netmond.backends.base import Snapshot, SocketSample
from netmond.backends.linux import LinuxBackend, netlink_available
from netmond.backends.netlink import DESTROY_GROUPS_MASK
from netmond.backends.sockdiag import DestroyListener, open_sock_diag_socket
from tests.helpers import wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not netlink_available(),
    reason="needs Linux with NETLINK_SOCK_DIAG",
)

REPO = Path(__file__).resolve().parents[2]
IO_TIMEOUT = 20.0


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# -- helpers -------------------------------------------------------------------


@pytest.fixture
def backend():
    b = LinuxBackend()
    b.start()
    try:
        yield b
    finally:
        b.close()


@contextlib.contextmanager
def tcp_pair(host: str = "127.0.0.1", family: int = socket.AF_INET, connect_to: str | None = None,
             client_family: int | None = None):
    """(client, server) connected over loopback; everything closed on exit."""
    listener = socket.socket(family)
    opened = [listener]
    try:
        listener.bind((host, 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        client = socket.socket(client_family or family)
        opened.append(client)
        client.settimeout(IO_TIMEOUT)
        client.connect((connect_to or host, port))
        server, _ = listener.accept()
        opened.append(server)
        server.settimeout(IO_TIMEOUT)
        yield client, server
    finally:
        for s in opened:
            s.close()


def send_exactly(sock: socket.socket, n: int) -> None:
    chunk = b"\xa5" * 65536
    left = n
    while left:
        left -= sock.send(chunk[: min(left, len(chunk))])


def recv_exactly(sock: socket.socket, n: int) -> None:
    left = n
    while left:
        data = sock.recv(min(left, 1 << 20))
        if not data:
            raise AssertionError(f"EOF with {left} bytes still expected")
        left -= len(data)


def transfer(a: socket.socket, b: socket.socket, a_to_b: int, b_to_a: int) -> None:
    """Move a_to_b bytes from a to b and b_to_a back, concurrently."""
    errors: list[BaseException] = []

    def run(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(send_exactly, a, a_to_b)),
        threading.Thread(target=run, args=(recv_exactly, b, a_to_b)),
        threading.Thread(target=run, args=(send_exactly, b, b_to_a)),
        threading.Thread(target=run, args=(recv_exactly, a, b_to_a)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(IO_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "transfer stuck"
    assert not errors, errors


def graceful_close(client: socket.socket, server: socket.socket) -> None:
    """FIN both ways, each side reading the other's EOF, then close both."""
    client.shutdown(socket.SHUT_WR)
    assert server.recv(1) == b""
    server.shutdown(socket.SHUT_WR)
    assert client.recv(1) == b""
    client.close()
    server.close()


SO_COOKIE = getattr(socket, "SO_COOKIE", 57)


def cookie_of(sock: socket.socket) -> int:
    """The kernel's socket cookie, as sock_diag reports it (idiag_cookie)."""
    return struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


def key_of(sock: socket.socket) -> int:
    """The backend's key of a socket, TCP or UDP: its kernel socket cookie."""
    return cookie_of(sock)


def by_key(samples: list[SocketSample]) -> dict:
    return {s.key: s for s in samples}


def sample_until(backend: LinuxBackend, done, timeout: float = 10.0, pause: float = 0.05) -> Snapshot:
    """Sample until done(snapshot) is true; fails after `timeout` seconds."""
    return wait_until(backend.sample, timeout, pause, until=done)


def collect_closed(backend: LinuxBackend, keys: set, timeout: float = 10.0) -> dict:
    """Closed samples for all `keys`, gathered over as many samples as needed."""
    found: dict = {}

    def gather() -> set:
        found.update((s.key, s) for s in backend.sample().closed if s.key in keys)
        return keys - found.keys()

    try:
        wait_until(gather, timeout, 0.02, what=f"destroy events for {keys}", until=lambda missing: not missing)
    except AssertionError as e:
        raise AssertionError(f"{e}; the backend's warnings: {backend.status().warnings}") from None
    return found


def within(value: int | None, expected: int, fraction: float) -> bool:
    return value is not None and abs(value - expected) <= expected * fraction


MY_NAME = psutil.Process().name()


# -- the tests ------------------------------------------------------------------


def test_netlink_is_available() -> None:
    assert netlink_available()


def test_bulk_transfer_counted_on_both_ends_with_pid(backend) -> None:
    up, down = 5_000_000, 3_000_000
    with tcp_pair() as (client, server):
        ckey, skey = key_of(client), key_of(server)
        transfer(client, server, up, down)

        def settled(snap):
            rows = by_key(snap.sockets)
            return ckey in rows and skey in rows and rows[ckey].bytes_sent == up and rows[skey].bytes_sent == down

        rows = by_key(sample_until(backend, settled).sockets)
        c, s = rows[ckey], rows[skey]
        assert (c.protocol, c.family, c.state) == ("TCP", "IPv4", "ESTABLISHED")
        assert within(c.bytes_sent, up, 0.01) and within(c.bytes_received, down, 0.01)
        assert within(s.bytes_sent, down, 0.01) and within(s.bytes_received, up, 0.01)
        for row in (c, s):
            assert row.pid == os.getpid()
            assert row.process_name == MY_NAME
            assert row.user == "root" or row.user == psutil.Process().username()

        graceful_close(client, server)
        closed = collect_closed(backend, {ckey, skey})
    # Final counters: exactly the payload, both ends, both directions.
    c, s = closed[ckey], closed[skey]
    assert (c.bytes_sent, c.bytes_received) == (up, down)
    assert (s.bytes_sent, s.bytes_received) == (down, up)
    assert c.pid == s.pid == os.getpid() and c.process_name == MY_NAME
    # The client's TIME_WAIT remnant is not reported again after its destroy event.
    for _ in range(3):
        snap = backend.sample()
        assert ckey not in by_key(snap.sockets) and skey not in by_key(snap.sockets)


def test_client_closing_first_keeps_exact_counters(backend) -> None:
    """The usual HTTP pattern: one side closes without waiting for the peer's FIN."""
    with tcp_pair() as (client, server):
        ckey, skey = key_of(client), key_of(server)
        transfer(client, server, 1000, 700)
        sample_until(backend, lambda snap: getattr(by_key(snap.sockets).get(ckey), "bytes_sent", 0) == 1000)
        client.close()  # FIN, not waiting for the server's
        assert server.recv(1) == b""
        server.close()
        closed = collect_closed(backend, {ckey, skey})
    assert (closed[ckey].bytes_sent, closed[ckey].bytes_received) == (1000, 700)
    assert (closed[skey].bytes_sent, closed[skey].bytes_received) == (700, 1000)


def test_short_connections_between_two_samples_are_counted(backend) -> None:
    count, size = 30, 100_000
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(count)
    port = listener.getsockname()[1]
    server_errors: list[BaseException] = []

    def serve() -> None:
        try:
            for _ in range(count):
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(IO_TIMEOUT)
                    recv_exactly(conn, size)
                    assert conn.recv(1) == b""
                    send_exactly(conn, size)
        except BaseException as exc:  # noqa: BLE001
            server_errors.append(exc)

    before = backend.sample()
    server = threading.Thread(target=serve)
    server.start()
    client_keys = set()
    t0 = time.monotonic()
    try:
        for _ in range(count):
            with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as c:
                client_keys.add(key_of(c))
                send_exactly(c, size)
                c.shutdown(socket.SHUT_WR)
                recv_exactly(c, size)
                assert c.recv(1) == b""
        elapsed = time.monotonic() - t0
        server.join(IO_TIMEOUT)
    finally:
        listener.close()
    assert not server_errors, server_errors
    assert elapsed < 5.0
    closed = collect_closed(backend, client_keys)
    assert not client_keys & by_key(before.sockets).keys()
    sent = sum(closed[k].bytes_sent for k in client_keys)
    received = sum(closed[k].bytes_received for k in client_keys)
    assert within(sent, count * size, 0.05), sent
    assert within(received, count * size, 0.05), received
    # Never in a dump: no pid to remember, but the kernel's uid is known.
    for k in client_keys:
        assert closed[k].pid is None and closed[k].state == "CLOSE"
        assert closed[k].user == psutil.Process().username()


CHILD_CLIENT = textwrap.dedent(
    """
    import socket, struct, sys, time
    c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    c.sendall(b"x" * 5000)
    print(struct.unpack("=Q", c.getsockopt(socket.SOL_SOCKET, 57, 8))[0], flush=True)  # SO_COOKIE
    time.sleep(60)
    """
)


def test_socket_of_a_process_that_exits(backend) -> None:
    """Its row is attributed while it lives, its destroy event after it died."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        child = subprocess.Popen([sys.executable, "-c", CHILD_CLIENT, str(port)], stdout=subprocess.PIPE, text=True)
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(IO_TIMEOUT)
                recv_exactly(conn, 5000)
                ckey = int(child.stdout.readline())
                # The owner of a new process's socket is found by a walk of
                # /proc, at most one a second (procfd.SocketOwners): the row
                # may come a tick before its owner, on a busy machine more.
                rows = by_key(sample_until(
                    backend, lambda snap: getattr(by_key(snap.sockets).get(ckey), "pid", None) is not None).sockets)
                child_name = psutil.Process(child.pid).name()
                assert rows[ckey].pid == child.pid and rows[ckey].process_name == child_name
                child.kill()
                child.wait(IO_TIMEOUT)
                assert conn.recv(1) == b""  # the kernel closed the child's socket
                gone = backend.sample()  # the process is gone: no exception
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(IO_TIMEOUT)
            child.stdout.close()
        # The destroy event may have come with the sample just taken.
        closed = {s.key: s for s in gone.closed if s.key == ckey} or collect_closed(backend, {ckey})
    assert (closed[ckey].pid, closed[ckey].process_name) == (child.pid, child_name)
    assert closed[ckey].bytes_sent == 5000


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1")
def test_ipv6_connection(backend) -> None:
    with tcp_pair("::1", socket.AF_INET6) as (client, server):
        ckey, skey = key_of(client), key_of(server)
        transfer(client, server, 200_000, 50_000)

        def settled(snap):
            rows = by_key(snap.sockets)
            # both ends, each after its last ACK (the server's 50 kB may be acked later)
            return (ckey in rows and skey in rows and rows[ckey].bytes_sent == 200_000
                    and rows[skey].bytes_sent == 50_000)

        rows = by_key(sample_until(backend, settled).sockets)
        c, s = rows[ckey], rows[skey]
        assert (c.family, c.local_ip, c.remote_ip) == ("IPv6", "::1", "::1")
        assert (c.bytes_sent, c.bytes_received) == (200_000, 50_000)
        assert (s.bytes_sent, s.bytes_received) == (50_000, 200_000)
        assert c.pid == os.getpid()
        graceful_close(client, server)
        closed = collect_closed(backend, {ckey, skey})  # the IPv6 destroy group
    assert (closed[ckey].family, closed[ckey].bytes_sent, closed[ckey].bytes_received) == ("IPv6", 200_000, 50_000)


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6")
def test_ipv4_mapped_ipv6_client(backend) -> None:
    # An AF_INET6 socket talking to 127.0.0.1 through the v4-mapped address.
    with tcp_pair("127.0.0.1", socket.AF_INET, connect_to="::ffff:127.0.0.1",
                  client_family=socket.AF_INET6) as (client, server):
        local = client.getsockname()
        ckey = key_of(client)
        assert local[0] == "::ffff:127.0.0.1"
        transfer(client, server, 10_000, 0)
        rows = by_key(sample_until(backend, lambda snap: ckey in by_key(snap.sockets)).sockets)
        c = rows[ckey]
        assert (c.family, c.local_ip, c.remote_ip) == ("IPv6", "::ffff:127.0.0.1", "::ffff:127.0.0.1")
        assert c.bytes_sent == 10_000
        s = rows[key_of(server)]
        assert s.family == "IPv4" and s.bytes_received == 10_000


def test_listeners_sharing_a_port_have_distinct_keys(backend) -> None:
    listeners = []
    try:
        for _ in range(2):
            s = socket.socket()
            listeners.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", listeners[0].getsockname()[1] if len(listeners) > 1 else 0))
            s.listen(1)
        port = listeners[0].getsockname()[1]
        snap = backend.sample()
        rows = [s for s in snap.sockets if s.protocol == "TCP" and s.local_port == port and s.state == "LISTEN"]
        assert sorted(r.key for r in rows) == sorted(key_of(s) for s in listeners)
        for row in rows:
            assert row.remote_ip is None and row.remote_port is None
            assert row.local_ip == "127.0.0.1"
            assert row.pid == os.getpid() and row.bytes_sent == 0
    finally:
        for s in listeners:
            s.close()


def test_udp_sockets_are_listed_without_counters(backend) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unconnected, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as connected:
        unconnected.bind(("127.0.0.1", 0))
        connected.connect(unconnected.getsockname())
        connected.send(b"hello")
        snap = backend.sample()
        udp = [s for s in snap.sockets if s.protocol == "UDP"]
        port = unconnected.getsockname()[1]
        [u] = [s for s in udp if s.local_port == port]
        assert (u.state, u.remote_ip, u.remote_port, u.bytes_sent, u.bytes_received) == ("NONE", None, None, None, None)
        assert u.key == key_of(unconnected) and u.pid == os.getpid()
        [c] = [s for s in udp if s.key == key_of(connected)]
        assert (c.remote_ip, c.remote_port, c.bytes_sent) == ("127.0.0.1", port, None)


def test_failed_connects_are_not_reported_closed(backend) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]  # nothing listens on it once closed
    for _ in range(5):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", dead_port)) == errno.ECONNREFUSED
    time.sleep(0.1)
    closed = backend.sample().closed + backend.sample().closed
    assert not [s for s in closed if s.remote_port == dead_port]


def test_time_wait_from_before_start_is_reported_without_counters() -> None:
    with tcp_pair() as (client, server):
        ckey = key_of(client)
        transfer(client, server, 1000, 1000)
        graceful_close(client, server)  # the client is left in TIME_WAIT
    # The kernel broadcasts destroy events from a work queue: let this one go
    # by before the backend listens, or it would (rightly) end the row there.
    time.sleep(0.5)
    b = LinuxBackend()
    b.start()
    try:
        row = by_key(b.sample().sockets).get(ckey)
    finally:
        b.close()
    assert row is not None
    assert (row.state, row.bytes_sent, row.bytes_received) == ("TIME_WAIT", None, None)


def test_snapshot_has_interfaces_and_status_is_clean(backend) -> None:
    snap = backend.sample()
    assert any(i.is_loopback for i in snap.interfaces)
    st = backend.status()
    assert st.privileged == (os.geteuid() == 0)
    assert st.events_lost == 0
    if os.geteuid() == 0:
        assert st.attribution_complete and st.warnings == []
    assert "per_socket_bytes" in backend.capabilities()


def test_close_releases_the_reader_thread() -> None:
    def readers() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "netmond-tcp-destroy")

    before = readers()
    b = LinuxBackend()
    b.start()
    assert readers() == before + 1
    b.sample()
    b.close()
    assert readers() == before


def test_kernel_overflow_is_counted_exactly() -> None:
    """A reader that falls behind: the kernel drops events, recv() says ENOBUFS."""
    sock = open_sock_diag_socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the minimum: a few events
    sock.bind((0, DESTROY_GROUPS_MASK))
    sock.setblocking(False)
    listener = DestroyListener(sock=sock)  # not started: we drain by hand, late
    try:
        with socket.socket() as server_listener:
            server_listener.bind(("127.0.0.1", 0))
            server_listener.listen(8)
            for _ in range(100):
                with socket.create_connection(server_listener.getsockname(), timeout=IO_TIMEOUT) as c:
                    a, _ = server_listener.accept()
                    with a:
                        c.sendall(b"x")
                        a.recv(1)
        time.sleep(0.2)  # destroy events are broadcast from a kernel work queue
        listener.drain()
        received = len(listener.take())
        assert listener.events_lost > 0
        # SO_MEMINFO's drop counter makes the loss exact: nothing unaccounted.
        assert received + listener.events_lost >= 200
    finally:
        listener.close()


def test_backend_survives_enobufs_and_reports_it() -> None:
    class Enobufs:
        """A netlink socket whose every read reports lost events."""

        def __init__(self) -> None:
            self._ready, self._other = socket.socketpair()
            self._other.send(b"!")  # readable until read
            self.reads = 0

        def fileno(self) -> int:
            return self._ready.fileno()

        def setblocking(self, flag: bool) -> None:
            pass

        def recv_into(self, buf, nbytes=0):
            self.reads += 1
            if self.reads == 1:
                raise OSError(errno.ENOBUFS, "No buffer space available")
            with contextlib.suppress(BlockingIOError):
                self._ready.recv(1, socket.MSG_DONTWAIT)  # not readable any more
            raise BlockingIOError(errno.EAGAIN, "again")

        def getsockopt(self, *args):
            return struct.pack("=9I", 0, 0, 0, 0, 0, 0, 0, 0, 42)

        def close(self) -> None:
            self._ready.close()
            self._other.close()

    fake = Enobufs()
    b = LinuxBackend(destroy_listener=DestroyListener(sock=fake))
    b.start()
    try:
        wait_until(lambda: fake.reads >= 2, 5, 0.01)
        snap = b.sample()
        assert snap.sockets is not None
        st = b.status()
        assert st.events_lost == 42
        assert any("destroy events lost" in w for w in st.warnings)
    finally:
        b.close()


# -- without root ------------------------------------------------------------------

UNPRIVILEGED_SCRIPT = textwrap.dedent(
    """
    import json, os
    from netmond.backends.linux import LinuxBackend
    b = LinuxBackend()
    b.start()
    try:
        snap = b.sample()
        st = b.status()
    finally:
        b.close()
    print(json.dumps({
        "uid": os.getuid(),
        "sockets": [[s.key, s.pid, s.user, s.bytes_sent, s.bytes_received] for s in snap.sockets],
        "attribution_complete": st.attribution_complete,
        "privileged": st.privileged,
        "warnings": st.warnings,
    }))
    """
)
NOBODY = 65534


def run_as_nobody(script: str) -> subprocess.CompletedProcess:
    """Run script with the venv's python as uid/gid 65534, the repo importable.

    If nobody cannot read the checkout, a world-readable copy of the package
    in a temporary directory is used instead.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not installed")
    argv = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c"]

    def attempt(pythonpath: str) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": pythonpath}
        return subprocess.run(argv + [script], env=env, cwd="/", capture_output=True, text=True, timeout=60)

    result = attempt(str(REPO))
    if result.returncode == 0 or not any(e in result.stderr for e in ("ModuleNotFoundError", "PermissionError")):
        return result
    tmp = tempfile.mkdtemp(prefix="netmon-nobody-")
    try:
        os.chmod(tmp, 0o755)
        shutil.copytree(REPO / "netmond", Path(tmp) / "netmond")
        for path in Path(tmp).rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        return attempt(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_unprivileged_daemon_sees_root_sockets_without_pid() -> None:
    with tcp_pair() as (client, server):
        ckey, skey = key_of(client), key_of(server)
        transfer(client, server, 300_000, 100_000)
        result = run_as_nobody(UNPRIVILEGED_SCRIPT)
        if result.returncode != 0 and "ModuleNotFoundError" in result.stderr:
            pytest.skip(f"the venv is not usable by uid {NOBODY}: {result.stderr.strip()[-200:]}")
        assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["uid"] == NOBODY and out["privileged"] is False
    rows = {key: (pid, user, sent, received) for key, pid, user, sent, received in out["sockets"]}
    assert rows[ckey] == (None, "root", 300_000, 100_000)
    assert rows[skey] == (None, "root", 100_000, 300_000)
    assert out["attribution_complete"] is False
    assert any(f"running as uid {NOBODY} without root" in w for w in out["warnings"]), out["warnings"]
