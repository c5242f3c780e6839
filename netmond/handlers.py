"""One plain function per RPC method (docs/PROTOCOL.md §6): (daemon, params, session) -> result.

Handlers see the daemon through `DaemonInterface` and the client through
`Session`, two small protocols: what a method may read or change is listed
here, not spread over the Daemon's attributes. `app.Daemon` implements the
first, `server.ClientSession` the second; neither module is imported here,
so handlers can be driven by a test with plain objects.

Handlers validate their params and raise RPCError with a wire code; they
never let another exception escape (the server turns any that does into
`internal` without a traceback on the wire). `HANDLERS` is the one dispatch
table; a test checks every method of the protocol has an entry.
Adding a method end to end: docs/DESIGN.md, "Adding an RPC method".
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Awaitable, Iterable
from typing import Any, Callable, Iterator, Protocol

from common import api, protocol
from common.models import CONNECTION_FIELDS, Filter, FilterError
from common.protocol import RPCError

from . import __version__
from .server import Streamed
from .state import ConnRow
from .usage import params as usage_params
from .usage.recorder import UsageUnavailable


class DaemonInterface(Protocol):
    """What handlers may read and change of the running daemon (app.Daemon)."""

    @property
    def backend_name(self) -> str: ...

    @property
    def monitoring(self) -> bool: ...

    @property
    def interval(self) -> float:
        """The sampling interval asked for (seconds)."""

    def capabilities(self) -> list[str]: ...

    def effective_interval(self) -> float | None:
        """What the OS source really samples at, when it differs (nettop)."""

    def status(self) -> api.Status: ...

    def stats(self) -> api.Stats: ...

    def connections(self, include_closed: bool) -> Iterable[ConnRow]: ...

    def app_usage(self, rows: Iterable[ConnRow] | None = None) -> list[api.AppUsage]:
        """Every app (rows None, with the bytes of long-closed connections), or the apps of `rows`."""

    def remote_usage(self, rows: Iterable[ConnRow], by_port: bool = False) -> list[api.RemoteUsage]:
        """One row per remote address (per address and port with `by_port`) of `rows`."""

    def bandwidth_history(self, seconds: float) -> list[api.HistoryPoint]: ...

    def set_monitoring(self, on: bool) -> None: ...

    def clear(self) -> None: ...

    def set_interval(self, interval: float) -> None: ...

    def usage(self, query: dict[str, Any]) -> Awaitable[list[api.UsageRow]]:
        """Stored usage: UsageStore.query's arguments (usage.params.usage_query).
        Called while no tick runs (it takes what the ticks counted so far);
        the answer comes from the store's thread. UsageUnavailable (raised,
        or from the awaitable) when the daemon does not store usage or cannot now."""

    def forget_usage(self, before: float | None) -> Awaitable[int]:
        """Delete stored usage (all, or what ended by `before`); rows deleted.
        As usage()."""


class Session(Protocol):
    """What handlers may read and change of the client's session (server.ClientSession)."""

    @property
    def may_control(self) -> bool: ...

    @property
    def topics(self) -> set[str]: ...

    def subscribe(self, topics: list[str], flt: Filter) -> None: ...

    def unsubscribe(self, topics: list[str]) -> None: ...


Handler = Callable[[DaemonInterface, dict[str, Any], Session], Any]
#: A handler with its daemon bound: what the server calls, (params, session) -> result.
BoundHandler = Callable[[dict[str, Any], Session], Any]


def _invalid(field: str, message: str) -> RPCError:
    return RPCError(protocol.INVALID_PARAMS, f"{field}: {message}")


def _check_keys(params: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in params:
        if key not in allowed:
            raise _invalid(str(key), f"unknown parameter (allowed: {', '.join(allowed) or 'none'})")


def _filter(params: dict[str, Any]) -> Filter:
    try:
        return Filter.from_wire(params.get("filter"))
    except FilterError as exc:
        raise _invalid(f"filter.{exc.field}", str(exc).split(": ", 1)[-1]) from None


def _bool(params: dict[str, Any], key: str, default: bool = False) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise _invalid(key, "must be true or false")
    return value


def _positive_number(params: dict[str, Any], key: str, lo: float, hi: float) -> float:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _invalid(key, "must be a number")
    if not lo <= value <= hi:
        raise _invalid(key, f"must be between {lo:g} and {hi:g}")
    return float(value)


def _require_control(session: Session) -> None:
    if not session.may_control:
        raise RPCError(
            protocol.ACCESS_DENIED,
            "control needs root, the daemon's own user, or membership of its socket group",
        )


# -- methods ---------------------------------------------------------------


def hello(daemon: DaemonInterface, params: dict[str, Any], session: Session) -> api.HelloResult:
    """Handshake: protocol and daemon versions, platform, backend."""
    _check_keys(params, ("client_version",))
    cv = params.get("client_version")
    if cv is not None and not isinstance(cv, str):
        raise _invalid("client_version", "must be a string")
    return {
        "protocol": protocol.PROTOCOL_VERSION,
        "version": __version__,
        "platform": sys.platform,
        "backend": daemon.backend_name,
        "capabilities": daemon.capabilities(),
        "pid": os.getpid(),
    }


def status(daemon: DaemonInterface, params: dict[str, Any], session: Session) -> api.Status:
    """Daemon health: monitoring, interval, backend, warnings, own cost."""
    _check_keys(params, ())
    return daemon.status()


def _wire_chunks(rows: list[ConnRow], flt: Filter, include_closed: bool, wanted: list[str] | None,
                 chunk: int) -> Iterator[list[Any]]:
    """The matching rows as wire dicts, `chunk` at a time, lazily: each chunk
    is made when asked for, from the rows as they are then. A row that
    closed since the reply began is left out unless closed rows were asked
    for (it is no longer an open connection)."""
    batch: list[Any] = []  # Connections, or maps of the `fields` asked for
    now = time.time()
    for row in rows:
        if not include_closed and row.closed_at is not None:
            continue
        if not flt.matches(row):
            continue
        wire = row.to_wire(now)
        batch.append(wire if wanted is None else {f: wire.get(f) for f in wanted})
        if len(batch) >= chunk:
            yield batch
            batch = []
            now = time.time()
    if batch:
        yield batch


def connections(daemon: DaemonInterface, params: dict[str, Any], session: Session) -> Any:
    """Connection rows matching the filter; closed ones last. With `chunk`,
    streamed (server.Streamed): the rows in connections_chunk notifications,
    then the result."""
    _check_keys(params, ("filter", "include_closed", "fields", "chunk"))
    flt = _filter(params)
    include_closed = _bool(params, "include_closed")
    wanted = params.get("fields")
    if wanted is not None:
        # Let callers that need a few columns skip serialising the rest.
        if not isinstance(wanted, (list, tuple)) or not all(f in CONNECTION_FIELDS for f in wanted):
            raise _invalid("fields", f"must be a list of: {', '.join(CONNECTION_FIELDS)}")
        wanted = list(wanted)
    chunk = params.get("chunk")
    if chunk is not None:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or not api.CHUNK_MIN <= chunk <= api.CHUNK_MAX:
            raise _invalid("chunk", f"must be an integer from {api.CHUNK_MIN} to {api.CHUNK_MAX}")
        # The rows of this moment (references only: 8 bytes each); each is
        # turned into a dict when its chunk is made.
        rows = list(daemon.connections(include_closed))
        return Streamed(api.CONNECTIONS_CHUNK, "connections",
                        _wire_chunks(rows, flt, include_closed, wanted, chunk))
    now = time.time()
    # Filtered on the rows themselves: only the matches are turned into dicts.
    matching = flt.apply(daemon.connections(include_closed))
    # Connections, or maps of the `fields` asked for (each a Connection field).
    out: list[Any]
    if wanted is None:
        out = [row.to_wire(now) for row in matching]
    else:  # one full dict at a time, not all of them, before the cut
        out = [{f: wire.get(f) for f in wanted} for wire in (row.to_wire(now) for row in matching)]
    return {"connections": out}


def apps(daemon: DaemonInterface, params: dict[str, Any], session: Session) -> api.AppsResult:
    """Per-application usage; with a filter, computed over the matching rows only."""
    _check_keys(params, ("filter",))
    flt = _filter(params)
    if flt.is_empty():
        return {"apps": daemon.app_usage()}
    if flt.proc is not None and not (set(flt.to_wire()) - {"proc"}):
        # An app-level filter: whole apps, with the bytes of long-closed
        # connections, even those with nothing open now.
        needle = flt.proc.lower()
        return {"apps": [a for a in daemon.app_usage()
                         if a["process_name"] is not None and needle in a["process_name"].lower()]}
    return {"apps": daemon.app_usage(flt.apply(daemon.connections(True)))}


def remotes(daemon: DaemonInterface, params: dict[str, Any], session: Session) -> api.RemotesResult:
    """Per-remote usage over the open and retained closed rows (matching the filter)."""
    _check_keys(params, ("filter", "by_port"))
    flt = _filter(params)
    by_port = _bool(params, "by_port")
    return {"remotes": daemon.remote_usage(flt.apply(daemon.connections(True)), by_port=by_port)}


def stats(daemon: DaemonInterface, params: dict[str, Any], session: Session) -> api.Stats:
    """Totals, rates, interfaces, attribution."""
    _check_keys(params, ())
    return daemon.stats()


def bandwidth_history(
    daemon: DaemonInterface, params: dict[str, Any], session: Session
) -> api.BandwidthHistoryResult:
    """History points of the last `seconds` (default 60)."""
    _check_keys(params, ("seconds",))
    seconds = 60.0
    if "seconds" in params:
        seconds = _positive_number(params, "seconds", 0, api.HISTORY_SECONDS_MAX)
    return {"history": daemon.bandwidth_history(seconds)}


def control(daemon: DaemonInterface, params: dict[str, Any], session: Session) -> api.ControlResult:
    """start | stop | clear monitoring."""
    _check_keys(params, ("action",))
    action = params.get("action")
    if action not in api.ACTIONS:
        raise _invalid("action", "must be start, stop or clear")
    _require_control(session)
    if action == api.START:
        daemon.set_monitoring(True)
    elif action == api.STOP:
        daemon.set_monitoring(False)
    else:
        daemon.clear()
    return {"monitoring": daemon.monitoring}


def configure(daemon: DaemonInterface, params: dict[str, Any], session: Session) -> api.ConfigureResult:
    """Change the sampling interval."""
    _check_keys(params, ("interval",))
    if "interval" not in params:
        raise _invalid("interval", "required")
    interval = _positive_number(params, "interval", api.INTERVAL_MIN, api.INTERVAL_MAX)
    _require_control(session)
    daemon.set_interval(interval)
    result: api.ConfigureResult = {"interval": daemon.interval}
    effective = daemon.effective_interval()
    if effective is not None and abs(effective - daemon.interval) > 1e-6:
        result["effective_interval"] = effective  # only where it differs (nettop)
    return result


def _topics(params: dict[str, Any]) -> list[str]:
    topics = params.get("topics")
    if topics is None:
        return list(protocol.TOPICS)
    if not isinstance(topics, (list, tuple)) or not all(isinstance(t, str) for t in topics):
        raise _invalid("topics", "must be a list of topic names")
    bad = [t for t in topics if t not in protocol.TOPICS]
    if bad:
        raise _invalid("topics", f"unknown topic {bad[0]!r} (one of {', '.join(protocol.TOPICS)})")
    return list(dict.fromkeys(topics))


def subscribe(daemon: DaemonInterface, params: dict[str, Any], session: Session) -> api.TopicsResult:
    """Start notifications on topics, filtered by the daemon."""
    _check_keys(params, ("topics", "filter"))
    topics = _topics(params)
    session.subscribe(topics, _filter(params))
    return {"topics": sorted(session.topics)}


def unsubscribe(daemon: DaemonInterface, params: dict[str, Any], session: Session) -> api.TopicsResult:
    """Stop notifications on topics (all when none given)."""
    _check_keys(params, ("topics",))
    session.unsubscribe(_topics(params))
    return {"topics": sorted(session.topics)}


def _usage_param_error(exc: usage_params.ParamError) -> RPCError:
    return _invalid(exc.field, str(exc).split(": ", 1)[-1])


def _unavailable(exc: UsageUnavailable) -> RPCError:
    return RPCError(protocol.UNAVAILABLE, f"usage store: {exc}")


def usage(daemon: DaemonInterface, params: dict[str, Any], session: Session) -> Awaitable[api.UsageResult]:
    """Stored usage over days, grouped by app, remote, day or hour.

    Returns a coroutine: the store answers in its own thread, and the server
    awaits it, so this client waits and nobody else does."""
    try:
        query = usage_params.usage_query(params, time.time())
    except usage_params.ParamError as exc:
        raise _usage_param_error(exc) from None

    try:
        pending = daemon.usage(query)  # now, while no tick runs (the server's gate)
    except UsageUnavailable as exc:
        raise _unavailable(exc) from None

    async def answer() -> api.UsageResult:
        try:
            rows = await pending
        except UsageUnavailable as exc:
            raise _unavailable(exc) from None
        return {"usage": rows, "since": query["since"], "until": query["until"]}

    return answer()


def forget(daemon: DaemonInterface, params: dict[str, Any], session: Session) -> Awaitable[api.ForgetResult]:
    """Delete stored usage, all or what ended by `before` (control rights); a coroutine, as usage."""
    try:
        before = usage_params.forget_before(params, time.time())
    except usage_params.ParamError as exc:
        raise _usage_param_error(exc) from None
    _require_control(session)
    try:
        pending = daemon.forget_usage(before)
    except UsageUnavailable as exc:
        raise _unavailable(exc) from None

    async def answer() -> api.ForgetResult:
        try:
            return {"deleted": await pending}
        except UsageUnavailable as exc:
            raise _unavailable(exc) from None

    return answer()


#: Methods that read nothing a tick changes halfway (status reads what a
#: tick publishes whole): answered at once, even while a tick runs. Every
#: other method waits for the tick in progress to end (app.Daemon.state_quiet).
ANSWERED_DURING_TICK = frozenset({api.HELLO, api.STATUS, api.SUBSCRIBE, api.UNSUBSCRIBE})

HANDLERS: dict[str, Handler] = {
    api.HELLO: hello,
    api.STATUS: status,
    api.CONNECTIONS: connections,
    api.APPS: apps,
    api.REMOTES: remotes,
    api.STATS: stats,
    api.BANDWIDTH_HISTORY: bandwidth_history,
    api.CONTROL: control,
    api.CONFIGURE: configure,
    api.SUBSCRIBE: subscribe,
    api.UNSUBSCRIBE: unsubscribe,
    api.USAGE: usage,
    api.FORGET: forget,
}


def bind(daemon: DaemonInterface) -> dict[str, BoundHandler]:
    """The dispatch table the server serves: every handler with `daemon` bound."""
    return {method: functools.partial(handler, daemon) for method, handler in HANDLERS.items()}
