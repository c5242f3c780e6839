"""The portable backend: psutil only, on any OS psutil supports.

psutil lists sockets with their pid but has no per-socket byte counters, so
every row has bytes None and counters null: the honest fallback when the
kernel-counter backend is unavailable. Interface totals still come from
psutil, so `stats` shows all traffic as unattributed.
"""

from __future__ import annotations

import socket

import psutil

from .base import Backend, BackendStatus, Snapshot, SocketSample, is_root, now
from .interfaces import sample_interfaces
from .procinfo import ProcessCache

_FAMILY = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
_PROTO = {socket.SOCK_STREAM: "TCP", socket.SOCK_DGRAM: "UDP"}


class PortableBackend(Backend):
    """psutil.net_connections() + psutil process info."""

    name = "portable"
    per_socket_bytes = False

    def __init__(self) -> None:
        self._procs = ProcessCache()
        self._partial = False

    def sample(self) -> Snapshot:
        mono, wall = now()
        try:
            conns = psutil.net_connections(kind="inet")
            self._partial = False
        except psutil.AccessDenied:
            # macOS without root: psutil cannot list other processes' sockets.
            conns = self._own_connections()
            self._partial = True
        sockets: list[SocketSample] = []
        pids: set[int] = set()
        for c in conns:
            proto = _PROTO.get(c.type)
            family = _FAMILY.get(c.family)
            if proto is None or family is None:
                continue
            lip, lport = (c.laddr.ip, c.laddr.port) if c.laddr else ("", 0)
            rip, rport = (c.raddr.ip, c.raddr.port) if c.raddr else (None, None)
            state = c.status if proto == "TCP" else "NONE"
            if state == psutil.CONN_NONE:
                state = "NONE"
            key: tuple = (proto, lip, lport, rip, rport)
            if rip is None:
                # listeners and unconnected UDP may share a tuple (SO_REUSEPORT)
                key = key + (c.pid, c.fd)
            name, user = self._procs.lookup(c.pid)
            if c.pid is not None:
                pids.add(c.pid)
            sockets.append(
                SocketSample(
                    key=key, protocol=proto, family=family, local_ip=lip, local_port=lport,
                    remote_ip=rip, remote_port=rport, state=state, pid=c.pid,
                    process_name=name, user=user,
                )
            )
        self._procs.forget_missing(pids)
        return Snapshot(monotonic=mono, wall=wall, sockets=sockets, interfaces=sample_interfaces())

    def _own_connections(self) -> list:
        try:
            return psutil.Process().net_connections(kind="inet")
        except (psutil.Error, OSError):
            return []

    def status(self) -> BackendStatus:
        warnings = ["per-socket byte counters unavailable with the portable backend (psutil); "
                    "traffic is shown per interface only"]
        if self._partial:
            warnings.append("not root: only this user's sockets are listed")
        return BackendStatus(
            privileged=is_root(), attribution_complete=not self._partial, warnings=warnings
        )
