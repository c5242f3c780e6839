"""Destroy events lost (ENOBUFS): every loss counted, and what is recoverable recovered.

A real LinuxBackend whose destroy-event socket has the smallest receive
buffer the kernel allows, and whose reader is held back while connections
close, so that the kernel drops events as on a host closing connections
faster than the reader drains them. What a user reads afterwards (through
MonitorState, as the daemon folds the snapshots in) must be: the loss
counted (events_lost, the status warning); each connection whose event came
with its final bytes; each one whose event was lost with exactly the bytes
of the last dump that listed it (nothing after that dump can be recovered:
the kernel keeps no counters for a closed socket).
"""

from __future__ import annotations

import socket
import sys
import threading

import pytest

from netmond.backends.linux import LinuxBackend
from netmond.backends.sockdiag import DestroyListener, _kernel_drop_count
from netmond.state import MonitorState
from tests.helpers import linux_backend_works, wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not linux_backend_works(),
    reason="needs Linux with NETLINK_SOCK_DIAG",
)

PAIRS = 40
BEFORE_UP, BEFORE_DOWN = 3000, 2000  # moved before the last dump that lists them
AFTER_UP = 500  # moved after it, just before the close


class HeldBackListener(DestroyListener):
    """A destroy-event reader that does not read until `release()`."""

    def __init__(self) -> None:
        super().__init__(rcvbuf=4096)  # the kernel rounds it up to its minimum
        self._gate = threading.Event()

    def drain(self, max_datagrams: int = 10_000) -> int:
        self._gate.wait(30)
        return super().drain(max_datagrams)

    def release(self) -> None:
        self._gate.set()

    def kernel_drops(self) -> int:
        """What the kernel dropped so far for want of room (SO_MEMINFO)."""
        return _kernel_drop_count(self._sock) or 0


def exchange(a: socket.socket, b: socket.socket, n: int) -> None:
    a.sendall(b"u" * n)
    got = 0
    while got < n:
        got += len(b.recv(n - got))


def test_lost_destroy_events_are_counted_and_bytes_up_to_the_last_dump_are_kept() -> None:
    listener = HeldBackListener()
    backend = LinuxBackend(destroy_listener=listener)
    state = MonitorState()
    server_listener = socket.socket()
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        backend.start()
        state.apply(backend.sample())
        server_listener.bind(("127.0.0.1", 0))
        server_listener.listen(PAIRS)
        for _ in range(PAIRS):
            client = socket.create_connection(server_listener.getsockname(), timeout=10)
            server, _ = server_listener.accept()
            exchange(client, server, BEFORE_UP)
            exchange(server, client, BEFORE_DOWN)
            pairs.append((client, server))
        ports = {c.getsockname()[1] for c, _ in pairs}

        def client_rows() -> dict:
            return {r.local_port: r for r in state.open.values()
                    if r.protocol == "TCP" and r.local_port in ports and r.remote_port == server_listener.getsockname()[1]}

        def all_seen() -> bool:
            state.apply(backend.sample())
            rows = client_rows()
            return len(rows) == PAIRS and all(r.bytes_sent == BEFORE_UP for r in rows.values())

        wait_until(all_seen, timeout=20)
        # After that dump: more bytes, then the client closes first, while the
        # reader is held back: the kernel drops what the buffer cannot hold.
        for client, server in pairs:
            exchange(client, server, AFTER_UP)
            client.close()
            server.close()
        wait_until(lambda: _closed_everywhere(backend, ports, server_listener.getsockname()[1]), timeout=10)
        # A socket gone from the dump may not be freed yet, and the kernel sends
        # its event from a work queue after that: on a loaded machine the events
        # can still be on their way. Release the reader only once the kernel
        # has dropped some, or they would all fit as it drains them.
        wait_until(listener.kernel_drops, timeout=20,
                   what="the kernel to drop destroy events for the held-back reader")
        listener.release()
        wait_until(lambda: listener.events_lost > 0, timeout=10)

        final: dict[int, object] = {}
        with_event: set[int] = set()

        def settled() -> bool:
            snap = backend.sample()
            with_event.update(s.local_port for s in snap.closed if s.local_port in ports)
            changes = state.apply(snap)
            for row in changes.closed:
                if row.local_port in ports and row.remote_port == server_listener.getsockname()[1]:
                    final[row.local_port] = row
            # A client whose event was lost continues as its TIME_WAIT remnant.
            for port, row in client_rows().items():
                if row.state == "TIME_WAIT":
                    final[port] = row
            return len(final) == PAIRS

        wait_until(settled, timeout=20)
        status = backend.status()
        assert status.events_lost == listener.events_lost > 0
        assert any("TCP destroy events lost" in w for w in status.warnings)
        lost = ports - with_event
        assert lost, "the reader was held back: some events must have been dropped"
        for port, row in final.items():
            if port in with_event:  # final counters from the event
                assert (row.bytes_sent, row.bytes_received) == (BEFORE_UP + AFTER_UP, BEFORE_DOWN)
            else:  # recovered from the last dump that listed it
                assert (row.bytes_sent, row.bytes_received) == (BEFORE_UP, BEFORE_DOWN), row
    finally:
        listener.release()
        for client, server in pairs:
            client.close()
            server.close()
        server_listener.close()
        backend.close()


def _closed_everywhere(backend: LinuxBackend, ports: set[int], server_port: int) -> bool:
    """True once no socket of these connections is left but TIME_WAIT remnants."""
    mine = {(p, server_port) for p in ports} | {(server_port, p) for p in ports}
    records = backend._dumper.dump(socket.AF_INET, socket.IPPROTO_TCP, 0, 0xFFE & ~(1 << 6))
    return not any((r.local_port, r.remote_port) in mine for r in records)
