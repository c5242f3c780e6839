"""The `usage` and `forget` params (docs/PROTOCOL.md §6) made into store arguments.

Pure: no store, no daemon. Every fault is a ParamError naming the param,
which the handler sends back as `invalid_params`.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable

from common import api
from common.models import Filter, FilterError, classify_scope
from common.units import parse_time

#: Rows a `usage` answer holds at most (the largest, when there are more).
MAX_ROWS = 50_000


class ParamError(ValueError):
    """A bad param; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def when(params: dict[str, Any], key: str, now: float, default: float) -> float:
    """A since/until/before param as epoch seconds (see common.units.parse_time)."""
    value = params.get(key)
    if value is None:
        return default
    if not isinstance(value, (int, float, str)) or isinstance(value, bool):
        raise ParamError(key, "must be epoch seconds or a time such as 24h, 7d, today, 2026-12-01")
    try:
        return parse_time(value, now)
    except ValueError as exc:
        raise ParamError(key, str(exc)) from None


def group_keys(value: Any) -> tuple[str, ...]:
    """`by`: "app", "remote", "day", "hour", or two of them ("day,app" or a list)."""
    if value is None:
        return ("app",)
    if isinstance(value, str):
        keys = tuple(k.strip().lower() for k in value.split(","))
    elif isinstance(value, (list, tuple)) and all(isinstance(k, str) for k in value):
        keys = tuple(k.strip().lower() for k in value)
    else:
        raise ParamError("by", "must be a string such as \"day,app\" or a list of keys")
    allowed = ", ".join(api.USAGE_KEYS)
    if not 1 <= len(keys) <= 2 or len(set(keys)) != len(keys):
        raise ParamError("by", f"one or two different keys of: {allowed}")
    for key in keys:
        if key not in api.USAGE_KEYS:
            raise ParamError("by", f"unknown key {key[:32]!r} (one or two of: {allowed})")
    if {"day", "hour"} <= set(keys):
        raise ParamError("by", "day or hour, not both")
    return keys


def matchers(raw: Any) -> tuple[Callable[[str | None], bool] | None, Callable[[str, str | None], bool] | None]:
    """The filter map as (app_match, remote_match) for UsageStore.query.

    proc: the app's name contains it (case-insensitive); ip: the remote is
    that address or in that network; scope: the remote's scope. Other keys describe
    sockets, which the store does not keep: refused, naming the key.
    """
    try:
        flt = Filter.from_wire(raw)
    except FilterError as exc:
        field = "filter" if exc.field == "filter" else f"filter.{exc.field}"
        raise ParamError(field, str(exc).split(": ", 1)[-1]) from None
    given = flt.to_wire()
    for key in given:
        if key not in api.USAGE_FILTER_KEYS:
            raise ParamError(f"filter.{key}", "does not apply to stored usage (it keeps apps and remotes: "
                                              f"filter by {', '.join(api.USAGE_FILTER_KEYS)})")
    app_match = remote_match = None
    if flt.proc is not None:
        needle = flt.proc.lower()
        app_match = lambda app: app is not None and needle in app.lower()  # noqa: E731
    network = ipaddress.ip_network(flt.ip, strict=False) if flt.ip is not None else None
    scope = flt.scope

    def remote_ok(ip: str, host: str | None) -> bool:
        if network is not None:
            try:
                if ipaddress.ip_address(ip.split("%", 1)[0]) not in network:
                    return False
            except ValueError:
                return False
        if scope is not None and classify_scope(ip) != scope:
            return False
        return True

    if network is not None or scope is not None:
        remote_match = remote_ok
    return app_match, remote_match


def limit(params: dict[str, Any]) -> int:
    value = params.get("limit")
    if value is None:
        return MAX_ROWS
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROWS:
        raise ParamError("limit", f"must be a whole number from 1 to {MAX_ROWS}")
    return value


def usage_query(params: dict[str, Any], now: float) -> dict[str, Any]:
    """UsageStore.query's keyword arguments for a `usage` request."""
    for key in params:
        if key not in ("since", "until", "by", "filter", "limit"):
            raise ParamError(str(key)[:64], "unknown parameter (allowed: since, until, by, filter, limit)")
    since = when(params, "since", now, 0.0)
    until = when(params, "until", now, now)
    if until <= since:
        raise ParamError("until", "must be later than since")
    app_match, remote_match = matchers(params.get("filter"))
    return {"since": since, "until": until, "by": group_keys(params.get("by")),
            "app_match": app_match, "remote_match": remote_match, "limit": limit(params)}


def forget_before(params: dict[str, Any], now: float) -> float | None:
    """`forget`'s `before` as epoch seconds; None: forget everything."""
    for key in params:
        if key != "before":
            raise ParamError(str(key)[:64], "unknown parameter (allowed: before)")
    if params.get("before") is None:
        return None
    return when(params, "before", now, now)
