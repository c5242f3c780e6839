"""One plain function per RPC method (docs/PROTOCOL.md §6): (daemon, params, session) -> result.

Handlers validate their params and raise RPCError with a wire code; they
never let another exception escape (the server turns any that does into
`internal` without a traceback on the wire). `HANDLERS` is the one dispatch
table; a test checks every method of the protocol has an entry.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

import psutil

from common import api, protocol
from common.models import CONNECTION_FIELDS, Filter, FilterError
from common.protocol import RPCError

from . import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .app import Daemon
    from .server import ClientSession

Handler = Callable[["Daemon", dict[str, Any], "ClientSession"], Any]


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


def _require_control(session: "ClientSession") -> None:
    if not session.may_control:
        raise RPCError(
            protocol.ACCESS_DENIED,
            "control needs root, the daemon's own user, or membership of its socket group",
        )


# -- methods ---------------------------------------------------------------


def hello(daemon: "Daemon", params: dict[str, Any], session: "ClientSession") -> api.HelloResult:
    """Handshake: protocol and daemon versions, platform, backend."""
    _check_keys(params, ("client_version",))
    cv = params.get("client_version")
    if cv is not None and not isinstance(cv, str):
        raise _invalid("client_version", "must be a string")
    return {
        "protocol": protocol.PROTOCOL_VERSION,
        "version": __version__,
        "platform": sys.platform,
        "backend": daemon.backend.name,
        "capabilities": daemon.backend.capabilities(),
        "pid": os.getpid(),
    }


def status(daemon: "Daemon", params: dict[str, Any], session: "ClientSession") -> api.Status:
    """Daemon health: monitoring, interval, backend, warnings, own cost."""
    _check_keys(params, ())
    bst = daemon.backend.status()
    warnings = list(daemon.warnings) + list(bst.warnings)
    if not bst.attribution_complete and not any("attribut" in w for w in warnings):
        warnings.append("process attribution is partial: some sockets are shown without pid")
    if bst.events_lost:
        warnings.append(
            f"{bst.events_lost} connection-close events were lost (kernel buffer overflow): "
            "bytes of those short-lived connections are not counted"
        )
    try:
        rss = daemon.self_process.memory_info().rss
    except psutil.Error:
        rss = None
    state = daemon.state
    counts = state.connection_counts()
    mono = time.monotonic()
    return {
        "monitoring": daemon.monitoring,
        "interval": state.interval,
        # What the OS source really samples at (nettop: whole seconds).
        "effective_interval": bst.effective_interval if bst.effective_interval is not None else state.interval,
        "uptime": mono - daemon.started_mono,
        "backend": daemon.backend.name,
        "per_socket_bytes": daemon.backend.per_socket_bytes,
        "privileged": bst.privileged,
        "attribution_complete": bst.attribution_complete,
        "root_mode": bst.root_mode,
        "events_lost": bst.events_lost,
        "warnings": warnings,
        "cpu_percent": daemon.cpu_window.percent(),
        "cpu_window_seconds": daemon.cpu_window.covered_seconds(),
        "rss_bytes": rss,
        "sample_age": None if state.last_mono is None else mono - state.last_mono,
        "last_tick_seconds": daemon.last_tick_seconds,
        "ticks": state.ticks,
        "connections": counts["connections"],
        "listeners": counts["listeners"],
        "time_wait": counts["time_wait"],
        "sockets": counts["sockets"],
        "closed_retained": len(state.closed),
        "clients": daemon.server.client_count if daemon.server else 0,
        "socket": daemon.socket_path,
        "version": __version__,
        "pid": os.getpid(),
        "history_seconds": state.history_seconds,
        "include_loopback": state.include_loopback,
    }


def connections(daemon: "Daemon", params: dict[str, Any], session: "ClientSession") -> api.ConnectionsResult:
    """Connection rows matching the filter; closed ones last."""
    _check_keys(params, ("filter", "include_closed", "fields"))
    flt = _filter(params)
    include_closed = _bool(params, "include_closed")
    wanted = params.get("fields")
    if wanted is not None:
        # Let callers that need a few columns skip serialising the rest.
        if not isinstance(wanted, (list, tuple)) or not all(f in CONNECTION_FIELDS for f in wanted):
            raise _invalid("fields", f"must be a list of: {', '.join(CONNECTION_FIELDS)}")
    now = time.time()
    # Filtered on the rows themselves: only the matches are turned into dicts.
    matching = flt.apply(daemon.state.connections(include_closed))
    if wanted is None:
        rows = [row.to_wire(now) for row in matching]
    else:  # one full dict at a time, not all of them, before the cut
        rows = [{f: wire[f] for f in wanted} for wire in (row.to_wire(now) for row in matching)]
    return {"connections": rows}


def apps(daemon: "Daemon", params: dict[str, Any], session: "ClientSession") -> api.AppsResult:
    """Per-application usage; with a filter, computed over the matching rows only."""
    _check_keys(params, ("filter",))
    flt = _filter(params)
    if flt.is_empty():
        return {"apps": daemon.state.app_usage()}
    if flt.proc is not None and not (set(flt.to_wire()) - {"proc"}):
        # An app-level filter: whole apps, with the bytes of long-closed
        # connections, even those with nothing open now.
        needle = flt.proc.lower()
        return {"apps": [a for a in daemon.state.app_usage()
                         if a["process_name"] is not None and needle in a["process_name"].lower()]}
    matching = flt.apply(daemon.state.connections(True))
    return {"apps": daemon.state.app_usage_of(matching)}


def stats(daemon: "Daemon", params: dict[str, Any], session: "ClientSession") -> api.Stats:
    """Totals, rates, interfaces, attribution."""
    _check_keys(params, ())
    return daemon.state.stats(
        uptime=time.monotonic() - daemon.started_mono, monitoring=daemon.monitoring
    )


def bandwidth_history(
    daemon: "Daemon", params: dict[str, Any], session: "ClientSession"
) -> api.BandwidthHistoryResult:
    """History points of the last `seconds` (default 60)."""
    _check_keys(params, ("seconds",))
    seconds = 60.0
    if "seconds" in params:
        seconds = _positive_number(params, "seconds", 0, 7 * 86400)
    return {"history": daemon.state.bandwidth_history(seconds, time.time())}


def control(daemon: "Daemon", params: dict[str, Any], session: "ClientSession") -> api.ControlResult:
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
        daemon.state.clear()
    return {"monitoring": daemon.monitoring}


def configure(daemon: "Daemon", params: dict[str, Any], session: "ClientSession") -> api.ConfigureResult:
    """Change the sampling interval."""
    _check_keys(params, ("interval",))
    if "interval" not in params:
        raise _invalid("interval", "required")
    interval = _positive_number(params, "interval", 0.1, 3600)
    _require_control(session)
    daemon.set_interval(interval)
    result: dict[str, Any] = {"interval": daemon.state.interval}
    effective = daemon.backend.status().effective_interval
    if effective is not None and abs(effective - daemon.state.interval) > 1e-6:
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


def subscribe(daemon: "Daemon", params: dict[str, Any], session: "ClientSession") -> api.TopicsResult:
    """Start notifications on topics, filtered by the daemon."""
    _check_keys(params, ("topics", "filter"))
    topics = _topics(params)
    session.subscribe(topics, _filter(params))
    return {"topics": sorted(session.topics)}


def unsubscribe(daemon: "Daemon", params: dict[str, Any], session: "ClientSession") -> api.TopicsResult:
    """Stop notifications on topics (all when none given)."""
    _check_keys(params, ("topics",))
    session.unsubscribe(_topics(params))
    return {"topics": sorted(session.topics)}


HANDLERS: dict[str, Handler] = {
    api.HELLO: hello,
    api.STATUS: status,
    api.CONNECTIONS: connections,
    api.APPS: apps,
    api.STATS: stats,
    api.BANDWIDTH_HISTORY: bandwidth_history,
    api.CONTROL: control,
    api.CONFIGURE: configure,
    api.SUBSCRIBE: subscribe,
    api.UNSUBSCRIBE: unsubscribe,
}
