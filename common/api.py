"""The typed contract of netmond's RPC (docs/PROTOCOL.md §4-§8), for both sides.

Method names, topics, error codes and control actions as constants (the
daemon's dispatch table, its publisher and netmonctl all use these, no
string literals); every method's params and result, every notification
payload and every row as a TypedDict, described once: the field tuples of
common.models are derived from these classes. Values on the wire are plain
maps; these types say what is in them. Units are in the field comments:
timestamps Unix epoch seconds, durations seconds, sizes bytes, speeds bytes
per second; `| None` means the value may be unknown (null).

This module imports nothing but typing, so that netmonctl's --help, which
must stay fast, may use it without loading msgpack.
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict

#: Protocol version returned by `hello` (docs/PROTOCOL.md §4).
PROTOCOL_VERSION = 1

# -- methods (docs/PROTOCOL.md §6) ---------------------------------------------
HELLO = "hello"
STATUS = "status"
CONNECTIONS = "connections"
APPS = "apps"
REMOTES = "remotes"
STATS = "stats"
BANDWIDTH_HISTORY = "bandwidth_history"
CONTROL = "control"
CONFIGURE = "configure"
SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
USAGE = "usage"
FORGET = "forget"

METHODS = (HELLO, STATUS, CONNECTIONS, APPS, REMOTES, STATS, BANDWIDTH_HISTORY, CONTROL, CONFIGURE, SUBSCRIBE,
           UNSUBSCRIBE, USAGE, FORGET)

#: What `usage` may group by (one key, or two as "day,app"; not day with hour).
USAGE_KEYS = ("app", "remote", "day", "hour")
#: Filter keys that apply to stored usage (the store keeps apps and remotes only).
USAGE_FILTER_KEYS = ("proc", "ip", "scope")

#: Bounds of the sampling interval (`configure`, the daemon's config), seconds.
INTERVAL_MIN = 0.1
INTERVAL_MAX = 3600.0
#: Longest history kept (config history_seconds) and asked for (`bandwidth_history`), seconds.
HISTORY_SECONDS_MAX = 7 * 86400

#: `control` actions.
START: Final = "start"
STOP: Final = "stop"
CLEAR: Final = "clear"
ACTIONS = (START, STOP, CLEAR)
ControlAction = Literal["start", "stop", "clear"]

# -- notification topics (docs/PROTOCOL.md §7) ---------------------------------
CONNECTION_UPDATE = "connection_update"
CONNECTION_CLOSED = "connection_closed"
STATS_UPDATE = "stats_update"
BANDWIDTH_DATA = "bandwidth_data"
#: Topics a client may subscribe to.
TOPICS = (CONNECTION_UPDATE, CONNECTION_CLOSED, STATS_UPDATE, BANDWIDTH_DATA)
#: Sent unasked to a subscriber that fell behind and missed notifications.
LAGGED = "lagged"
#: One chunk of a streamed `connections` reply (its `chunk` param), sent only
#: to the connection that asked, before that request's response.
CONNECTIONS_CHUNK = "connections_chunk"
#: Rows per chunk a streamed `connections` reply may ask for.
CHUNK_MIN, CHUNK_MAX = 1, 10_000

# -- error codes (docs/PROTOCOL.md §5), travelling as {"code", "message"} -------
UNKNOWN_METHOD = "unknown_method"
INVALID_PARAMS = "invalid_params"
ACCESS_DENIED = "access_denied"
TOO_LARGE = "too_large"
PROTOCOL_ERROR = "protocol_error"
INTERNAL = "internal"
TOO_MANY_CLIENTS = "too_many_clients"
UNAVAILABLE = "unavailable"

ERROR_CODES = (
    UNKNOWN_METHOD,
    INVALID_PARAMS,
    ACCESS_DENIED,
    TOO_LARGE,
    PROTOCOL_ERROR,
    INTERNAL,
    TOO_MANY_CLIENTS,
    UNAVAILABLE,
)


class ErrorMap(TypedDict):
    """A response's error field."""

    code: str
    message: str


# -- rows (docs/PROTOCOL.md §8); field order = display and CSV column order ------


class Connection(TypedDict):
    """One socket's row."""

    id: int
    protocol: str  # "TCP" | "UDP"
    family: str  # "IPv4" | "IPv6"
    local_addr: str | None  # "ip:port", IPv6 "[ip]:port"
    remote_addr: str | None
    local_ip: str | None
    local_port: int | None
    remote_ip: str | None
    remote_port: int | None
    state: str
    pid: int | None
    process_name: str | None
    user: str | None
    scope: str | None  # "loopback" | "lan" | "internet"
    bytes_sent: int | None  # bytes since the socket opened
    bytes_received: int | None
    upload_speed: float | None  # bytes/s over the latest interval
    download_speed: float | None
    duration: float  # seconds
    first_seen: float  # epoch seconds
    last_seen: float  # epoch seconds
    counters: str | None  # "kernel" or null
    closed_at: float | None  # epoch seconds; null while open
    remote_host: str | None  # the remote address's name (reverse DNS, hosts file); null: unknown yet, none, or --no-resolve


class AppUsage(TypedDict):
    """One application's usage."""

    process_name: str | None  # null: the one line of sockets whose process is unknown
    pids: list[int]
    connections: int
    upload_speed: float | None  # bytes/s; null: open sockets, none with counters
    download_speed: float | None
    bytes_sent: int | None  # bytes since start/clear; null: no socket had counters
    bytes_received: int | None
    partial: bool  # some sockets have counters and some not: figures count the former


class RemoteUsage(TypedDict):
    """One remote address's usage (with by_port: one remote address and port)."""

    remote_ip: str
    remote_port: int | None  # with by_port; null otherwise
    hostname: str | None  # as Connection.remote_host
    scope: str | None  # "loopback" | "lan" | "internet"
    connections: int  # active connections to it now
    upload_speed: float | None  # bytes/s; null: open sockets, none with counters
    download_speed: float | None
    bytes_sent: int | None  # bytes since start/clear, retained closed connections included; null: no counters
    bytes_received: int | None
    apps: list[str]  # the processes that talked to it, most bytes first (unknown processes not listed)
    partial: bool  # some sockets have counters and some not: figures count the former


class Interface(TypedDict):
    """One entry of Stats.interfaces."""

    name: str
    upload_speed: float  # bytes/s
    download_speed: float
    bytes_sent: int  # bytes since start/clear
    bytes_received: int


class Stats(TypedDict):
    """Machine totals: the `stats` result and the stats_update payload."""

    total_upload_speed: float  # bytes/s
    total_download_speed: float
    active_connections: int
    total_bytes_sent: int  # bytes since start/clear
    total_bytes_received: int
    uptime: float  # seconds
    monitoring: bool
    interval: float  # seconds
    interfaces: list[Interface]
    attributed_upload_speed: float  # bytes/s
    attributed_download_speed: float
    unattributed_upload_speed: float
    unattributed_download_speed: float
    unattributed_bytes_sent: int  # bytes since start/clear
    unattributed_bytes_received: int
    socket_bytes_sent: int  # bytes since start/clear
    socket_bytes_received: int
    unknown_process_bytes_sent: int  # bytes since start/clear
    unknown_process_bytes_received: int
    listeners: int
    time_wait: int
    include_loopback: bool
    top_app: str | None


class UsageRow(TypedDict, total=False):
    """One row of `usage`: the keys asked for in `by`, then the bytes."""

    day: str  # "YYYY-MM-DD", the daemon's local day
    hour: int  # epoch seconds, start of the hour (past 35 days: of the day)
    app: str | None  # process name; null: process unknown
    remote: str  # remote address
    remote_host: str | None  # its name when known
    apps: list[str | None]  # with remote and without app: the apps that talked to it
    bytes_sent: int  # bytes
    bytes_received: int


class UsageStore(TypedDict):
    """`status.usage_store`: where usage over days is kept."""

    path: str
    size_bytes: int | None  # bytes on disk (store + WAL); null: unreadable
    storing: bool  # false: not storing now, `warnings` say why
    written_at: float | None  # epoch seconds of the last write
    retention_days: int


class HistoryPoint(TypedDict):
    """One sample's bandwidth: a `bandwidth_history` entry and the bandwidth_data payload."""

    timestamp: float  # epoch seconds
    upload: float  # bytes/s
    download: float


class FilterMap(TypedDict, total=False):
    """The connection filter (common.models.Filter validates it); all keys optional."""

    proc: str
    pid: int
    proto: str  # "tcp" | "udp"
    state: str | list[str]
    scope: str
    remote_only: bool
    listening: bool
    port: int
    ip: str  # address or CIDR
    search: str
    family: int  # 4 | 6
    host: str  # in the remote's name


# -- method params and results (docs/PROTOCOL.md §6) ------------------------------


class HelloParams(TypedDict, total=False):
    client_version: str


class HelloResult(TypedDict):
    protocol: int
    version: str
    platform: str
    backend: str
    capabilities: list[str]
    pid: int


class RootMode(TypedDict):
    """Linux root mode (eBPF): whether it runs, and why or why not."""

    active: bool
    reason: str


class Status(TypedDict):
    """The `status` result: the daemon's own health."""

    monitoring: bool
    interval: float  # seconds
    effective_interval: float  # seconds
    backed_off: bool  # ticks outran the interval: sampling every effective_interval
    uptime: float  # seconds
    backend: str
    per_socket_bytes: bool
    privileged: bool
    attribution_complete: bool
    root_mode: RootMode | None  # None: not the Linux backend
    events_lost: int
    warnings: list[str]
    cpu_percent: float | None  # percent of one core, over cpu_window_seconds
    cpu_window_seconds: float  # seconds
    rss_bytes: int | None  # bytes
    sample_age: float | None  # seconds
    last_tick_seconds: float | None  # seconds
    ticks: int
    connections: int
    listeners: int
    time_wait: int
    sockets: int
    closed_retained: int
    clients: int
    socket: str
    version: str
    pid: int
    history_seconds: int  # seconds
    include_loopback: bool
    resolve: bool  # remote addresses are named (config resolve, --no-resolve)
    usage_store: UsageStore | None  # None: storing usage is off (store_usage = false)


class ConnectionsParams(TypedDict, total=False):
    filter: FilterMap
    include_closed: bool
    fields: list[str]
    chunk: int  # rows per connections_chunk notification: stream the reply


class ConnectionsResult(TypedDict, total=False):
    connections: list[Connection]  # always present; empty when streamed
    streamed: int  # only when `chunk` was given: the rows sent in chunks


class AppsParams(TypedDict, total=False):
    filter: FilterMap


class AppsResult(TypedDict):
    apps: list[AppUsage]


class RemotesParams(TypedDict, total=False):
    filter: FilterMap
    by_port: bool


class RemotesResult(TypedDict):
    remotes: list[RemoteUsage]


class BandwidthHistoryParams(TypedDict, total=False):
    seconds: float


class BandwidthHistoryResult(TypedDict):
    history: list[HistoryPoint]


class ControlParams(TypedDict):
    action: ControlAction


class ControlResult(TypedDict):
    monitoring: bool


class ConfigureParams(TypedDict):
    interval: float  # seconds


class ConfigureResult(TypedDict, total=False):
    interval: float  # seconds; always present
    effective_interval: float  # seconds; only where it differs from interval


class SubscribeParams(TypedDict, total=False):
    topics: list[str]
    filter: FilterMap


class UnsubscribeParams(TypedDict, total=False):
    topics: list[str]


class UsageParams(TypedDict, total=False):
    since: float | str  # epoch seconds, or "24h", "7d", "today", "2026-12-01"
    until: float | str
    by: str | list[str]  # "app", "remote", "day", "hour" or a pair: "day,app"
    filter: FilterMap  # proc, ip, scope
    limit: int  # the largest rows only


class UsageResult(TypedDict):
    usage: list[UsageRow]
    since: float  # epoch seconds: the range the rows cover, as resolved
    until: float


class ForgetParams(TypedDict, total=False):
    before: float | str  # only usage that ended by then; absent: all


class ForgetResult(TypedDict):
    deleted: int  # stored rows deleted


class TopicsResult(TypedDict):
    """The `subscribe` and `unsubscribe` result: topics subscribed now."""

    topics: list[str]


# -- notification payloads (docs/PROTOCOL.md §7) ----------------------------------


class ConnectionsPayload(TypedDict):
    """connection_update and connection_closed."""

    connections: list[Connection]


class LaggedPayload(TypedDict):
    missed: int


class ConnectionsChunkPayload(TypedDict):
    """connections_chunk: rows of the streamed `connections` reply to `msgid`."""

    msgid: int
    connections: list[Connection]
