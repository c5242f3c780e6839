"""msgpack-RPC framing for netmon (docs/PROTOCOL.md §2-§5).

Standard msgpack-RPC over a stream socket: a sequence of msgpack arrays with no
extra framing.

    request       [0, msgid, method, [params]]
    response      [1, msgid, error, result]     error = {"code", "message"} or nil
    notification  [2, method, [payload]]

Method names may arrive as msgpack str or bin (decoded as UTF-8).
The daemon reads with hard Unpacker limits so that no client can make it
allocate more than about a megabyte, whatever header it sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import msgpack
import msgpack.fallback

from .errors import FailureKind, NetmonError

# The names of the contract live in common.api (no msgpack there); they are
# re-exported here for code that speaks the protocol.
from .api import (  # noqa: F401 - re-exported
    ACCESS_DENIED,
    CONNECTIONS_CHUNK,
    ERROR_CODES,
    INTERNAL,
    INVALID_PARAMS,
    LAGGED,
    PROTOCOL_ERROR,
    PROTOCOL_VERSION,
    TOO_LARGE,
    TOO_MANY_CLIENTS,
    TOPICS,
    UNAVAILABLE,
    UNKNOWN_METHOD,
)

REQUEST = 0
RESPONSE = 1
NOTIFICATION = 2

#: Largest buffered frame the daemon accepts from a client.
MAX_BUFFER_SIZE = 1024 * 1024
#: Largest array / map a client may send (and so the largest filter or params).
MAX_ARRAY_LEN = 4096
MAX_MAP_LEN = 1024
#: Strings and binaries are bounded by the buffer; no extra limit needed.
#: Containers and their elements in one message, all levels together. Per
#: container limits alone let 1 MiB of empty maps (one byte each) decode to
#: a million dicts, ~54 MB of Python objects; real requests have a few dozen.
MAX_OBJECTS = 16384
#: Deepest nesting of arrays and maps in one message (a request needs 4).
MAX_DEPTH = 32


#: Error codes that say more than "the daemon answered with an error".
_CODE_KINDS = {ACCESS_DENIED: FailureKind.ACCESS_DENIED, INVALID_PARAMS: FailureKind.USAGE}


class RPCError(NetmonError):
    """An error with a wire code; raised by handlers, carried to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.kind = _CODE_KINDS.get(code, FailureKind.DAEMON_ERROR)

    def to_wire(self) -> dict[str, str]:
        """The {code, message} map sent in a response."""
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_wire(cls, raw: Any) -> "RPCError":
        """Build from a response's error field, tolerating odd shapes."""
        if isinstance(raw, dict):
            return cls(str(raw.get("code", INTERNAL)), str(raw.get("message", "")))
        return cls(INTERNAL, str(raw))

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ProtocolError(NetmonError):
    """The byte stream is not valid msgpack-RPC; the connection must be dropped."""

    kind = FailureKind.PROTOCOL

    @property
    def reason(self) -> str:
        return f"unexpected data ({self})"


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request."""

    msgid: int
    method: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Response:
    """A decoded response."""

    msgid: int
    error: RPCError | None
    result: Any


@dataclass(frozen=True, slots=True)
class Notification:
    """A decoded notification."""

    method: str
    payload: dict[str, Any]


class TooComplex(ValueError):
    """A message holds more objects, or nests deeper, than a client may send."""


class DecodeBudget:
    """Counts what the C Unpacker builds, through its list and map hooks, and
    stops it (TooComplex) past MAX_OBJECTS: the budget of the message being
    decoded. `reset()` after each complete message."""

    def __init__(self, max_objects: int = MAX_OBJECTS) -> None:
        self.max_objects = max_objects
        self.used = 0

    def reset(self) -> None:
        self.used = 0

    def _count(self, container: Any) -> Any:
        self.used += len(container) + 1
        if self.used > self.max_objects:
            raise TooComplex(f"more than {self.max_objects} objects in one message")
        return container


def too_deep(obj: Any, limit: int = MAX_DEPTH) -> bool:
    """True if arrays/maps in obj nest deeper than limit. Iterative: a
    message 1,000 levels deep must not exhaust Python's recursion limit."""
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        children: Sequence[Any]
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (list, tuple, dict)))
    return False


def new_unpacker(limited: bool = True, pure: bool = False,
                 budget: DecodeBudget | None = None) -> msgpack.Unpacker:
    """An Unpacker for a stream; `limited` applies the daemon's memory limits.

    Clients read the daemon's (trusted, possibly large) replies with a bigger
    buffer: a 10,000-connection reply is several megabytes.

    `pure` gives msgpack's pure-Python Unpacker with the same limits: it
    refuses a str/bin/ext header over its limit as soon as the header
    arrives, where the C one waits for the whole body. It is ~300 times
    slower, so the daemon decodes with the C one and uses the pure one only
    to look at the first bytes of a message that has stalled.

    `budget` (limited only) bounds the objects one message may decode to.
    """
    if limited:
        cls = msgpack.fallback.Unpacker if pure else msgpack.Unpacker
        hooks: dict[str, Any] = {}
        if budget is not None:
            hooks = {"list_hook": budget._count, "object_hook": budget._count}
        return cls(
            **hooks,
            raw=False,
            read_size=64 * 1024,
            max_buffer_size=MAX_BUFFER_SIZE,
            max_array_len=MAX_ARRAY_LEN,
            max_map_len=MAX_MAP_LEN,
            max_str_len=MAX_BUFFER_SIZE,
            max_bin_len=MAX_BUFFER_SIZE,
            max_ext_len=MAX_BUFFER_SIZE,
            strict_map_key=False,
        )
    return msgpack.Unpacker(raw=False, max_buffer_size=512 * 1024 * 1024, strict_map_key=False)


def pack(obj: Any) -> bytes:
    """Serialise one message.

    A str that cannot be encoded (a lone surrogate, from OS bytes that were
    not UTF-8) must never make a reply fail: the daemon decodes OS strings
    with common.ostext at the source, and should one slip through, it is
    sent with '?' in place of what does not encode (msgpack's slower
    error-handling path, only on that rare message).
    """
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except UnicodeEncodeError:
        return msgpack.packb(obj, use_bin_type=True, unicode_errors="replace")


def pack_request(msgid: int, method: str, params: dict[str, Any] | None = None) -> bytes:
    """Encode a request; params travel as the single element of the params array."""
    return pack([REQUEST, msgid, method, [params or {}]])


def pack_response(msgid: int, error: RPCError | None, result: Any) -> bytes:
    """Encode a response."""
    return pack([RESPONSE, msgid, error.to_wire() if error else None, result])


def pack_notification(method: str, payload: Mapping[str, Any]) -> bytes:
    """Encode a notification."""
    return pack([NOTIFICATION, method, [payload]])


def decode_message(obj: Any) -> Request | Response | Notification:
    """Classify one unpacked msgpack value as a message, or raise.

    Raises ProtocolError when the value is not a msgpack-RPC message at all
    (the peer speaks something else: disconnect); BadMessage, for that one
    message only, when it is shaped right but cannot be served: a request
    whose params are not one map (invalid_params, answerable), or a method
    name sent as msgpack bin that is not UTF-8 (protocol_error).
    """
    if not isinstance(obj, (list, tuple)) or not obj:
        raise ProtocolError("message is not a msgpack-RPC array")
    kind = obj[0]
    if kind == REQUEST:
        if len(obj) != 4 or not isinstance(obj[1], int) or isinstance(obj[1], bool):
            raise ProtocolError("malformed request")
        msgid, params = obj[1], obj[3]
        return Request(msgid, _method_name(obj[2], msgid), _params_map(params, msgid))
    if kind == RESPONSE:
        if len(obj) != 4:
            raise ProtocolError("malformed response")
        err = RPCError.from_wire(obj[2]) if obj[2] is not None else None
        return Response(obj[1], err, obj[3])
    if kind == NOTIFICATION:
        if len(obj) != 3 or not isinstance(obj[2], (list, tuple)):
            raise ProtocolError("malformed notification")
        method = _method_name(obj[1], None)
        payload = obj[2][0] if obj[2] else {}
        return Notification(method, payload if isinstance(payload, dict) else {})
    # Never the repr of client data: a value nested 1,000 deep would raise
    # RecursionError here, and it could be large.
    shown = kind if isinstance(kind, int) and not isinstance(kind, bool) else type(kind).__name__
    raise ProtocolError(f"unknown message type {shown}")


def _method_name(raw: Any, msgid: int | None) -> str:
    # The spec says "string"; some clients (pynvim) send names as msgpack
    # bin, which the Unpacker hands over as bytes.
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadMessage(msgid, PROTOCOL_ERROR, "method name is not valid UTF-8") from None
    raise ProtocolError("method name is not a string")


class BadMessage(RPCError):
    """One message that cannot be served, though the stream is still sound.

    `msgid` is the request's, so that it can be answered; None for a
    notification, which gets no answer.
    """

    def __init__(self, msgid: int | None, code: str, message: str) -> None:
        super().__init__(code, message)
        self.msgid = msgid


class BadParams(BadMessage):
    """invalid_params for a request whose msgid is known (so it can be answered)."""

    def __init__(self, msgid: int, message: str) -> None:
        super().__init__(msgid, INVALID_PARAMS, message)


def _params_map(params: Any, msgid: int) -> dict[str, Any]:
    # msgpack-RPC params are an array; netmon passes one map (or nothing).
    if params is None:
        return {}
    if isinstance(params, dict):
        return params
    if isinstance(params, (list, tuple)):
        if not params:
            return {}
        if len(params) == 1 and isinstance(params[0], dict):
            return params[0]
    raise BadParams(msgid, "params must be an array holding one map")
