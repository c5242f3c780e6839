"""Named peer processes for accounting tests: `python -m tests.peers NAME MODE ARGS...`.

Each sets its own process name (prctl PR_SET_NAME) so that netmon's app rows
tell them apart, prints one line when ready (its port, if it listens) and
one line of figures when done. Every loop is bounded in count and time.
"""

from __future__ import annotations

import ctypes
import select
import socket
import struct
import sys
import time

PR_SET_NAME = 15
DEADLINE = 60.0


def set_name(name: str) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def read_all(conn: socket.socket, limit: int = 1 << 30) -> int:
    n = 0
    while n < limit:
        data = conn.recv(65536)
        if not data:
            break
        n += len(data)
    return n


def listener(port: int = 0, reuseport: bool = False) -> socket.socket:
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    lst.bind(("127.0.0.1", port))
    lst.listen(128)
    lst.settimeout(DEADLINE)
    return lst


def serve(count: int, request: int, response: int, port: int = 0, reuseport: bool = False) -> None:
    """Accept `count` connections: read `request` bytes, answer `response`, close.

    With `reuseport` (several servers on one port, the kernel spreading the
    connections) it stops after 3 s without a connection instead, once it
    has had one: the test starts the clients only once the daemon has seen
    the listeners, which a loaded machine delays past any 3 s counted from
    the start (the clients were then refused)."""
    lst = listener(port, reuseport)
    print(lst.getsockname()[1], flush=True)
    for _ in range(count):
        try:
            conn, _ = lst.accept()
        except socket.timeout:
            break
        if reuseport:
            lst.settimeout(3.0)
        with conn:
            conn.settimeout(DEADLINE)
            got = 0
            while got < request:
                data = conn.recv(request - got)
                if not data:
                    break
                got += len(data)
            conn.sendall(b"r" * response)
    lst.close()
    print("done", flush=True)


def clients(port: int, count: int, request: int, spread: float = 0.0) -> None:
    """`count` short connections, one after the other: send, read to EOF, close;
    with `spread`, paced to take about that many seconds in all."""
    print("ready", flush=True)
    received = 0
    pause = spread / count if count else 0.0
    for _ in range(count):
        if pause:
            time.sleep(pause)
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as c:
            c.sendall(b"q" * request)
            received += read_all(c)
    print(received, flush=True)


def reuse(port: int, local_port: int, sizes: list[int], hold: float) -> None:
    """One connection per size from the same local port (SO_REUSEADDR), each
    sending that many bytes, held `hold` s, then aborted (SO_LINGER 0: no
    TIME_WAIT, so the 4-tuple is free at once)."""
    print("ready", flush=True)
    for size in sizes:
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.bind(("127.0.0.1", local_port))
        c.settimeout(DEADLINE)
        c.connect(("127.0.0.1", port))
        c.sendall(b"x" * size)
        time.sleep(hold)
        c.close()
    print("done", flush=True)


def sink(count: int) -> None:
    """Accept `count` connections and read each to EOF (for `reuse`)."""
    lst = listener()
    print(lst.getsockname()[1], flush=True)
    for _ in range(count):
        conn, _ = lst.accept()
        with conn:
            conn.settimeout(DEADLINE)
            try:
                read_all(conn)
            except ConnectionResetError:
                pass
    print("done", flush=True)


def udp(rate: float, seconds: float) -> None:
    """UDP only: send `rate` bytes/s to our own receiver for `seconds`."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    print("ready", flush=True)
    payload, sent, start = b"u" * 1200, 0, time.monotonic()
    while time.monotonic() - start < seconds:
        while sent < rate * (time.monotonic() - start):
            tx.send(payload)
            sent += len(payload)
        try:
            while True:
                rx.recv(2048)
        except BlockingIOError:
            pass
        time.sleep(0.002)
    print(sent, flush=True)


def tcp_paced(rate: float, seconds: float) -> None:
    """A TCP stream at `rate` bytes/s over loopback, between two of our sockets."""
    lst = listener()
    c = socket.create_connection(lst.getsockname(), timeout=DEADLINE)
    s, _ = lst.accept()
    s.setblocking(False)
    print("ready", flush=True)
    chunk, sent, start = b"t" * 16384, 0, time.monotonic()
    while time.monotonic() - start < seconds:
        while sent < rate * (time.monotonic() - start):
            c.sendall(chunk)
            sent += len(chunk)
        try:
            while s.recv(1 << 20):
                pass
        except BlockingIOError:
            pass
        time.sleep(0.002)
    print(sent, flush=True)


def lone_server(size: int) -> None:
    """Accept one connection, close the listener, then send `size` bytes and
    wait for the peer to close (the listener-less server of issue 11)."""
    lst = listener()
    print(lst.getsockname()[1], flush=True)
    conn, _ = lst.accept()
    lst.close()
    conn.settimeout(DEADLINE)
    conn.sendall(b"s" * size)
    read_all(conn)
    conn.close()
    print("done", flush=True)


def told() -> bool:
    """A line (or EOF) is waiting on stdin: the test says go on."""
    return bool(select.select([sys.stdin], [], [], 0)[0])


def reader(port: int, hold: float, until_told: bool = False) -> None:
    """Connect, read everything the server sends, hold `hold` s, close.

    With `until_told`, `hold` is an upper bound: it closes as soon as the
    test writes a line to its stdin (or closes it), so that a test holds the
    connection open until it has seen what it waits for, however slow the
    machine, rather than for a time."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as c:
        print("ready", flush=True)
        c.shutdown(socket.SHUT_WR) if hold < 0 else None
        n = 0
        deadline = time.monotonic() + max(hold, 0)
        c.settimeout(0.2)
        while time.monotonic() < deadline and not (until_told and told()):
            try:
                data = c.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            n += len(data)
        if until_told:
            # What arrived and is unread yet (the bytes a server's row counts
            # are acknowledged, so here): closing on unread data would send a reset.
            c.setblocking(False)
            try:
                while data := c.recv(65536):
                    n += len(data)
            except BlockingIOError:
                pass
        print(n, flush=True)


MODES = {
    "serve": lambda a: serve(int(a[0]), int(a[1]), int(a[2]), int(a[3]) if len(a) > 3 else 0,
                             len(a) > 4 and a[4] == "reuseport"),
    "clients": lambda a: clients(int(a[0]), int(a[1]), int(a[2]), *map(float, a[3:4])),
    "reuse": lambda a: reuse(int(a[0]), int(a[1]), [int(x) for x in a[2].split(",")], float(a[3])),
    "sink": lambda a: sink(int(a[0])),
    "udp": lambda a: udp(float(a[0]), float(a[1])),
    "tcp_paced": lambda a: tcp_paced(float(a[0]), float(a[1])),
    "lone_server": lambda a: lone_server(int(a[0])),
    "reader": lambda a: reader(int(a[0]), float(a[1]), len(a) > 2 and a[2] == "until_told"),
}

if __name__ == "__main__":
    set_name(sys.argv[1])
    MODES[sys.argv[2]](sys.argv[3:])
