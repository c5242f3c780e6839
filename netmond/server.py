"""asyncio Unix-socket server: sessions, limits, dispatch, notifications.

Each client gets a ClientSession. What a client can make the daemon do is
bounded on every axis:
- bytes: the Unpacker limits of common.protocol (1 MiB buffer, 4096-element
  arrays, 1024-entry maps); a client that exceeds them or sends something that
  is not msgpack-RPC is told why (where a reply is possible) and disconnected;
- time: a client that sends nothing for `client_idle_timeout` and has no
  subscription is disconnected (half-open peers go with it);
- count: at most `max_clients` sessions; the next one is answered
  `too_many_clients` and closed, so descriptors are never exhausted;
- queue: notifications wait in a bounded per-session queue; a subscriber that
  stops reading misses updates and is told so with one `lagged` notification
  instead of making the daemon buffer without end;
- pipelining: a response is written and drained before the next request is
  read, so a client that never reads its replies only stalls itself.
Log lines name the peer's pid/uid and what went wrong, never the payload.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

import msgpack

from common import protocol
from common.models import Filter
from common.protocol import BadParams, ProtocolError, Request, RPCError

from .handlers import HANDLERS
from .peercred import PeerCredentials, may_control, peer_credentials

if TYPE_CHECKING:  # pragma: no cover
    from .app import Daemon

log = logging.getLogger("netmond.server")

_READ_CHUNK = 64 * 1024
# How long a response may wait for a client that does not read it.
_WRITE_TIMEOUT = 30.0


class ClientSession:
    """One connected client: its credentials, subscriptions and send queue."""

    def __init__(
        self,
        daemon: "Daemon",
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerCredentials | None,
        queue_size: int,
    ) -> None:
        self.daemon = daemon
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.may_control = may_control(peer, daemon.control_gid)
        self.topics: set[str] = set()
        self.filter = Filter()
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=queue_size)
        self._missed = 0
        self._sender: asyncio.Task[None] | None = None
        self.label = f"pid={peer.pid} uid={peer.uid}" if peer else "peer=unknown"

    # -- subscriptions (called by handlers) ---------------------------------
    def subscribe(self, topics: list[str], flt: Filter) -> None:
        self.topics.update(topics)
        self.filter = flt
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_notifications())

    def unsubscribe(self, topics: list[str]) -> None:
        self.topics.difference_update(topics)

    def notify(self, data: bytes) -> None:
        """Queue one packed notification; never blocks, never grows past the bound."""
        try:
            self._queue.put_nowait(data)
        except asyncio.QueueFull:
            self._missed += 1

    async def _send_notifications(self) -> None:
        try:
            while True:
                data = await self._queue.get()
                self.writer.write(data)
                if self._missed and self._queue.empty():
                    missed, self._missed = self._missed, 0
                    self.writer.write(
                        protocol.pack_notification(protocol.LAGGED, {"missed": missed})
                    )
                await self.writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # noqa: BLE001 - never let a sender kill the loop
            log.exception("notification sender failed (%s)", self.label)

    # -- the read loop --------------------------------------------------------
    async def serve(self) -> None:
        unpacker = protocol.new_unpacker(limited=True)
        idle = self.daemon.config.client_idle_timeout
        try:
            while True:
                try:
                    timeout = None if self.topics else idle
                    chunk = await asyncio.wait_for(self.reader.read(_READ_CHUNK), timeout)
                except asyncio.TimeoutError:
                    log.info("client %s idle for %.0fs: disconnected", self.label, idle)
                    return
                if not chunk:
                    return
                try:
                    unpacker.feed(chunk)
                except msgpack.BufferFull:
                    await self._fatal(protocol.TOO_LARGE, "message larger than 1 MiB")
                    return
                while True:
                    try:
                        obj = next(unpacker)
                    except StopIteration:
                        break
                    except ValueError as exc:
                        # Limits exceeded (array/map/str too long) or corrupt data.
                        code = protocol.TOO_LARGE if "exceeds" in str(exc) else protocol.PROTOCOL_ERROR
                        await self._fatal(code, "invalid msgpack or over a limit")
                        return
                    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError):
                        await self._fatal(protocol.PROTOCOL_ERROR, "invalid msgpack")
                        return
                    if not await self._handle(obj):
                        return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if self._sender is not None:
                self._sender.cancel()
            self.writer.close()

    async def _handle(self, obj: Any) -> bool:
        """Answer one message; False when the client must be dropped."""
        try:
            msg = protocol.decode_message(obj)
        except BadParams as exc:
            await self._respond(exc.msgid, exc, None)
            return True
        except ProtocolError as exc:
            await self._fatal(protocol.PROTOCOL_ERROR, str(exc))
            return False
        if not isinstance(msg, Request):
            await self._fatal(protocol.PROTOCOL_ERROR, "clients may only send requests")
            return False
        handler = HANDLERS.get(msg.method)
        if handler is None:
            err = RPCError(protocol.UNKNOWN_METHOD, f"unknown method {msg.method[:64]!r}")
            await self._respond(msg.msgid, err, None)
            return True
        try:
            result = handler(self.daemon, msg.params, self)
        except RPCError as exc:
            await self._respond(msg.msgid, exc, None)
            return True
        except Exception:  # noqa: BLE001 - no traceback crosses the socket
            log.exception("handler %s failed (%s)", msg.method, self.label)
            await self._respond(msg.msgid, RPCError(protocol.INTERNAL, "internal error; see daemon log"), None)
            return True
        await self._respond(msg.msgid, None, result)
        return True

    async def _respond(self, msgid: int, error: RPCError | None, result: Any) -> None:
        self.writer.write(protocol.pack_response(msgid, error, result))
        await asyncio.wait_for(self.writer.drain(), _WRITE_TIMEOUT)

    async def _fatal(self, code: str, message: str) -> None:
        """Tell the client why (msgid 0: no request to answer) and log one line."""
        log.warning("client %s: %s (%s); disconnected", self.label, message, code)
        try:
            self.writer.write(protocol.pack_response(0, RPCError(code, message), None))
            await asyncio.wait_for(self.writer.drain(), 1.0)
        except (ConnectionError, asyncio.TimeoutError):
            pass


class Server:
    """The listening socket and its sessions."""

    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon
        self.sessions: set[ClientSession] = set()
        self._server: asyncio.base_events.Server | None = None

    @property
    def client_count(self) -> int:
        return len(self.sessions)

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already bound and listening socket."""
        self._server = await asyncio.start_unix_server(self._on_client, sock=sock, limit=_READ_CHUNK)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        peer = peer_credentials(sock) if sock is not None else None
        cfg = self.daemon.config
        if len(self.sessions) >= cfg.max_clients:
            log.warning("client limit (%d) reached: refusing a connection", cfg.max_clients)
            writer.write(
                protocol.pack_response(
                    0, RPCError(protocol.TOO_MANY_CLIENTS, f"netmond serves at most {cfg.max_clients} clients"), None
                )
            )
            try:
                await asyncio.wait_for(writer.drain(), 1.0)
            except (ConnectionError, asyncio.TimeoutError):
                pass
            writer.close()
            return
        session = ClientSession(self.daemon, reader, writer, peer, cfg.subscriber_queue)
        self.sessions.add(session)
        try:
            await session.serve()
        except Exception:  # noqa: BLE001 - one client never takes the daemon down
            log.exception("client %s failed", session.label)
        finally:
            self.sessions.discard(session)

    def publish(self, topic: str, payload: dict[str, Any], rows_key: str | None = None) -> None:
        """Queue a notification for every session subscribed to topic.

        With rows_key, payload[rows_key] is a list of Connection rows that is
        filtered per session; sessions whose filter leaves nothing get nothing.
        """
        packed_all: bytes | None = None
        for s in list(self.sessions):
            if topic not in s.topics:
                continue
            if rows_key is not None and not s.filter.is_empty():
                rows = s.filter.apply(payload[rows_key])
                if rows:
                    s.notify(protocol.pack_notification(topic, {**payload, rows_key: rows}))
                continue
            if packed_all is None:
                packed_all = protocol.pack_notification(topic, payload)
            s.notify(packed_all)

    @property
    def has_subscribers(self) -> bool:
        return any(s.topics for s in self.sessions)

    async def close(self) -> None:
        """Stop listening and close every session."""
        if self._server is not None:
            self._server.close()
        for s in list(self.sessions):
            s.writer.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except asyncio.TimeoutError:
                pass
