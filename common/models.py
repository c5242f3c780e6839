"""Wire shapes of netmon (docs/PROTOCOL.md §8) and the connection filter.

The wire carries plain dicts (msgpack maps) with exactly these field names;
JSON output of netmonctl is the same dicts. The field tuples below come from
the TypedDicts of common.api, the one description of each shape; tests check
that every row the daemon builds has exactly those fields.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, Iterable, Protocol, TypeVar

from . import api

# Field names, in display order, from the one description of each shape
# in common.api.
#: Fields of a Connection row.
CONNECTION_FIELDS: tuple[str, ...] = tuple(api.Connection.__annotations__)
#: Fields of an AppUsage row.
APP_FIELDS: tuple[str, ...] = tuple(api.AppUsage.__annotations__)
#: Fields of a RemoteUsage row.
REMOTE_FIELDS: tuple[str, ...] = tuple(api.RemoteUsage.__annotations__)
#: Fields of Stats.
STATS_FIELDS: tuple[str, ...] = tuple(api.Stats.__annotations__)
#: Fields of one entry of Stats.interfaces.
INTERFACE_FIELDS: tuple[str, ...] = tuple(api.Interface.__annotations__)
#: Fields of a HistoryPoint.
HISTORY_FIELDS: tuple[str, ...] = tuple(api.HistoryPoint.__annotations__)


SCOPES = ("loopback", "lan", "internet")
PROTOCOLS = ("TCP", "UDP")
#: TCP states as netmon names them (psutil's names, which match ss's).
STATES = (
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NONE",
    "CLOSED",
)


def format_addr(ip: str | None, port: int | None) -> str | None:
    """'ip:port', IPv6 as '[ip]:port'; None when there is no address."""
    if ip is None:
        return None
    if ":" in ip:
        return f"[{ip}]:{port}"
    return f"{ip}:{port}"


def ip_address_of(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `ip` names, without a '%zone' suffix; an IPv4-mapped IPv6
    address as the IPv4 address it maps. None when `ip` is not an address."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr if mapped is None else mapped


@lru_cache(maxsize=65536)
def classify_scope(ip: str | None) -> str | None:
    """'loopback', 'lan' (private, link-local, ULA) or 'internet'; None if no ip.

    An IPv4-mapped IPv6 address is classified by the IPv4 address it maps.
    The unspecified address (a listener on 0.0.0.0 / ::) has no scope of its
    own; callers classify a socket by its remote address when it has one.
    """
    addr = ip_address_of(ip) if ip else None
    if addr is None:
        return None
    if addr.is_loopback:
        return "loopback"
    if addr.is_unspecified:
        return None
    if addr.is_private or addr.is_link_local or addr.is_multicast:
        return "lan"
    return "internet"


def connection_scope(local_ip: str | None, remote_ip: str | None) -> str | None:
    """Scope of a socket: by its peer when it has one, else by its bound address."""
    if remote_ip and classify_scope(remote_ip) is not None:
        return classify_scope(remote_ip)
    return classify_scope(local_ip)


class RowLike(Protocol):
    """What a filter reads a connection through: a wire row (dict) or the
    daemon's own row (netmond.state.ConnRow), by field name."""

    def get(self, key: str, /) -> Any: ...


R = TypeVar("R", bound=RowLike)


class FilterError(ValueError):
    """A filter parameter is invalid; `field` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class Filter:
    """Connection filter (docs/PROTOCOL.md §8, Filter), evaluated by the daemon.

    Every criterion that is set must hold (AND). On the wire it is a map with
    these field names; absent or null keys mean "any".
    """

    proc: str | None = None
    pid: int | None = None
    proto: str | None = None
    state: tuple[str, ...] = ()
    scope: str | None = None
    remote_only: bool = False
    listening: bool | None = None
    port: int | None = None
    ip: str | None = None
    search: str | None = None
    family: int | None = None
    host: str | None = None
    _network: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_wire(cls, raw: Any) -> "Filter":
        """Validate a wire map into a Filter; raises FilterError naming the field."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise FilterError("filter", "must be a map")
        known = {f.name for f in fields(cls) if not f.name.startswith("_")}
        for key in raw:
            if key not in known:
                raise FilterError(str(key), "unknown filter field")
        kw: dict[str, Any] = {}
        for key, value in raw.items():
            if value is None:
                continue
            kw[key] = _validate_filter_field(key, value)
        network = None
        if "ip" in kw:
            try:
                network = ipaddress.ip_network(kw["ip"], strict=False)
            except ValueError:
                raise FilterError("ip", f"not an address or CIDR: {kw['ip']!r}") from None
        return cls(**kw, _network=network)

    def to_wire(self) -> dict[str, Any]:
        """The map form, with unset criteria left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            if value in (None, (), False) and not (f.name == "listening" and value is False):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def is_empty(self) -> bool:
        return not self.to_wire()

    def matches(self, row: RowLike) -> bool:
        """True when the Connection row passes every criterion."""
        if self.proc is not None:
            name = row.get("process_name") or ""
            if self.proc.lower() not in name.lower():
                return False
        if self.pid is not None and row.get("pid") != self.pid:
            return False
        if self.proto is not None and row.get("protocol") != self.proto:
            return False
        if self.state and row.get("state") not in self.state:
            return False
        if self.scope is not None and row.get("scope") != self.scope:
            return False
        if self.remote_only and (
            row.get("remote_ip") is None or row.get("scope") == "loopback"
        ):
            return False
        if self.listening is not None:
            is_listen = row.get("state") == "LISTEN" or (
                row.get("protocol") == "UDP" and row.get("remote_ip") is None
            )
            if is_listen != self.listening:
                return False
        if self.port is not None and self.port not in (
            row.get("local_port"),
            row.get("remote_port"),
        ):
            return False
        if self._network is not None and not (
            _in_network(row.get("local_ip"), self._network)
            or _in_network(row.get("remote_ip"), self._network)
        ):
            return False
        if self.family is not None and row.get("family") != f"IPv{self.family}":
            return False
        if self.host is not None:
            name = row.get("remote_host")
            if not name or self.host.lower() not in name.lower():
                return False
        if self.search is not None and not _search_matches(self.search, row):
            return False
        return True

    def apply(self, rows: Iterable[R]) -> list[R]:
        """The rows that match, in order."""
        if self.is_empty():
            return list(rows)
        return [r for r in rows if self.matches(r)]


#: Longest text criterion (proc, search, ip, host). Names are at most a few hundred
#: characters; a filter is evaluated against every row of every tick for
#: every subscriber, so its cost must stay small whatever a client sends.
MAX_FILTER_TEXT = 256


def _validate_filter_field(key: str, value: Any) -> Any:
    if key in ("proc", "search", "ip", "host"):
        if not isinstance(value, str) or not value:
            raise FilterError(key, "must be a non-empty string")
        if len(value) > MAX_FILTER_TEXT:
            raise FilterError(key, f"longer than {MAX_FILTER_TEXT} characters")
        return value
    if key == "pid":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FilterError(key, "must be a non-negative integer")
        return value
    if key == "port":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
            raise FilterError(key, "must be an integer 0-65535")
        return value
    if key == "proto":
        if not isinstance(value, str) or value.upper() not in PROTOCOLS:
            raise FilterError(key, "must be tcp or udp")
        return value.upper()
    if key == "state":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
            raise FilterError(key, "must be a state name or a list of them")
        norm = tuple(s.upper().replace("-", "_") for s in items)
        bad = [s for s in norm if s not in STATES]
        if bad:
            raise FilterError(key, f"unknown state {bad[0]!r} (one of {', '.join(STATES)})")
        return norm
    if key == "scope":
        if value not in SCOPES:
            raise FilterError(key, f"must be one of {', '.join(SCOPES)}")
        return value
    if key in ("remote_only", "listening"):
        if not isinstance(value, bool):
            raise FilterError(key, "must be true or false")
        return value
    if key == "family":
        if value in (4, 6):
            return value
        if isinstance(value, str) and value.lower() in ("4", "6", "ipv4", "ipv6"):
            return int(value[-1])
        raise FilterError(key, "must be 4 or 6")
    raise FilterError(key, "unknown filter field")  # pragma: no cover


@functools.lru_cache(maxsize=4096)
def _parse_ip(ip: str) -> tuple[Any, Any]:
    """(address, its IPv4 form if it is an IPv4-mapped IPv6 one), or (None, None).
    Cached: a filter is matched against every row of every tick, and the
    same few addresses come back (parsing was most of an `ip` filter's cost)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None, None
    return addr, getattr(addr, "ipv4_mapped", None)


def _in_network(ip: str | None, network: Any) -> bool:
    if not ip:
        return False
    addr, mapped = _parse_ip(ip)
    if addr is None:
        return False
    if mapped is not None and network.version == 4:
        addr = mapped
    return addr.version == network.version and addr in network


def _search_matches(text: str, row: RowLike) -> bool:
    needle = text.lower()
    for key in ("process_name", "local_ip", "remote_ip", "remote_host"):
        value = row.get(key)
        if value and needle in value.lower():
            return True
    # ASCII digits only, and no more than a port or pid can have: str.isdigit
    # is also true for "²" (which int() refuses) and for 5,000 digits (over
    # Python's int-conversion limit). Either raised inside the tick before.
    if needle.isascii() and needle.isdigit() and len(needle) <= 10:
        n = int(needle)
        if n in (row.get("local_port"), row.get("remote_port"), row.get("pid")):
            return True
    return False
