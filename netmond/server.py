"""asyncio Unix-socket server: sessions, limits, dispatch, notifications.

Each client gets a ClientSession. What a client can make the daemon do is
bounded on every axis:
- bytes: the Unpacker limits of common.protocol (1 MiB buffer, 4096-element
  arrays, 1024-entry maps); a client that exceeds them or sends something that
  is not msgpack-RPC is told why (where a reply is possible) and disconnected;
- time: a client must complete each message within `client_idle_timeout`
  of the previous one (or of connecting); one that sends nothing, half a
  message, or a message one byte at a time is disconnected. A subscriber may
  stay silent, but one that does not read for that long is disconnected too.
  (Half-open peers go with these rules);
- count: at most `max_clients` sessions (never more than the descriptor
  limit leaves room for); the next one is answered `too_many_clients` and
  closed, so descriptors are never exhausted. The last slots are kept for
  root and the daemon's own user (owner_reserve()): other users (a socket
  group's members) holding every slot they may have never lock the owner out
  of its own daemon (before: one member holding 128 idle connections made
  root's `netmonctl status` fail for as long as it liked);
- queue: notifications wait in a bounded per-session queue, bounded in count
  (subscriber_queue) and in bytes (_QUEUE_BYTES per subscriber, queue and
  socket buffer together, and _QUEUE_BYTES_TOTAL over all subscribers); a
  subscriber that stops reading misses updates and is told so with one
  `lagged` notification (placed where the gap is) instead of making the
  daemon buffer without end, and one that stays over its budget for
  _LAG_GRACE is disconnected. Subscribers with equal filters share one
  encoded payload (before: 50 deaf subscribers with their own filters took
  the daemon from 46 MB to 4.96 GB in 92 s);
- pipelining: a response is written and drained before the next request is
  read, so a client that never reads its replies only stalls itself.
- objects: one message decodes to at most protocol.MAX_OBJECTS containers
  and elements, nested at most MAX_DEPTH deep (1 MiB of empty maps was a
  million dicts, ~54 MB); the decoded request is dropped before the reply
  waits on a slow reader, and an unpacker grown by a large message is
  replaced once it is done. All clients together may hold at most
  _BUFFERED_CAP bytes of unfinished messages: past that, a client holding
  more than _BUFFERED_SMALL is told too_large and dropped (before: 32 clients
  that each sent 1 MiB and went quiet took the daemon from 23 MB to 1.9 GB).
Log lines name the peer's pid/uid and what went wrong, never the payload:
the reasons logged are fixed strings, client bytes only ever travel back to
the client that sent them.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import resource
import socket
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Iterator, Mapping

import msgpack

from common import protocol
from common.models import Filter
from common.protocol import BadMessage, Notification, ProtocolError, Request, RPCError

from .peercred import PeerCredentials, is_owner, may_control
from .platform import peer_credentials

log = logging.getLogger("netmond.server")

_READ_CHUNK = 64 * 1024
# Longest error text echoed back to a client (it may quote what it sent).
_MAX_DETAIL = 100
# A message that stops arriving for _STALL is checked for a length header
# over a limit in its first _HEAD_BYTES (the C Unpacker waits for the body
# such a header announces). Legitimate clients send whole messages, so this
# only runs for stalled ones, and costs at most ~2 ms each time.
_STALL = 0.5
_HEAD_BYTES = 512
# How long a response (possibly megabytes of rows, held in memory meanwhile)
# may wait for a client that asked for it and does not read it.
_RESPONSE_WRITE_TIMEOUT = 30.0
# Notification bytes one subscriber may have waiting (its queue and its
# socket's write buffer), and all subscribers together. One update is always
# let into an empty queue, however large, so a slow subscriber still sees
# the newest rows.
_QUEUE_BYTES = 4 * 1024 * 1024
_QUEUE_BYTES_TOTAL = 64 * 1024 * 1024
# A subscriber over its budget this long (it reads, but slower than updates
# come) is disconnected; a suspended one (SIGSTOP) is let off for as long.
_LAG_GRACE = 30.0
# Unfinished messages all clients together may hold; one client's share
# beyond _BUFFERED_SMALL counts against it. Real requests are < 1 KiB.
_BUFFERED_CAP = 32 * 1024 * 1024
_BUFFERED_SMALL = 64 * 1024
# A message over this size leaves a grown unpacker buffer: start a new one.
_BIG_MESSAGE = 64 * 1024
# Descriptors kept for everything but clients: the listener, the backend's
# netlink sockets or nettop pipes, /proc files it opens, logs, the loop, and
# the Prometheus exporter's connections (at most metrics.MAX_CONNECTIONS, 16).
_FD_RESERVE = 96
# Where the hard limit is "unlimited" (macOS), raise the soft one this far.
_FD_TARGET = 10240


@dataclass
class Policy:
    """What the server enforces, read at each use: the daemon updates these
    fields on SIGHUP and every session, open or new, follows."""

    max_clients: int
    client_idle_timeout: float
    subscriber_queue: int
    #: The socket's group: its members (with root and the daemon's user) may control.
    control_gid: int | None


#: What the server dispatches to: method -> (params, session) -> result
#: (handlers.bind() makes it; the server knows nothing of the daemon).
Dispatch = Mapping[str, Callable[[dict[str, Any], "ClientSession"], Any]]
#: Awaited before a handler that reads the daemon's state runs: returns once
#: no tick is changing it (app.Daemon.state_quiet).
StateGate = Callable[[], Awaitable[None]]


class Streamed:
    """What a handler returns to send its reply in parts (docs/PROTOCOL.md,
    `connections`, `chunk`): each list `chunks` yields goes out as a `topic`
    notification {"msgid": the request's, key: rows}, made only once the
    client has read the previous one and while no tick runs; then the
    response {key: [], "streamed": rows sent}."""

    def __init__(self, topic: str, key: str, chunks: Iterator[list[dict[str, Any]]]) -> None:
        self.topic = topic
        self.key = key
        self.chunks = chunks

    def final(self, sent: int) -> dict[str, Any]:
        return {self.key: [], "streamed": sent}


async def _no_gate() -> None:
    return None


def raise_fd_limit() -> None:
    """Raise the soft descriptor limit to the hard one (systemd's default soft
    limit is 1,024, its hard one 524,288): descriptors are what another user
    would try to exhaust. Errors keep the limit as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _FD_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def owner_reserve(cap: int) -> int:
    """Client slots that only root and the daemon's own user may take: an
    eighth of the cap, at least 1 and at most 8 (none for a cap of 1)."""
    return 0 if cap < 2 else max(1, min(8, cap // 8))


def client_fd_budget() -> int | None:
    """How many clients the descriptor limit (RLIMIT_NOFILE) leaves room for."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(1, soft - _FD_RESERVE)


def _claims_too_much(head: bytes | bytearray) -> bool:
    """True if these first bytes of a message hold a str/bin/ext/array/map
    header whose length is over the protocol's limits."""
    probe = protocol.new_unpacker(limited=True, pure=True)
    probe.feed(bytes(head))
    try:
        for _ in probe:
            pass
    except ValueError as exc:
        return "exceeds" in str(exc)
    except Exception:  # noqa: BLE001 - anything else is for the real decoder to report
        return False
    return False


def _decode_failure(exc: Exception) -> tuple[str, str]:
    """The code and the fixed reason a client is dropped with when its bytes do not decode."""
    if isinstance(exc, protocol.TooComplex):
        return protocol.TOO_LARGE, f"more than {protocol.MAX_OBJECTS} objects in one message"
    if isinstance(exc, msgpack.StackError):  # deeper than msgpack's own stack (1024)
        return protocol.TOO_LARGE, f"nested deeper than {protocol.MAX_DEPTH} levels"
    if isinstance(exc, ValueError) and "exceeds" in str(exc):
        # msgpack says "N exceeds max_xxx_len(M)" for a header over a limit;
        # anything else is corrupt data.
        return protocol.TOO_LARGE, "a length in the message is over a limit"
    return protocol.PROTOCOL_ERROR, "invalid msgpack"


class _Inbound:
    """Where one client's byte stream stands: the unpacker, the message in
    progress, and the clocks the idle and stall rules read."""

    def __init__(self) -> None:
        self.budget = protocol.DecodeBudget()
        self.unpacker = protocol.new_unpacker(limited=True, budget=self.budget)
        self.fed = 0  # bytes fed so far
        self.message_start = 0  # stream offset where the message in progress began
        self.last_message = time.monotonic()  # connect, or the last complete message
        self.partial_since: float | None = None  # when the message in progress began
        self.head = bytearray()  # its first _HEAD_BYTES, for the stall check
        self.head_checked = True
        self.big = False  # the chunk being read completed a message over _BIG_MESSAGE

    @property
    def pending(self) -> int:
        """Bytes of the message in progress."""
        return self.fed - self.message_start

    def time_left(self, idle_timeout: float, subscriber: bool) -> tuple[float | None, bool]:
        """(seconds before the idle rule drops the client, None: never; whether
        a stall check is due). Completing a message resets the clock,
        receiving bytes does not: so a sender trickling one byte at a time
        times out too. A subscriber with nothing half-sent may be silent forever."""
        if self.partial_since is not None:
            started: float | None = self.partial_since if subscriber else min(self.partial_since, self.last_message)
        else:
            started = None if subscriber else self.last_message
        timeout = None if started is None else started + idle_timeout - time.monotonic()
        return timeout, self.partial_since is not None and not self.head_checked

    def feed(self, chunk: bytes) -> int:
        """Give the unpacker a chunk (msgpack.BufferFull past its limit);
        returns the chunk's offset in the stream."""
        self.unpacker.feed(chunk)
        chunk_start, self.fed = self.fed, self.fed + len(chunk)
        self.big = False
        return chunk_start

    def message_done(self) -> None:
        """The unpacker returned a whole message: the next one starts here."""
        self.budget.reset()
        self.big = self.big or self.unpacker.tell() - self.message_start > _BIG_MESSAGE
        self.message_start = self.unpacker.tell()  # the C Unpacker: end of the message
        self.last_message = time.monotonic()
        self.partial_since = None

    def chunk_done(self, chunk: bytes, chunk_start: int) -> None:
        """After the messages a chunk completed: let a buffer grown by a large
        one go, and note where a message still in progress began."""
        if self.big and self.fed == self.message_start:
            self.unpacker = protocol.new_unpacker(limited=True, budget=self.budget)
            self.fed = self.message_start = 0
        if self.fed > self.message_start:  # a message is in progress
            if self.partial_since is None:
                self.partial_since = time.monotonic()
                self.head = bytearray()
            if len(self.head) < _HEAD_BYTES:
                lo = max(self.message_start, chunk_start) - chunk_start
                self.head += chunk[lo:lo + _HEAD_BYTES - len(self.head)]
                self.head_checked = False


class LogBudget:
    """Client-caused log lines, at most `burst` per `period`; the rest counted.

    Any local user can reconnect with garbage in a loop: without a budget
    that would grow the daemon's log (a plain file under launchd) without
    end. Suppressed lines are summarised once the period is over.
    """

    def __init__(self, burst: int = 20, period: float = 60.0, summary_level: int = logging.WARNING) -> None:
        self.burst = burst
        self.period = period
        self.summary_level = summary_level
        self._start = time.monotonic()
        self._count = 0
        self._suppressed = 0

    def __call__(self, level: int, msg: str, *args: Any, exc_info: Any = False) -> None:
        now = time.monotonic()
        if now - self._start >= self.period:
            if self._suppressed:
                log.log(self.summary_level, "%d more client problems were not logged in the last %.0fs",
                        self._suppressed, now - self._start)
            self._start, self._count, self._suppressed = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            log.log(level, msg, *args, exc_info=exc_info)
        else:
            self._suppressed += 1


class ClientSession:
    """One connected client: its credentials, subscriptions and send queue."""

    def __init__(
        self,
        policy: Policy,
        dispatch: Dispatch,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerCredentials | None,
        note: LogBudget,
        debug_note: LogBudget | None = None,
        state_gate: StateGate = _no_gate,
        ungated: frozenset[str] = frozenset(),
    ) -> None:
        self.policy = policy
        self.dispatch = dispatch
        # Methods in `ungated` run at once; the others after state_gate().
        self.state_gate = state_gate
        self.ungated = ungated
        self.note = note
        # Harmless oddities (ignored notifications) have their own budget, so
        # that they never crowd out a warning.
        self.debug_note = debug_note or LogBudget(summary_level=logging.DEBUG)
        self.ignored_notifications = 0
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.topics: set[str] = set()
        self.filter = Filter()
        # (is_update, packed notification) waiting for the client. Only updates
        # count towards queue_size; a `lagged` marker rides along where a gap is.
        self._queue: collections.deque[tuple[bool, bytes]] = collections.deque()
        self._queue_size = policy.subscriber_queue
        self._queued_updates = 0
        self._queued_bytes = 0
        self._over_since: float | None = None  # when it first missed an update, while it still does
        #: Notification bytes waiting in all sessions (set by the Server).
        self.queued_total: Any = lambda: self.pending_bytes
        self._ready = asyncio.Event()
        self._missed = 0
        self._sender: asyncio.Task[None] | None = None
        self.label = f"pid={peer.pid} uid={peer.uid}" if peer else "peer=unknown"
        #: Bytes of the message in progress (for the server-wide cap).
        self.buffered = 0
        self._owe_drain = False
        #: Bytes buffered by all sessions together (set by the Server).
        self.buffered_total: Any = lambda: self.buffered

    @property
    def may_control(self) -> bool:
        """Control rights, decided at each call against the running config:
        after socket_group is removed (SIGHUP), a former member's open
        connection can no longer stop or configure the daemon."""
        return may_control(self.peer, self.policy.control_gid)

    @property
    def idle_timeout(self) -> float:
        """Read live from the config, so a SIGHUP reload applies to everyone."""
        return self.policy.client_idle_timeout

    # -- subscriptions (called by handlers) ---------------------------------
    def subscribe(self, topics: list[str], flt: Filter) -> None:
        """Add topics (and set the filter); starts the sender on first use."""
        self.topics.update(topics)
        self.filter = flt
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_notifications())

    def unsubscribe(self, topics: list[str]) -> None:
        """Drop topics; the sender stays, idle, until the client leaves."""
        self.topics.difference_update(topics)

    def notify(self, data: bytes) -> None:
        """Queue one packed notification; never blocks, never grows past the bounds.

        When the queue is full (in count or in bytes, its own or everyone's)
        the update is dropped and counted. The next update that fits is
        preceded by `lagged {missed}`, so the client learns of the gap
        exactly where it is in the stream. A subscriber that keeps missing
        updates for _LAG_GRACE is disconnected.
        """
        pending = self.pending_bytes
        full = self._queued_updates >= self._queue_size or (
            self._queue and (pending + len(data) > _QUEUE_BYTES
                             or self.queued_total() + len(data) > _QUEUE_BYTES_TOTAL))
        if full:
            self._missed += 1
            now = time.monotonic()
            if self._over_since is None:
                self._over_since = now
            elif now - self._over_since > min(_LAG_GRACE, self.idle_timeout):
                self.note(logging.INFO, "subscriber %s fell behind for %.0fs (%d updates missed): disconnected",
                          self.label, now - self._over_since, self._missed)
                self._queue.clear()
                self._queued_updates = self._queued_bytes = 0
                self.writer.transport.abort()
            return
        self._over_since = None
        if self._missed:
            marker = protocol.pack_notification(protocol.LAGGED, {"missed": self._missed})
            self._queue.append((False, marker))
            self._queued_bytes += len(marker)
            self._missed = 0
        self._queue.append((True, data))
        self._queued_updates += 1
        self._queued_bytes += len(data)
        self._ready.set()

    @property
    def pending_bytes(self) -> int:
        """Notification bytes waiting: the queue and the socket's write buffer."""
        try:
            buffered = self.writer.transport.get_write_buffer_size()
        except (AttributeError, RuntimeError):
            buffered = 0
        return self._queued_bytes + buffered

    @property
    def queued(self) -> int:
        """Updates waiting to be sent (for tests and status)."""
        return self._queued_updates

    async def _send_notifications(self) -> None:
        try:
            while True:
                while not self._queue:
                    self._ready.clear()
                    await self._ready.wait()
                is_update, data = self._queue.popleft()
                self._queued_updates -= is_update
                self._queued_bytes -= len(data)
                self.writer.write(data)
                del data  # the transport holds it now (counted there)
                try:
                    await asyncio.wait_for(self.writer.drain(), self.idle_timeout)
                except asyncio.TimeoutError:
                    # Not one byte read for the whole idle timeout: it is
                    # suspended or gone. Drop it; abort discards the backlog.
                    self.note(logging.INFO, "subscriber %s stopped reading for %.0fs: disconnected",
                              self.label, self.idle_timeout)
                    self.writer.transport.abort()
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # noqa: BLE001 - never let a sender kill the loop
            self.note(logging.ERROR, "notification sender failed (%s)", self.label, exc_info=True)

    # -- the read loop --------------------------------------------------------
    async def serve(self) -> None:
        """Read, decode and answer requests until the client leaves or must go."""
        inbound = _Inbound()
        try:
            while True:
                chunk = await self._receive(inbound)
                if not chunk or not await self._take(inbound, chunk):
                    return
        except asyncio.TimeoutError:  # from the drain of a response (_take)
            self.note(logging.INFO, "client %s did not read its response in time: disconnected", self.label)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if self._sender is not None:
                self._sender.cancel()
            self.writer.close()

    async def _receive(self, inbound: "_Inbound") -> bytes | None:
        """The next bytes from the client (b"" when it left), or None when it
        must go: idle or mid-message for the idle timeout (logged), or stalled
        waiting for a body a length header over a limit announced (told)."""
        while True:
            timeout, stall_check = inbound.time_left(self.idle_timeout, subscriber=bool(self.topics))
            wait = timeout
            if stall_check:
                wait = _STALL if timeout is None else min(timeout, _STALL)
            try:
                if timeout is not None and timeout <= 0:
                    raise asyncio.TimeoutError
                return await asyncio.wait_for(self.reader.read(_READ_CHUNK), wait)
            except asyncio.TimeoutError:
                if stall_check and (timeout is None or timeout > _STALL):
                    # The client stopped mid-message: waiting for a body
                    # a length header announced? Then say so now.
                    inbound.head_checked = True
                    if _claims_too_much(inbound.head):
                        await self._fatal(protocol.TOO_LARGE, "a length in the message is over a limit")
                        return None
                    continue
                what = "did not finish a message" if inbound.partial_since is not None else "idle"
                self.note(logging.INFO, "client %s %s for %.0fs: disconnected",
                          self.label, what, self.idle_timeout)
                return None

    async def _take(self, inbound: "_Inbound", chunk: bytes) -> bool:
        """Feed one chunk and answer every message it completes, one at a
        time; False when the client must go."""
        try:
            chunk_start = inbound.feed(chunk)
        except msgpack.BufferFull:
            await self._fatal(protocol.TOO_LARGE, "message larger than the 1 MiB limit")
            return False
        self.buffered = inbound.pending
        if self.buffered > _BUFFERED_SMALL and self.buffered_total() > _BUFFERED_CAP:
            await self._fatal(protocol.TOO_LARGE, "clients hold too much unfinished data; send whole messages")
            return False
        while True:
            try:
                obj = next(inbound.unpacker)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - any decoding failure is the client's
                await self._fatal(*_decode_failure(exc))
                return False
            inbound.message_done()
            if protocol.too_deep(obj):
                await self._fatal(protocol.TOO_LARGE, f"nested deeper than {protocol.MAX_DEPTH} levels")
                return False
            keep_going = await self._handle(obj)
            # The request's objects go before waiting on the reader: a
            # client that does not read must not keep them alive.
            obj = None
            if self._owe_drain:
                self._owe_drain = False
                # A client that does not read its replies only stalls itself;
                # after the timeout the TimeoutError ends its session (serve).
                await asyncio.wait_for(self.writer.drain(), min(_RESPONSE_WRITE_TIMEOUT, self.idle_timeout))
            if not keep_going:
                return False
        self.buffered = inbound.pending
        inbound.chunk_done(chunk, chunk_start)
        return True

    async def _handle(self, obj: Any) -> bool:
        """Answer one message; False when the client must be dropped."""
        try:
            msg = protocol.decode_message(obj)
        except BadMessage as exc:
            if exc.msgid is None:  # a notification: never answered
                self._ignore_notification()
            else:
                await self._respond(exc.msgid, exc, None)
            return True
        except ProtocolError as exc:
            await self._fatal(protocol.PROTOCOL_ERROR, "not a msgpack-RPC request", detail=str(exc))
            return False
        if isinstance(msg, Notification):
            # The spec lets either side notify and forbids an answer. netmond
            # defines no client notifications (pynvim opens with
            # nvim_set_client_info): ignore them, keep the client.
            self._ignore_notification()
            return True
        if not isinstance(msg, Request):
            await self._fatal(protocol.PROTOCOL_ERROR, "clients may only send requests and notifications")
            return False
        handler = self.dispatch.get(msg.method)
        if handler is None:
            err = RPCError(protocol.UNKNOWN_METHOD, f"unknown method {msg.method[:64]!r}")
            await self._respond(msg.msgid, err, None)
            return True
        if msg.method not in self.ungated:
            await self.state_gate()
        try:
            result = handler(msg.params, self)
            if inspect.isawaitable(result):
                # A handler that waits on another thread (the usage store)
                # returns a coroutine: this client waits, the others do not.
                result = await result
        except RPCError as exc:
            await self._respond(msg.msgid, exc, None)
            return True
        except Exception:  # noqa: BLE001 - no traceback crosses the socket
            self.note(logging.ERROR, "handler %s failed (%s)", msg.method, self.label, exc_info=True)
            await self._respond(msg.msgid, RPCError(protocol.INTERNAL, "internal error; see daemon log"), None)
            return True
        if isinstance(result, Streamed):
            return await self._stream(msg.msgid, msg.method, result)
        await self._respond(msg.msgid, None, result)
        return True

    async def _stream(self, msgid: int, method: str, reply: Streamed) -> bool:
        """Send a reply in parts (Streamed): each chunk is made while no tick
        runs, written, and drained before the next is made, so the daemon
        holds one chunk at a time, whatever the size of the table."""
        sent = 0
        while True:
            await self.state_gate()
            try:
                rows = next(reply.chunks, None)
            except Exception:  # noqa: BLE001 - no traceback crosses the socket
                self.note(logging.ERROR, "handler %s failed (%s)", method, self.label, exc_info=True)
                await self._respond(msgid, RPCError(protocol.INTERNAL, "internal error; see daemon log"), None)
                return True
            if rows is None:
                break
            sent += len(rows)
            data = protocol.pack_notification(reply.topic, {"msgid": msgid, reply.key: rows})
            del rows
            self.writer.write(data)
            del data
            await asyncio.wait_for(self.writer.drain(), min(_RESPONSE_WRITE_TIMEOUT, self.idle_timeout))
        await self._respond(msgid, None, reply.final(sent))
        return True

    def _ignore_notification(self) -> None:
        self.ignored_notifications += 1
        self.debug_note(logging.DEBUG, "client %s sent a notification; ignored (%d so far on this connection)",
                        self.label, self.ignored_notifications)

    async def _respond(self, msgid: int, error: RPCError | None, result: Any) -> None:
        # Written now, drained by serve() once the request's objects are
        # dropped (a reader that never reads must not keep them alive).
        self.writer.write(protocol.pack_response(msgid, error, result))
        self._owe_drain = True

    async def _fatal(self, code: str, reason: str, detail: str | None = None) -> None:
        """Tell the client why (msgid 0: no request to answer) and log one line.

        `reason` is a fixed text and the only thing logged; `detail` may quote
        the client's own bytes, so it goes back to that client only, capped.
        """
        self.note(logging.WARNING, "client %s: %s (%s); disconnected", self.label, reason, code)
        message = reason if detail is None else f"{reason}: {detail[:_MAX_DETAIL]}"
        try:
            self.writer.write(protocol.pack_response(0, RPCError(code, message), None))
            await asyncio.wait_for(self.writer.drain(), 1.0)
        except (ConnectionError, asyncio.TimeoutError):
            pass


def pack_for(topic: str, payload: Mapping[str, Any], rows_key: str | None,
             keys: Iterable[Filter | None]) -> dict[Filter | None, bytes | None | Exception]:
    """One encoded notification per filter in `keys` (None: unfiltered).

    With rows_key, payload[rows_key] (Connection rows) is filtered for each
    key; a filter that leaves nothing gives None (nothing sent), one that
    fails gives its exception (that session is dropped, see deliver()).
    Pure: the sampler runs it on its thread, off the event loop.
    """
    packed: dict[Filter | None, bytes | None | Exception] = {}
    whole: bytes | None = None
    for key in keys:
        try:
            if key is None or rows_key is None:  # unfiltered: one encoding for all
                if whole is None:
                    whole = protocol.pack_notification(topic, payload)
                packed[key] = whole
            else:
                rows = key.apply(payload[rows_key])
                packed[key] = protocol.pack_notification(topic, {**payload, rows_key: rows}) if rows else None
        except Exception as exc:  # noqa: BLE001 - one subscriber never fails the tick for everyone
            log.debug("filter %r failed", key, exc_info=True)
            packed[key] = exc
    return packed


class Server:
    """The listening socket and its sessions."""

    def __init__(self, dispatch: Dispatch, policy: Policy, state_gate: StateGate = _no_gate,
                 ungated: frozenset[str] = frozenset()) -> None:
        self.dispatch = dispatch
        self.policy = policy
        # Methods not in `ungated` wait for state_gate() (see ClientSession).
        self.state_gate = state_gate
        self.ungated = ungated
        self.sessions: set[ClientSession] = set()
        self._server: asyncio.base_events.Server | None = None
        self.note = LogBudget()
        self.loop_note = LogBudget(burst=5)
        self._tasks: set[Any] = set()  # the tasks serving sessions
        self.debug_note = LogBudget(summary_level=logging.DEBUG)

    def queued_total(self) -> int:
        """Notification bytes waiting in all sessions."""
        return sum(s.pending_bytes for s in self.sessions if s.topics)

    def buffered_total(self) -> int:
        """Bytes of unfinished messages all sessions hold."""
        return sum(s.buffered for s in self.sessions)

    @property
    def client_count(self) -> int:
        """Connected sessions."""
        return len(self.sessions)

    @property
    def max_clients(self) -> int:
        """The configured cap (live: SIGHUP may change it), within the fd budget."""
        budget = client_fd_budget()
        cap = self.policy.max_clients
        return cap if budget is None else min(cap, budget)

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already bound and listening socket."""
        raise_fd_limit()
        asyncio.get_running_loop().set_exception_handler(self._on_loop_exception)
        budget = client_fd_budget()
        if budget is not None and budget < self.policy.max_clients:
            log.warning("descriptor limit allows only %d clients (max_clients is %d); "
                        "raise it with ulimit -n or LimitNOFILE=", budget, self.policy.max_clients)
        self._server = await asyncio.start_unix_server(self._on_client, sock=sock, limit=_READ_CHUNK)

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's errors, within the log budget and without tracebacks for
        OS errors: short of descriptors, asyncio reports "socket.accept() out
        of system resource" on every accept attempt (313,493 lines, 143 MB in
        75 s before this); a budget keeps the log readable."""
        exc = context.get("exception")
        detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        self.loop_note(logging.ERROR, "event loop: %s%s", context.get("message", "error"), detail,
                       exc_info=exc if exc is not None and not isinstance(exc, OSError) else False)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        peer = peer_credentials(sock) if sock is not None else None
        cap = self.max_clients
        if not is_owner(peer):
            cap -= owner_reserve(cap)
        if len(self.sessions) >= cap:
            self.note(logging.WARNING, "client limit (%d) reached: refusing a connection", cap)
            writer.write(
                protocol.pack_response(
                    0, RPCError(protocol.TOO_MANY_CLIENTS, f"netmond serves at most {cap} clients"), None
                )
            )
            try:
                await asyncio.wait_for(writer.drain(), 1.0)
            except (ConnectionError, asyncio.TimeoutError):
                pass
            writer.close()
            return
        session = ClientSession(self.policy, self.dispatch, reader, writer, peer, self.note, self.debug_note,
                                self.state_gate, self.ungated)
        session.buffered_total = self.buffered_total
        session.queued_total = self.queued_total
        self.sessions.add(session)
        self._tasks.add(asyncio.current_task())
        try:
            await session.serve()
        except asyncio.CancelledError:
            # Shutdown cancelled a session still waiting on its client: end
            # quietly (a cancelled task here made asyncio log a traceback
            # per session, 18-19 of them for a SIGTERM under load).
            pass
        except Exception:  # noqa: BLE001 - one client never takes the daemon down
            self.note(logging.ERROR, "client %s failed", session.label, exc_info=True)
        finally:
            self.sessions.discard(session)
            self._tasks.discard(asyncio.current_task())

    def publish(self, topic: str, payload: Mapping[str, Any], rows_key: str | None = None) -> None:
        """Queue a notification for every session subscribed to topic.

        With rows_key, payload[rows_key] is a list of Connection rows that is
        filtered per session; sessions whose filter leaves nothing get nothing.
        Sessions with equal filters share one encoded payload. A session whose
        filter fails is disconnected; the others, and the tick, go on.
        (The sampler does the same in two halves: the encoding, off the event
        loop, with pack_for(); the queueing, on it, with deliver().)
        """
        self.deliver(topic, pack_for(topic, payload, rows_key, self.wanted().get(topic, ())))

    def wanted(self) -> dict[str, set[Filter | None]]:
        """The encodings each topic's subscribers need now: one per filter
        (None: no filter); pack_for() makes them, deliver() hands them out."""
        out: dict[str, set[Filter | None]] = {}
        for s in self.sessions:
            key = None if s.filter.is_empty() else s.filter
            for topic in s.topics:
                out.setdefault(topic, set()).add(key)
        return out

    def deliver(self, topic: str, packed: dict[Filter | None, bytes | None | Exception]) -> None:
        """Queue, for every session subscribed to topic, the encoding made
        for its filter (pack_for). A session that subscribed since the
        encodings were made gets the next tick's; one whose filter failed is
        disconnected."""
        for s in list(self.sessions):
            if topic not in s.topics:
                continue
            data = packed.get(None if s.filter.is_empty() else s.filter)
            if isinstance(data, Exception):
                self.note(logging.ERROR, "notification for %s failed (%s); disconnecting it", s.label,
                          type(data).__name__)
                s.writer.transport.abort()
            elif data is not None:
                s.notify(data)

    def has_subscribers(self, topic: str) -> bool:
        """True if some session is subscribed to topic (else publish() is for nobody)."""
        return any(topic in s.topics for s in self.sessions)

    async def close(self) -> None:
        """Stop listening and close every session.

        Sessions are closed (what is buffered is still sent), given a second
        to end, and then aborted: one blocked on a client that does not read
        must not hold the shutdown (nor be cancelled mid-await, see
        _on_client).
        """
        if self._server is not None:
            self._server.close()
        for s in list(self.sessions):
            s.writer.close()
        pending = {t for t in self._tasks if t is not None and not t.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=1.0)
        if pending:
            for s in list(self.sessions):
                s.writer.transport.abort()
            await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except asyncio.TimeoutError:
                pass
