"""The Backend interface: the one seam between netmond and the operating system.

A backend turns whatever the OS offers (netlink, nettop, psutil) into a
`Snapshot`: plain data that `state.py` folds into the connection table. Nothing
above this package samples the OS (the daemon's other OS code, credentials
and launchd, is in netmond/platform), so everything above it is testable
with hand-made snapshots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Hashable

from common import api
from common.paths import is_root


@dataclass(slots=True)
class SocketSample:
    """One socket as the OS reports it at one instant.

    `key` identifies the socket for its whole life across samples (and across
    the destroy event that ends it), so the state table can keep its `id`.
    Backends build it from the protocol and 5-tuple; where several live sockets
    share a 5-tuple (listeners with SO_REUSEPORT, unconnected UDP) they add
    something that tells them apart, such as the inode.

    Byte counters are cumulative for the socket's life as the kernel counts
    them, or None where the OS keeps none (UDP, the psutil backend): never 0
    for "unknown".

    Samples are never modified once handed over. A backend may hand the
    very same object again at the next sample to say "this socket has not
    changed at all" (the Linux backend does, for idle sockets); the state
    table then skips it cheaply. A changed socket always gets a new object.
    """

    key: Hashable
    protocol: str  # "TCP" | "UDP"
    family: str  # "IPv4" | "IPv6"
    local_ip: str
    local_port: int
    remote_ip: str | None
    remote_port: int | None
    state: str  # "ESTABLISHED", "LISTEN", ..., "NONE" for UDP
    pid: int | None = None
    process_name: str | None = None
    user: str | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    #: Where the byte counters come from when not the kernel's own per-socket
    #: counters: "ebpf" (Linux root mode's UDP counters). None: "kernel".
    counters: str | None = None


@dataclass(slots=True)
class InterfaceSample:
    """Cumulative counters of one network interface."""

    name: str
    bytes_sent: int
    bytes_received: int
    is_loopback: bool = False


@dataclass(slots=True)
class Snapshot:
    """Everything one sample saw.

    `sockets` are the sockets open at `monotonic`. `closed` are sockets that
    the OS reported as destroyed since the previous sample, with their final
    counters (Linux TCP destroy events): some of them were never in any
    `sockets` list because they lived shorter than one interval.
    """

    monotonic: float
    wall: float
    sockets: list[SocketSample]
    interfaces: list[InterfaceSample] = field(default_factory=list)
    closed: list[SocketSample] = field(default_factory=list)


@dataclass(slots=True)
class BackendStatus:
    """What the backend wants `status` to say about itself."""

    privileged: bool
    # True when every socket's pid could be looked up (root, or only our own
    # sockets exist); False when other users' sockets are shown with pid null.
    attribution_complete: bool = True
    warnings: list[str] = field(default_factory=list)
    # Destroy events the kernel dropped (ENOBUFS) since start: bytes of those
    # short-lived connections are missing from per-socket totals.
    events_lost: int = 0
    # The interval the OS source really samples at, where it differs from
    # the one asked (nettop takes whole seconds); None: as asked.
    effective_interval: float | None = None
    # Linux root mode (eBPF): {"active": bool, "reason": str}; None elsewhere.
    root_mode: api.RootMode | None = None


class Backend:
    """Base class for the platform backends.

    Life cycle, all driven by netmond's sampler:
      start()   once, in the daemon's thread, before the first sample; may
                spawn helpers (nettop) or open sockets (netlink).
      sample()  once per interval, called from a worker thread: it may block
                on I/O but must finish well within the interval.
      status()  cheap; called by the `status` RPC.
      close()   once at shutdown; must release everything start() took.

    `sample()` must never raise because one process vanished or denied access:
    that process's sockets just get pid/process_name None.
    """

    name: str = "base"
    #: True where the backend reports kernel byte counters per socket.
    per_socket_bytes: bool = False

    def start(self) -> None:
        """Acquire resources (sockets, subprocesses). Default: nothing."""

    def sample(self) -> Snapshot:  # pragma: no cover - abstract
        raise NotImplementedError

    def status(self) -> BackendStatus:
        return BackendStatus(privileged=is_root())

    def close(self) -> None:
        """Release what start() acquired. Default: nothing."""

    def set_interval(self, interval: float) -> None:
        """The daemon's interval changed (`configure`, SIGHUP). Default:
        nothing (the sampler calls sample() at the new pace); nettop must be
        restarted at the new rate."""

    def discard_pending(self) -> None:
        """Drop what was gathered between samples (called while monitoring is
        stopped, so that events of the pause neither pile up nor count as lost).
        Default: nothing."""

    def capabilities(self) -> list[str]:
        caps = ["connections", "processes", "interfaces"]
        if self.per_socket_bytes:
            caps.append("per_socket_bytes")
        return caps


def now() -> tuple[float, float]:
    """(monotonic, wall) taken together, for Snapshot."""
    return time.monotonic(), time.time()
