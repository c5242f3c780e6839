"""Synchronous msgpack-RPC client used by netmonctl (and tests, and bench).

    with Client.connect("/run/user/1000/netmond.sock", timeout=5) as c:
        c.hello()
        rows = c.connections({"proc": "chrome"})["connections"]
        c.subscribe([api.CONNECTION_UPDATE])
        note = c.next_notification(timeout=2)

One typed method per RPC method (common.api describes params and results);
`call(method, params)` is the untyped way to the same requests.

Connection failures are turned into exceptions a CLI can act on:
DaemonUnavailable (nothing listens: start the daemon), AccessDenied (the
socket exists but its mode refuses us) and UntrustedSocket (an AccessDenied:
the socket, or the daemon behind it, is another user's).

Trust (issue 10): before connecting, the socket's path is checked
(common.paths.socket_trust_problem: every directory and symlink on the way,
and the socket, belong to root or the caller, and none is writable by
others). Once connected, a socket found by default (not named with --socket
or NETMON_SOCKET) must also be served by a daemon running as root or as the
caller, by the kernel's word (SO_PEERCRED / LOCAL_PEERCRED): otherwise
another user who got a socket there first would answer root's netmonctl.
"""

from __future__ import annotations

import itertools
import socket
import struct
import sys
import time
import warnings
from typing import Any, Callable, Iterator, Sequence

from . import api, paths, protocol
from .errors import FailureKind, NetmonError
from .protocol import Notification, ProtocolError, RPCError, Response

from . import __version__ as CLIENT_VERSION


class DaemonUnavailable(NetmonError):
    """No daemon answers at the socket path (absent, refused, or gone).

    kind: NO_DAEMON when none could be reached, CONNECTION_LOST when one
    was and the connection then broke.
    """

    def __init__(self, path: str, reason: str, kind: FailureKind = FailureKind.NO_DAEMON) -> None:
        super().__init__(f"cannot reach netmond at {path}: {reason}", reason)
        self.path = path
        self.kind = kind


class AccessDenied(NetmonError):
    """The daemon's socket refused us (file mode or group)."""

    kind = FailureKind.ACCESS_DENIED

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"access to {path} denied: {reason}", reason)
        self.path = path


class UntrustedSocket(AccessDenied):
    """The socket or the daemon behind it belongs to a user we do not trust."""

    kind = FailureKind.UNTRUSTED

    def __init__(self, path: str, reason: str) -> None:
        NetmonError.__init__(self, f"refusing to use {path}: {reason}", reason)
        self.path = path


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket, if the OS says."""
    try:
        if sys.platform.startswith("linux"):
            _pid, uid, _gid = struct.unpack("=iII", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            return uid
        if sys.platform == "darwin":
            # LOCAL_PEERCRED (SOL_LOCAL 0, option 1): struct xucred {u_int version; uid_t uid; ...}
            _version, uid = struct.unpack_from("=II", sock.getsockopt(0, 1, 76))
            return uid
    except (OSError, struct.error):
        return None
    return None


class VersionMismatchWarning(UserWarning):
    """The daemon speaks another protocol or release than this client."""


def open_unix_socket(path: str, timeout: float | None = 5.0, explicit: bool = True) -> socket.socket:
    """A stream socket connected to the daemon at path.

    Failures become DaemonUnavailable or AccessDenied (UntrustedSocket), so
    that Client.connect and a raw byte bridge (`netmonctl dial-stdio`) report
    them alike. `explicit`: the user named this path; a daemon found by
    default must run as root or as the caller (see the module docstring).
    """
    problem = paths.socket_trust_problem(path, explicit)
    if problem is not None:
        raise UntrustedSocket(path, problem)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise DaemonUnavailable(path, "no socket file (daemon not running)") from None
    except ConnectionRefusedError:
        sock.close()
        raise DaemonUnavailable(path, "connection refused (stale socket, daemon not running)") from None
    except PermissionError as exc:
        sock.close()
        raise AccessDenied(path, exc.strerror or "permission denied") from None
    except socket.timeout:
        sock.close()
        raise DaemonUnavailable(path, "timed out connecting") from None
    except OSError as exc:  # EACCES is PermissionError, above
        sock.close()
        raise DaemonUnavailable(path, exc.strerror or str(exc)) from None
    if not explicit:
        uid = peer_uid(sock)
        if uid is not None and uid not in paths.trusted_uids():
            sock.close()
            raise UntrustedSocket(path, f"the daemon there runs as uid {uid}, neither root nor you "
                                        "(name the socket with --socket to use it anyway)")
    return sock


class Client:
    """One connection to netmond. Not thread-safe; one request at a time.

    Notifications that arrive while waiting for a response are queued and
    handed out by next_notification().
    """

    def __init__(self, sock: socket.socket, path: str = "", timeout: float | None = 5.0) -> None:
        self._sock = sock
        self._sock.settimeout(timeout)
        self.path = path
        self.timeout = timeout
        self._unpacker = protocol.new_unpacker(limited=False)
        self._ids = itertools.count(1)
        self._pending_notes: list[Notification] = []
        self.server_info: api.HelloResult | None = None
        #: Applied to every message read before it is decoded (netmonctl:
        #: render.printable_data, so no daemon string reaches a terminal raw).
        self.clean: Callable[[Any], Any] | None = None

    @classmethod
    def connect(cls, path: str, timeout: float | None = 5.0, explicit: bool = True) -> "Client":
        """Connect to the daemon's Unix socket, mapping failures to our exceptions."""
        return cls(open_unix_socket(path, timeout, explicit), path, timeout)

    # -- context manager -------------------------------------------------
    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        try:
            self._sock.close()
        except OSError:
            pass

    def fileno(self) -> int:
        """The socket's descriptor, for select()."""
        return self._sock.fileno()

    # -- calls -------------------------------------------------------------
    def hello(self) -> api.HelloResult:
        """Handshake; warns (VersionMismatchWarning) if the daemon differs."""
        info: api.HelloResult = self.call(api.HELLO, {"client_version": CLIENT_VERSION})
        self.server_info = info
        if info.get("protocol") != protocol.PROTOCOL_VERSION:
            warnings.warn(
                f"netmond speaks protocol {info.get('protocol')}, this netmonctl "
                f"speaks {protocol.PROTOCOL_VERSION}; results may be incomplete",
                VersionMismatchWarning,
                stacklevel=2,
            )
        elif info.get("version") != CLIENT_VERSION:
            warnings.warn(
                f"netmond is version {info.get('version')}, netmonctl is {CLIENT_VERSION}",
                VersionMismatchWarning,
                stacklevel=2,
            )
        return info

    def status(self) -> api.Status:
        """The daemon's own health."""
        return self.call(api.STATUS)

    def connections(self, filter: api.FilterMap | None = None, *, include_closed: bool = False,
                    fields: Sequence[str] | None = None) -> api.ConnectionsResult:
        """Connection rows matching the filter (closed ones last with include_closed)."""
        params: api.ConnectionsParams = {"include_closed": include_closed}
        if filter:
            params["filter"] = filter
        if fields is not None:
            params["fields"] = list(fields)
        return self.call(api.CONNECTIONS, dict(params))

    def connections_streamed(self, filter: api.FilterMap | None = None, *, include_closed: bool = False,
                             fields: Sequence[str] | None = None,
                             chunk: int = 2000) -> Iterator[list[api.Connection]]:
        """The rows of `connections`, chunk by chunk as the daemon sends them
        (docs/PROTOCOL.md, `connections`, `chunk`): neither side holds the
        whole table. A daemon that predates streaming (it refuses `chunk`)
        is asked again without it, and its whole reply is the one chunk."""
        params: dict[str, Any] = {"include_closed": include_closed, "chunk": chunk}
        if filter:
            params["filter"] = filter
        if fields is not None:
            params["fields"] = list(fields)
        msgid = next(self._ids)
        self._send(protocol.pack_request(msgid, api.CONNECTIONS, params))
        while True:
            msg = self._read_message()
            if isinstance(msg, Notification):
                if msg.method == api.CONNECTIONS_CHUNK and msg.payload.get("msgid") == msgid:
                    rows = msg.payload.get("connections")
                    if isinstance(rows, list) and rows:
                        yield rows
                else:
                    self._pending_notes.append(msg)
                continue
            if isinstance(msg, Response) and msg.msgid == msgid:
                if msg.error is not None:
                    if msg.error.code == api.INVALID_PARAMS and msg.error.message.startswith("chunk:"):
                        del params["chunk"]
                        yield self.call(api.CONNECTIONS, params)["connections"]
                        return
                    raise msg.error
                rows = msg.result.get("connections") if isinstance(msg.result, dict) else None
                if isinstance(rows, list) and rows:
                    yield rows
                return
            if isinstance(msg, Response) and msg.msgid == 0 and msg.error is not None:
                raise msg.error

    def apps(self, filter: api.FilterMap | None = None) -> api.AppsResult:
        """Per-application usage, over the matching rows with a filter."""
        return self.call(api.APPS, {"filter": filter} if filter else {})

    def remotes(self, filter: api.FilterMap | None = None, *, by_port: bool = False) -> api.RemotesResult:
        """Per-remote usage (per remote address and port with by_port), over the matching rows with a filter."""
        params: api.RemotesParams = {}
        if filter:
            params["filter"] = filter
        if by_port:
            params["by_port"] = True
        return self.call(api.REMOTES, dict(params))

    def stats(self) -> api.Stats:
        """Machine totals."""
        return self.call(api.STATS)

    def bandwidth_history(self, seconds: float | None = None) -> api.BandwidthHistoryResult:
        """History points of the last `seconds` (the daemon's default: 60)."""
        return self.call(api.BANDWIDTH_HISTORY, {} if seconds is None else {"seconds": seconds})

    def control(self, action: api.ControlAction) -> api.ControlResult:
        """start | stop | clear (needs control rights)."""
        return self.call(api.CONTROL, {"action": action})

    def configure(self, interval: float) -> api.ConfigureResult:
        """Set the sampling interval, seconds (needs control rights)."""
        return self.call(api.CONFIGURE, {"interval": interval})

    def subscribe(self, topics: Sequence[str] | None = None,
                  filter: api.FilterMap | None = None) -> api.TopicsResult:
        """Receive notifications on topics (all by default); read them with next_notification()."""
        params: api.SubscribeParams = {}
        if topics is not None:
            params["topics"] = list(topics)
        if filter:
            params["filter"] = filter
        return self.call(api.SUBSCRIBE, dict(params))

    def unsubscribe(self, topics: Sequence[str] | None = None) -> api.TopicsResult:
        """Stop notifications on topics (all by default)."""
        return self.call(api.UNSUBSCRIBE, {} if topics is None else {"topics": list(topics)})

    def usage(self, since: float | str | None = None, until: float | str | None = None,
              by: str | Sequence[str] | None = None, filter: api.FilterMap | None = None,
              limit: int | None = None) -> api.UsageResult:
        """Stored usage over days (docs/PROTOCOL.md, usage); None: the daemon's default."""
        params: dict[str, Any] = {"since": since, "until": until, "by": by, "filter": filter or None,
                                  "limit": limit}
        return self.call(api.USAGE, {k: v for k, v in params.items() if v is not None})

    def forget(self, before: float | str | None = None) -> api.ForgetResult:
        """Delete stored usage, all or what ended by `before` (needs control rights)."""
        return self.call(api.FORGET, {} if before is None else {"before": before})

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send a request and wait for its response; RPCError on error."""
        msgid = next(self._ids)
        self._send(protocol.pack_request(msgid, method, params))
        while True:
            msg = self._read_message()
            if isinstance(msg, Notification):
                self._pending_notes.append(msg)
                continue
            if isinstance(msg, Response) and msg.msgid == msgid:
                if msg.error is not None:
                    raise msg.error
                return msg.result
            if isinstance(msg, Response) and msg.msgid == 0 and msg.error is not None:
                # The daemon refused the connection itself (too_many_clients,
                # protocol_error): it answers with msgid 0 and then closes.
                raise msg.error
            # A response to another id cannot happen with one call at a time;
            # ignore it rather than mis-deliver.

    def next_notification(self, timeout: float | None) -> Notification | None:
        """One pending or incoming notification, or None after `timeout`."""
        if self._pending_notes:
            return self._pending_notes.pop(0)
        self._sock.settimeout(timeout)
        try:
            while True:
                msg = self._read_message()
                if isinstance(msg, Notification):
                    return msg
        except socket.timeout:
            return None
        finally:
            self._sock.settimeout(self.timeout)

    # -- plumbing ----------------------------------------------------------
    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            refusal = self._refusal()
            if refusal is not None:
                raise refusal from None
            raise DaemonUnavailable(self.path, f"connection lost ({exc.strerror})",
                                    FailureKind.CONNECTION_LOST) from None

    def _refusal(self) -> RPCError | None:
        """The error a daemon that refused this connection sent before closing
        it (too_many_clients, msgid 0), if that is why sending failed: without
        it a busy daemon read as a stopped one ("start the daemon with...")."""
        try:
            msg = self._read_message()
        except (DaemonUnavailable, OSError, ProtocolError, ValueError):
            return None
        if isinstance(msg, Response) and msg.msgid == 0 and isinstance(msg.error, RPCError):
            return msg.error
        return None

    def _read_message(self) -> Any:
        while True:
            for obj in self._unpacker:
                return protocol.decode_message(obj if self.clean is None else self.clean(obj))
            try:
                chunk = self._sock.recv(256 * 1024)
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise DaemonUnavailable(self.path, f"connection lost ({exc.strerror})",
                                    FailureKind.CONNECTION_LOST) from None
            if not chunk:
                raise DaemonUnavailable(self.path, "daemon closed the connection", FailureKind.CONNECTION_LOST)
            self._unpacker.feed(chunk)


def wait_for_daemon(path: str, timeout: float = 10.0) -> None:
    """Block until a daemon answers `hello` at path (for tests and scripts)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with Client.connect(path, timeout=1.0) as c:
                c.call(api.HELLO, {"client_version": CLIENT_VERSION})
                return
        except (DaemonUnavailable, AccessDenied, RPCError, ProtocolError, OSError) as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"netmond did not answer at {path} within {timeout}s: {last}")
