"""One contract for every backend: portable, linux, and darwin (the real
DarwinBackend reading tests/data/fake_nettop).

What state.py and every client rely on, whatever the OS:
  * keys are unique within a snapshot;
  * a key reported closed is not also among the open sockets;
  * an unknown counter is None, never 0 (and a known one an int >= 0);
  * the same wire fields, with the same types, come out of the state table.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Callable

import pytest

from netmond.backends.base import Backend, Snapshot, SocketSample
from netmond.state import MonitorState
from tests.darwin_fakes import path_with_fake_nettop
from tests.helpers import tcp_pair

pytestmark = pytest.mark.timeout(60)

# The wire types of a Connection map (DESIGN §3): None where unknown.
WIRE_TYPES: dict[str, tuple[type, ...]] = {
    "id": (int,), "protocol": (str,), "family": (str,), "local_addr": (str,),
    "remote_addr": (str, type(None)), "local_ip": (str,), "local_port": (int,),
    "remote_ip": (str, type(None)), "remote_port": (int, type(None)), "state": (str,),
    "pid": (int, type(None)), "process_name": (str, type(None)), "user": (str, type(None)),
    "bytes_sent": (int, type(None)), "bytes_received": (int, type(None)),
    "upload_speed": (float, int, type(None)), "download_speed": (float, int, type(None)),
}


def _portable(_tmp: Path, _mp: pytest.MonkeyPatch) -> tuple[Backend, Callable[[SocketSample], bool]]:
    from netmond.backends.portable import PortableBackend

    return PortableBackend(), lambda s: True  # psutil has no per-socket counters


def _linux(_tmp: Path, _mp: pytest.MonkeyPatch) -> tuple[Backend, Callable[[SocketSample], bool]]:
    from netmond.backends import linux

    if not linux.netlink_available():
        pytest.skip("netlink sock_diag unavailable here")
    return linux.LinuxBackend(), lambda s: s.protocol == "UDP"  # Linux counts no UDP bytes


def _darwin(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[Backend, Callable[[SocketSample], bool]]:
    from netmond.backends.darwin import DarwinBackend

    mp.setenv("PATH", path_with_fake_nettop(tmp))
    # Looping replays make counters fall back (new sockets on old keys)
    # and rows vanish (closes): the awkward cases, again and again.
    mp.setenv("NETTOP_FAKE_LOOP", "1")
    mp.setenv("NETTOP_FAKE_DELAY", "0.15")
    backend = DarwinBackend(1.0)
    # nettop prints listeners' counters empty: unknown
    return backend, lambda s: s.state == "LISTEN"


BACKENDS = {"portable": _portable, "linux": _linux, "darwin": _darwin}


def check_snapshot(snap: Snapshot, must_be_unknown: Callable[[SocketSample], bool]) -> None:
    keys = [s.key for s in snap.sockets]
    assert len(keys) == len(set(keys)), "a key twice in one snapshot"
    closed = {s.key for s in snap.closed}
    assert not closed & set(keys), "a key both open and closed"
    for s in [*snap.sockets, *snap.closed]:
        for value in (s.bytes_sent, s.bytes_received):
            assert value is None or (type(value) is int and value >= 0), s
        if must_be_unknown(s):
            assert s.bytes_sent is None and s.bytes_received is None, f"unknown shown as a number: {s}"
        assert s.protocol in ("TCP", "UDP") and s.family in ("IPv4", "IPv6"), s
        assert (s.remote_ip is None) == (s.remote_port is None), s
        assert isinstance(s.state, str) and s.state, s


def wire_shapes(backend_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, set[type]]:
    backend, must_be_unknown = BACKENDS[backend_name](tmp_path, monkeypatch)
    state = MonitorState(interval=0.2)
    closes = 0
    backend.start()
    try:
        if hasattr(backend, "wait_for_sample"):
            assert backend.wait_for_sample(15)
        with tcp_pair() as (listener, client, server):
            for _ in range(8):
                client.sendall(b"x" * 1000)
                server.recv(65536)
                # a short-lived connection, for the backends that see closes
                with socket.create_connection(listener.getsockname()) as brief:
                    brief.sendall(b"y")
                    listener.accept()[0].close()
                snap = backend.sample()
                check_snapshot(snap, must_be_unknown)
                closes += len(snap.closed)
                state.apply(snap)
                time.sleep(0.1)
        rows = list(state.connections(True))
        assert rows, f"{backend_name}: no connections at all"
        if backend_name != "portable":  # psutil reports no closes
            assert closes, f"{backend_name}: the closed-socket path was not exercised"
    finally:
        backend.close()
    shapes: dict[str, set[type]] = {}
    now = time.time()
    for row in rows:
        for field, value in row.to_wire(now).items():
            shapes.setdefault(field, set()).add(type(value))
    return shapes


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_keeps_the_contract(name, tmp_path, monkeypatch):
    shapes = wire_shapes(name, tmp_path, monkeypatch)
    for field, types in WIRE_TYPES.items():
        assert field in shapes, f"{name}: no {field}"
        assert shapes[field] <= set(types), f"{name}: {field} is {shapes[field]}"


def test_every_backend_gives_the_same_wire_fields(tmp_path, monkeypatch):
    fields: dict[str, set[str]] = {}
    for name in BACKENDS:
        sub = tmp_path / name
        sub.mkdir()
        with monkeypatch.context() as mp:
            try:
                fields[name] = set(wire_shapes(name, sub, mp))
            except pytest.skip.Exception:
                continue
    assert len(fields) >= 2
    first, *others = fields.values()
    assert all(f == first for f in others), fields
