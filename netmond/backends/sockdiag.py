"""NETLINK_SOCK_DIAG sockets: the per-tick dump and the TCP destroy-event feed.

`SockDiagDumper` asks the kernel for every socket of one family and protocol
(one request, many replies, NLMSG_DONE at the end). `DestroyListener` is bound
to the multicast groups on which the kernel announces each TCP socket it
frees, with the socket's final tcp_info; it must be read as events arrive, so
it runs its own thread. Both decode with `netlink.parse_messages`.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading
import time

from .netlink import (
    DESTROY_GROUPS_MASK,
    NETLINK_SOCK_DIAG,
    DiagSocket,
    NetlinkError,
    RawRecords,
    build_dump_request,
    build_tcp_dump_request,
    parse_messages,
)
from .recvmmsg import MultiReceiver

log = logging.getLogger(__name__)

#: Kernel dump replies are at most 32 KiB per datagram (netlink caps its
#: allocation there); twice that leaves room and MSG_TRUNC catches the rest.
_DUMP_RECV_BUFFER = 64 * 1024
#: A destroy event is ~400 bytes; one datagram carries one event.
_EVENT_RECV_BUFFER = 64 * 1024
#: Linux's getsockopt(SOL_SOCKET, SO_MEMINFO): u32[SK_MEMINFO_VARS]; the
#: last one (index 8) counts the datagrams the kernel dropped for this socket.
_SO_MEMINFO = 55
_SK_MEMINFO = struct.Struct("=9I")
_SK_MEMINFO_DROPS = 8
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def open_sock_diag_socket() -> socket.socket:
    """A NETLINK_SOCK_DIAG socket (raises OSError where netlink is missing)."""
    family = getattr(socket, "AF_NETLINK", None)
    if family is None:  # not Linux
        raise OSError(errno.EAFNOSUPPORT, "no AF_NETLINK on this platform")
    return socket.socket(family, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)


class SockDiagDumper:
    """Dumps sockets of one (family, protocol) at a time over one reused socket.

    After a failed or interrupted dump the socket is replaced: the kernel
    refuses a new dump (EBUSY) on a socket whose previous dump is unfinished.
    """

    def __init__(self, timeout: float = 5.0) -> None:
        self._timeout = timeout
        self._seq = 0
        self._buffer = bytearray(_DUMP_RECV_BUFFER)
        self._view = memoryview(self._buffer)
        self._sock: socket.socket | None = None

    def dump(
        self, family: int, protocol: int, ext: int, states: int, known: RawRecords | None = None
    ) -> list[DiagSocket]:
        """Every socket of (family, protocol) in `states` (a bit mask).

        family AF_UNSPEC (TCP only): both families in one request (see
        netlink.build_tcp_dump_request). `ext` selects the attributes wanted
        (INET_DIAG_EXT_INFO: tcp_info). `known`: the records of the previous
        dump; unchanged ones are returned as those objects (see
        netlink.RawRecords: the caller rotates it once its dumps are complete;
        a failed dump discards what it added).
        Raises NetlinkError if the kernel refuses, OSError on socket trouble
        or if the dump takes longer than the timeout.
        """
        sock = self._sock
        if sock is None:
            sock = self._sock = open_sock_diag_socket()
            sock.settimeout(self._timeout)
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        if family == socket.AF_UNSPEC:
            request = build_tcp_dump_request(ext, states, seq)
        else:
            request = build_dump_request(family, protocol, ext, states, seq)
        try:
            sock.send(request)
            return self._read_dump(sock, seq, known)
        except BaseException:
            self._discard_socket()
            if known is not None:
                known.discard()
            raise

    def _read_dump(self, sock: socket.socket, seq: int, known: RawRecords | None) -> list[DiagSocket]:
        sockets: list[DiagSocket] = []
        view, size = self._view, len(self._buffer)
        deadline = time.monotonic() + self._timeout
        while True:
            n = sock.recv_into(view, size, socket.MSG_TRUNC)
            if n > size:
                # Never seen (the kernel caps dump datagrams at 32 KiB); the
                # rest of that datagram is lost, so this dump cannot be trusted.
                raise NetlinkError(f"netlink datagram of {n} bytes exceeds the {size}-byte buffer")
            batch, done = parse_messages(view[:n], seq, known)
            sockets += batch
            if done:
                return sockets
            if n == 0 or time.monotonic() > deadline:
                raise NetlinkError(errno.ETIMEDOUT, "sock_diag dump did not finish")

    def _discard_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        """Release the netlink socket (a later dump() opens a new one)."""
        self._discard_socket()


class DestroyListener:
    """Collects the kernel's TCP destroy events in a background thread.

    Each event is a `DiagSocket` with the final counters of a TCP socket the
    kernel just freed (state CLOSE, inode 0). `take()` hands over what arrived
    since the previous call. The buffer is bounded (`max_pending`): beyond it
    events are dropped and counted, like the ones the kernel drops when the
    socket's receive buffer overflows (recv() then fails with ENOBUFS).
    `events_lost` is the sum of both.

    The thread only moves datagrams out of the kernel's buffer, up to 256 a
    call (recvmmsg.py says why), and keeps their bytes; `take()` decodes
    them, in the sampler's thread. The less the reader does while it holds
    the GIL, the less a busy tick delays it, and the less the kernel drops.
    """

    def __init__(
        self,
        max_pending: int = 50_000,
        rcvbuf: int = 8 * 1024 * 1024,
        sock: socket.socket | None = None,
    ) -> None:
        """`sock`: an already bound socket (tests inject a fake one)."""
        self._max_pending = max_pending
        self._rcvbuf = rcvbuf
        self._sock = sock
        self._receiver: MultiReceiver | None = None
        self._pending: list[bytes] = []  # datagrams, one event each
        self._lock = threading.Lock()
        self._overflowed = 0  # events dropped by us: buffer full
        self._enobufs = 0  # recv() failures with ENOBUFS: at least one lost each
        self._kernel_drops: int | None = None  # datagrams the kernel dropped (SO_MEMINFO)
        self._last_overflow_log = float("-inf")
        #: Why the reader stopped on its own (an unexpected recv error), if it did.
        self.failure: str | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stopping = threading.Event()
        self._buffer = bytearray(_EVENT_RECV_BUFFER)
        self._view = memoryview(self._buffer)

    # -- life cycle --------------------------------------------------------
    def start(self) -> None:
        """Bind to the destroy groups (unless injected) and start the reader thread.

        Raises OSError when the kernel has no sock_diag multicast.
        """
        if self._sock is None:
            sock = open_sock_diag_socket()
            try:
                self._grow_receive_buffer(sock)
                sock.bind((0, DESTROY_GROUPS_MASK))
            except BaseException:
                sock.close()
                raise
            self._sock = sock
            if MultiReceiver.available():
                self._receiver = MultiReceiver(sock.fileno())
        self._sock.setblocking(False)
        self._wake_r, self._wake_w = os.pipe()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="netmond-tcp-destroy", daemon=True)
        self._thread.start()

    def _grow_receive_buffer(self, sock: socket.socket) -> None:
        """As large as allowed: bursts of closes must not overflow it."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, self._rcvbuf)  # root: ignores rmem_max
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)  # capped at rmem_max

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and release the socket; safe to call twice."""
        self._stopping.set()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._receiver = None

    # -- what the sampler calls ---------------------------------------------
    def take(self) -> list[DiagSocket]:
        """The events received since the previous call, oldest first."""
        with self._lock:
            datagrams, self._pending = self._pending, []
        events: list[DiagSocket] = []
        for datagram in datagrams:
            try:
                events += parse_messages(datagram)[0]
            except NetlinkError as exc:
                log.debug("ignoring malformed destroy event: %s", exc)
        return events

    @property
    def events_lost(self) -> int:
        """Destroy events lost since start (kernel overflow + our bounded buffer)."""
        kernel = self._kernel_drops if self._kernel_drops is not None else self._enobufs
        truncated = self._receiver.truncated if self._receiver is not None else 0
        return kernel + self._overflowed + truncated

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the reader thread ---------------------------------------------------
    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stopping.is_set():
            watched: list[socket.socket | int] = [sock, self._wake_r]
            try:
                readable, _, _ = select.select(watched, [], [], 1.0)
            except (OSError, ValueError):
                return  # socket closed under us: shutting down
            if self._wake_r in readable:
                return
            if readable:
                self.drain()

    def drain(self, max_datagrams: int = 10_000) -> int:
        """Read every datagram waiting on the socket (at most about `max_datagrams`).

        Returns the number of events queued. Never raises for ENOBUFS: it
        records the loss and goes on reading what is still queued.
        """
        sock = self._sock
        if sock is None:
            return 0
        receiver = self._receiver
        queued = 0
        while queued < max_datagrams:
            try:
                if receiver is not None:
                    datagrams = receiver.receive()
                else:
                    n = sock.recv_into(self._view, len(self._buffer))
                    datagrams = [bytes(self._view[:n])] if n else []
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._record_kernel_overflow(sock)
                    continue
                self.failure = f"TCP destroy events stopped: recv failed ({exc})"
                log.warning("%s", self.failure)
                self._stopping.set()
                break
            if not datagrams:
                break
            queued += self._queue(datagrams)
        return queued

    def _queue(self, events: list[bytes]) -> int:
        with self._lock:
            room = self._max_pending - len(self._pending)
            if room >= len(events):
                self._pending += events
                return len(events)
            self._pending += events[: max(room, 0)]
            self._overflowed += len(events) - max(room, 0)
        self._log_overflow("the daemon did not take them in time (sampler stalled?)")
        return max(room, 0)

    def _record_kernel_overflow(self, sock) -> None:
        self._enobufs += 1
        drops = _kernel_drop_count(sock)
        if drops is not None:
            self._kernel_drops = drops
        self._log_overflow("the kernel's netlink receive buffer overflowed (ENOBUFS)")

    def _log_overflow(self, why: str) -> None:
        # At most one line a minute: under churn this could fire constantly.
        now = time.monotonic()
        if now - self._last_overflow_log >= 60.0:
            self._last_overflow_log = now
            log.warning(
                "TCP destroy events lost (%d so far): %s; bytes of connections closed then are missing",
                self.events_lost, why,
            )


def _kernel_drop_count(sock) -> int | None:
    """Datagrams the kernel dropped for `sock` (sk_drops), or None if unknown."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, _SK_MEMINFO.size)
        return _SK_MEMINFO.unpack(raw)[_SK_MEMINFO_DROPS]
    except (OSError, struct.error, AttributeError, TypeError):
        return None
