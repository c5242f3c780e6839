"""A subscription to netmond that outlives the daemon: for `watch` and `top`.

Both commands stay open for hours while the daemon may be restarted under
them (upgrade, crash, launchd/systemd restart). LiveFeed owns one
connection: connect + hello + subscribe; hand out the notifications the
daemon pushes; and when the connection is lost, reconnect with exponential
backoff (RECONNECT_FIRST doubling up to RECONNECT_MAX seconds) and
subscribe again with the same topics and filter.

Two ways to drive it:
- `events()` blocks and yields notifications, plus one `Outage` when the
  daemon goes away and one `Restored` when it is back (watch);
- `receive()` / `due_in()` / `try_reopen()` never sleep, for a caller that
  waits in select() on `fileno()` and the keyboard (top).

The first connection is made with `open()`, whose failures propagate, so
that a wrong --socket or a stopped daemon is reported with the usual exit
code and fix-it line instead of a silent retry loop.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from common import api
from common.client import AccessDenied, Client, DaemonUnavailable
from common.errors import short_reason
from common.protocol import TOO_MANY_CLIENTS, Notification, ProtocolError, RPCError

from . import session
from .session import Settings

T = TypeVar("T")

#: First reconnection delay, doubled after each failed attempt...
RECONNECT_FIRST = 0.2
#: ...up to this.
RECONNECT_MAX = 5.0

# Draining what is already buffered after the first notification: a short
# poll (0 would make the socket non-blocking, which Client does not expect),
# and a cap so that a flood cannot starve the caller's keyboard handling.
_DRAIN_POLL = 0.001
_DRAIN_MAX = 500

#: Failures that mean "the connection is gone (or the daemon hung)": reconnect.
#: OSError covers socket.timeout and anything the socket layer raises.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    DaemonUnavailable,
    AccessDenied,
    ProtocolError,
    OSError,
)


class Backoff:
    """Delays first, 2*first, 4*first, ... capped at `maximum`; reset() starts over."""

    def __init__(self, first: float = RECONNECT_FIRST, maximum: float = RECONNECT_MAX) -> None:
        self.first = first
        self.maximum = maximum
        self._next = first

    def next(self) -> float:
        """The delay before the next attempt (and double the one after)."""
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return delay

    def reset(self) -> None:
        """Back to the first delay (after a success)."""
        self._next = self.first


@dataclass(frozen=True)
class Outage:
    """Yielded by LiveFeed.events() once when the daemon goes away."""

    reason: str


@dataclass(frozen=True)
class Restored:
    """Yielded by LiveFeed.events() when the subscription is back after an Outage."""


class LiveFeed:
    """One subscription (topics + filter) that reconnects when the daemon goes away.

    `on_connect(feed)` runs after every (re)subscription, before any
    notification is handed out: the place to fetch a starting state with
    `feed.call()` (top seeds its sparkline and tables there).
    """

    def __init__(
        self,
        settings: Settings,
        topics: list[str],
        flt: api.FilterMap | None = None,
        on_connect: Callable[["LiveFeed"], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = list(topics)
        self.flt: api.FilterMap = {**(flt or {})}
        self.on_connect = on_connect
        self.client: Client | None = None  # while connected
        self.lost_reason: str | None = None  # set during an outage
        self._stack: ExitStack | None = None
        self._backoff = Backoff()
        self._retry_at = 0.0

    # -- state ----------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while subscribed."""
        return self.client is not None

    @property
    def where(self) -> str:
        """Where the daemon is expected: the -H host, else the socket path."""
        return self.settings.host or self.settings.socket_path

    def fileno(self) -> int:
        """The connection's descriptor, for select(); only while connected."""
        if self.client is None:
            raise DaemonUnavailable(self.where, self.lost_reason or "not connected")
        return self.client.fileno()

    def due_in(self) -> float:
        """Seconds until the next reconnection attempt (0 when connected or due)."""
        if self.connected:
            return 0.0
        return max(0.0, self._retry_at - time.monotonic())

    # -- connecting -------------------------------------------------------------
    def open(self) -> None:
        """Connect, say hello, subscribe and run on_connect; failures propagate."""
        stack = ExitStack()
        try:
            client = stack.enter_context(session.connect(self.settings))
            client.subscribe(self.topics, self.flt)
            self.client, self._stack = client, stack
            if self.on_connect is not None:
                self.on_connect(self)
        except BaseException:
            self.client, self._stack = None, None
            stack.close()
            raise
        self._backoff.reset()
        self.lost_reason = None

    def try_reopen(self) -> bool:
        """One reconnection attempt if one is due; True when subscribed again.

        Only connection failures (and a daemon that is full) are retried; any
        other daemon error, such as a filter a new daemon rejects, propagates.
        """
        if self.connected:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            self.open()
        except CONNECTION_ERRORS as exc:
            self._schedule_retry(short_reason(exc))
            return False
        except RPCError as exc:
            if exc.code != TOO_MANY_CLIENTS:
                raise
            self._schedule_retry(exc.message)
            return False
        return True

    def lose(self, reason: str) -> None:
        """Mark the connection lost (closing it) and schedule the first retry."""
        self._close_connection()
        self._schedule_retry(reason)

    def close(self) -> None:
        """Close the connection for good (idempotent)."""
        self._close_connection()

    def _schedule_retry(self, reason: str) -> None:
        self.lost_reason = reason
        self._retry_at = time.monotonic() + self._backoff.next()

    def _close_connection(self) -> None:
        stack, self._stack, self.client = self._stack, None, None
        if stack is not None:
            try:
                stack.close()
            except OSError:
                pass

    # -- using the connection --------------------------------------------------
    def request(self, query: Callable[[Client], T]) -> T:
        """A request on the subscribed connection: `query` calls one of the
        client's typed methods, e.g. `feed.request(lambda d: d.stats())`.

        Notifications that arrive meanwhile are kept for receive(). A lost
        connection is marked (see lose()) and its exception re-raised.
        """
        if self.client is None:
            raise DaemonUnavailable(self.where, self.lost_reason or "not connected")
        try:
            return query(self.client)
        except CONNECTION_ERRORS as exc:
            self.lose(short_reason(exc))
            raise

    def receive(self, timeout: float | None) -> list[Notification]:
        """The notifications that arrive within `timeout` (None: wait for one),
        plus everything already buffered behind the first.

        Always drains the buffer, so a caller that select()s on fileno() is
        never left with a notification the kernel no longer reports readable
        (call() may have read it along with its response). A lost connection
        ends the batch and marks the feed lost.
        """
        notes: list[Notification] = []
        if self.client is None:
            return notes
        wait = timeout if timeout is None else max(timeout, _DRAIN_POLL)
        try:
            note = self.client.next_notification(wait)
            while note is not None:
                notes.append(note)
                if len(notes) >= _DRAIN_MAX:
                    break
                note = self.client.next_notification(_DRAIN_POLL)
        except CONNECTION_ERRORS as exc:
            self.lose(short_reason(exc))
        return notes

    def events(self, deadline: float | None = None) -> Iterator[Notification | Outage | Restored]:
        """Block and yield notifications, with Outage/Restored around each outage.

        Ends at `deadline` (time.monotonic()); None runs until the caller stops.
        The caller must have open()ed the feed.
        """
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            if self.connected:
                yield from self.receive(remaining)
                if not self.connected:
                    yield Outage(self.lost_reason or "connection lost")
                continue
            wait = self.due_in() if remaining is None else min(self.due_in(), remaining)
            if wait > 0:
                time.sleep(wait)
            if self.try_reopen():
                yield Restored()
