"""The daemon's model of the machine: connections, apps, interfaces, history.

`MonitorState.apply(snapshot)` folds one backend Snapshot into the state and
returns what changed (for notifications). Everything here is pure: no OS, no
clock of its own (times come from the snapshot), so unit tests drive it with
hand-made snapshots.

Accounting rules (docs/DESIGN.md §3):
- A socket keeps one row, and so one `id`, for its whole life: rows are keyed
  by the backend's `SocketSample.key`. A counter that goes backwards means the
  key now names a new socket: the old row closes, a new one opens.
- Rates are byte deltas over the monotonic time between two snapshots. A row
  seen for the first time at a baseline (daemon start, `clear`, resume after
  `stop`) has unknown rate (None) and its earlier bytes are not counted in the
  totals "since start"; a row that appears later is new, so all its bytes
  were moved since the previous sample and count.
- Totals per app and for the machine are accumulated from deltas, so bytes of
  closed connections stay counted after the row itself expires.
- Unknown is None, never 0: rows whose OS keeps no counters have bytes None;
  an app all of whose sockets lack counters has bytes and speeds None, one
  with some counted and some uncounted sockets is `partial`.
- Bytes of sockets whose process is unknown (a client that connected and
  closed between two samples, another user's socket without root) are the
  line with process_name None ("process unknown"), never an app name.
- One loopback policy (`include_loopback`, default True): when False,
  loopback sockets are not monitored at all (no rows, no app bytes) and
  loopback interfaces are not counted, so every view agrees.
- Totals: total = attributed + unattributed, where attributed is what the
  socket counters moved this tick and unattributed what the counted
  interfaces moved beyond that. Both kinds of counters are not read at the
  same instant, so a tick may see sockets move more than the interfaces: the
  excess is carried into the next tick (`_carry`) instead of being clamped,
  so unattributed is never negative, never hides what it owes, and over any
  run adds up to interface bytes minus socket bytes.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from itertools import chain, compress, filterfalse, repeat
from operator import attrgetter, is_not, not_
from typing import Any, Callable, Hashable, Iterable, Protocol

from common import api
from common.models import classify_scope, connection_scope, format_addr

from .backends.base import InterfaceSample, Snapshot, SocketSample

#: Closed rows kept at most, whatever the retention: bounds memory under churn.
MAX_CLOSED_ROWS = 50_000
#: App totals kept at most; beyond it the smallest idle apps are forgotten.
MAX_APPS = 4096


class Names:
    """How rows learn their remote's name: one holder shared by the state and
    all its rows, so that turning names on or off (config `resolve`, SIGHUP)
    applies to every row at once.

    `lookup` must answer at once (netmond.resolver.ReverseResolver.name: a
    cache that queues what it does not know); None: names are off.
    """

    __slots__ = ("lookup",)

    def __init__(self, lookup: Callable[[str], str | None] | None = None) -> None:
        self.lookup = lookup

    def __call__(self, ip: str | None) -> str | None:
        lookup = self.lookup
        if lookup is None or ip is None:
            return None
        return lookup(ip)


class RowContext:
    """What every row of one MonitorState shares, held once instead of in
    each row: the remote names (see Names), and the wall time of the last
    tick, which is every open row's `last_seen` (a row the last tick did not
    see is closed), so that an idle tick writes nothing to idle rows."""

    __slots__ = ("names", "wall")

    def __init__(self, names: Names) -> None:
        self.names = names
        self.wall: float | None = None


class _NotOpen:
    """Stands for the row of a key that has none, in MonitorState's bulk
    comparison of samples with the rows' last ones: no sample is its."""

    __slots__ = ()
    sample = None


_NOT_OPEN = _NotOpen()
_KEY_OF = attrgetter("key")
_SAMPLE_OF = attrgetter("sample")


class ConnRow:
    """One connection's row. Mutable; rendered to the wire by to_wire().

    What the socket is (key, protocol, family, endpoints) is read from its
    latest sample, which the row holds anyway, not copied into every row:
    a row is one of 100,000 at a busy host. What the state decides (state,
    owner, counters kept across samples without them, speeds, totals) is
    the row's own."""

    __slots__ = (
        "id", "scope", "state", "pid",
        "process_name", "user", "bytes_sent", "bytes_received", "upload_speed",
        "download_speed", "first_seen", "closed_at", "counted_sent",
        "counted_received", "sample", "context",
    )

    def __init__(self, row_id: int, s: SocketSample, wall: float, context: RowContext) -> None:
        self.id = row_id
        self.scope = connection_scope(s.local_ip, s.remote_ip)
        self.state = s.state
        self.pid = s.pid
        self.process_name = s.process_name
        self.user = s.user
        self.bytes_sent = s.bytes_sent
        self.bytes_received = s.bytes_received
        self.upload_speed: float | None = None
        self.download_speed: float | None = None
        self.first_seen = wall
        self.closed_at: float | None = None
        # Bytes of this row added to its app's totals, so that they can move
        # with the row when its process becomes known a tick late.
        self.counted_sent = 0
        self.counted_received = 0
        # The SocketSample last applied: a backend that hands the same object
        # again says the socket did not change (see MonitorState.apply).
        self.sample = s
        self.context = context

    @property
    def key(self) -> Hashable:
        return self.sample.key

    @property
    def protocol(self) -> str:
        return self.sample.protocol

    @property
    def family(self) -> str:
        return self.sample.family

    @property
    def local_ip(self) -> str:
        return self.sample.local_ip

    @property
    def local_port(self) -> int:
        return self.sample.local_port

    @property
    def remote_ip(self) -> str | None:
        return self.sample.remote_ip

    @property
    def remote_port(self) -> int | None:
        return self.sample.remote_port

    @property
    def last_seen(self) -> float:
        """When the OS last listed the socket: the last tick for an open row
        (see RowContext), its close for a closed one."""
        closed_at = self.closed_at
        return self.context.wall if closed_at is None else closed_at  # type: ignore[return-value]

    @property
    def remote_host(self) -> str | None:
        """The remote address's name, as known now (asked for on first use:
        read, not stored, so that a name that arrives later shows at once)."""
        return self.context.names(self.sample.remote_ip)

    @property
    def app(self) -> str | None:
        """The app this row's bytes are counted under; None: process unknown."""
        return self.process_name

    @property
    def has_counters(self) -> bool:
        return self.bytes_sent is not None or self.bytes_received is not None

    @property
    def is_listener(self) -> bool:
        s = self.sample
        return self.state == "LISTEN" or (s.protocol == "UDP" and s.remote_ip is None)

    @property
    def is_remnant(self) -> bool:
        """A TIME_WAIT socket: the kernel's leftover of a connection its
        process already closed. Listed, but neither an active connection nor
        one of an app's."""
        return self.state == "TIME_WAIT"

    def get(self, name: str, default: Any = None) -> Any:
        """A stored wire field by name, so that `Filter.matches` can judge the
        row before it is turned into a dict (only matching rows then are).
        The derived fields (local_addr, remote_addr, duration, counters) are
        only in to_wire()."""
        return getattr(self, name, default)

    def to_wire(self, now: float) -> api.Connection:
        """The Connection map of docs/PROTOCOL.md §8."""
        end = self.closed_at if self.closed_at is not None else now
        s = self.sample
        return {
            "id": self.id,
            "protocol": s.protocol,
            "family": s.family,
            # Formatted here, not kept: two strings a row add up at 10,000 rows.
            "local_addr": format_addr(s.local_ip, s.local_port),
            "remote_addr": format_addr(s.remote_ip, s.remote_port),
            "local_ip": s.local_ip,
            "local_port": s.local_port,
            "remote_ip": s.remote_ip,
            "remote_port": s.remote_port,
            "state": self.state,
            "pid": self.pid,
            "process_name": self.process_name,
            "user": self.user,
            "scope": self.scope,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "upload_speed": self.upload_speed,
            "download_speed": self.download_speed,
            "duration": round(max(0.0, end - self.first_seen), 3),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "counters": (s.counters or "kernel")
            if self.bytes_sent is not None or self.bytes_received is not None else None,
            "closed_at": self.closed_at,
            "remote_host": self.remote_host,
        }


class UsageSink(Protocol):
    """Receives every byte delta added to an app's totals (netmond.usage.meter)."""

    def begin_tick(self, wall: float) -> None: ...

    def count(self, app: str | None, remote_ip: str | None, remote_host: str | None,
              sent: int, received: int) -> None: ...


@dataclass
class AppTotals:
    """Bytes an app moved since start/clear, closed connections included.

    `counted`: some socket of the app had byte counters (its bytes are known,
    0 included); `uncounted`: some socket had none (UDP on Linux), so the
    bytes are a lower bound. Neither ever goes back to False before `clear`.
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    counted: bool = False
    uncounted: bool = False
    # Bytes counted in the tick in progress, and the rates they gave at the
    # last tick: every socket's bytes, closed ones included, so that an app
    # of short connections moves at the speed its totals grow (its open rows
    # alone would say 0 B/s).
    tick_sent: int = 0
    tick_received: int = 0
    upload_speed: float = 0.0
    download_speed: float = 0.0


@dataclass
class TickChanges:
    """What one apply() changed; the server turns it into notifications."""

    updated: list[ConnRow] = field(default_factory=list)
    closed: list[ConnRow] = field(default_factory=list)
    history_point: api.HistoryPoint | None = None


class _AppLive:
    """What an app's open sockets add up to now (for AppUsage)."""

    __slots__ = ("pids", "connections", "sockets", "counted", "uncounted", "up", "down")

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.connections = 0
        self.sockets = 0
        self.counted = 0
        self.uncounted = 0
        self.up = 0.0
        self.down = 0.0

    def add(self, row: "ConnRow") -> None:
        self.sockets += 1
        if row.pid is not None:
            self.pids.add(row.pid)
        if not row.is_listener:
            self.connections += 1
        if row.has_counters:
            self.counted += 1
            self.up += row.upload_speed or 0.0
            self.down += row.download_speed or 0.0
        else:
            self.uncounted += 1


def _app_wire(name: str | None, live: _AppLive | None, totals: AppTotals | None) -> api.AppUsage:
    """One AppUsage map (see MonitorState.app_usage for what each field means)."""
    counted = bool((totals and totals.counted) or (live and live.counted))
    uncounted = bool((totals and totals.uncounted) or (live and live.uncounted))
    up: float | None
    down: float | None
    if totals is not None and (totals.upload_speed or totals.download_speed):
        # What its sockets moved in the last tick, those closed in it included.
        up, down = totals.upload_speed, totals.download_speed
    elif live is None:  # nothing open: nothing moves now, if its bytes are known at all
        up = down = 0.0 if counted else None
    elif live.counted:
        up, down = live.up, live.down
    else:
        up = down = None
    return {
        "process_name": name,
        "pids": sorted(live.pids) if live else [],
        "connections": live.connections if live else 0,
        "upload_speed": up,
        "download_speed": down,
        "bytes_sent": (totals.bytes_sent if totals else 0) if counted else None,
        "bytes_received": (totals.bytes_received if totals else 0) if counted else None,
        "partial": counted and uncounted,
    }


def _app_order(app: api.AppUsage | api.RemoteUsage) -> tuple:
    """Busiest first (speed, then bytes); unknown figures count as 0."""
    return ((app["upload_speed"] or 0.0) + (app["download_speed"] or 0.0),
            (app["bytes_sent"] or 0) + (app["bytes_received"] or 0))


class _IfaceTrack:
    __slots__ = ("prev_sent", "prev_recv", "total_sent", "total_recv", "up", "down", "is_loopback")

    def __init__(self, s: InterfaceSample) -> None:
        self.prev_sent = s.bytes_sent
        self.prev_recv = s.bytes_received
        self.total_sent = 0
        self.total_recv = 0
        self.up = 0.0
        self.down = 0.0
        self.is_loopback = s.is_loopback


def _delta(new: int | None, old: int | None) -> int:
    """Bytes moved between two readings of one counter; 0 when unknown."""
    if new is None or old is None or new < old:
        return 0
    return new - old


class MonitorState:
    """Connection table, app totals, interface totals and the history ring."""

    def __init__(
        self,
        interval: float = 1.0,
        history_seconds: int = 3600,
        closed_retention: float = 60.0,
        include_loopback: bool = True,
        names: Callable[[str], str | None] | None = None,
    ) -> None:
        self.interval = interval
        #: Remote names for every row (see Names); set_names changes them.
        self.names = Names(names)
        self._row_context = RowContext(self.names)
        self.history_seconds = history_seconds
        self.closed_retention = closed_retention
        self.include_loopback = include_loopback
        self._ids = itertools.count(1)
        # apply() may run on a worker thread (the daemon's sampler): it and
        # every change made from outside it (clear, set_*, rebaseline) hold
        # this lock. Readers on the event loop are kept off a tick in
        # progress by the daemon (app.Daemon.state_quiet), except `status`,
        # which reads only what a tick publishes whole at its end (counts,
        # ticks, last_mono).
        self.lock = threading.RLock()
        self.open: dict[Hashable, ConnRow] = {}
        # Closed rows, oldest first; and the same rows by key so that a destroy
        # event arriving a tick late can still add its last bytes.
        self.closed: deque[ConnRow] = deque()
        self._closed_by_key: dict[Hashable, ConnRow] = {}
        self.apps: dict[str | None, AppTotals] = {}
        # Apps whose bytes moved in the tick in progress / in the last tick.
        self._apps_moving: dict[str | None, AppTotals] = {}
        self._apps_moved: dict[str | None, AppTotals] = {}
        self._ifaces: dict[str, _IfaceTrack] = {}
        self.history: deque[api.HistoryPoint] = deque(maxlen=self._history_len())
        self._baseline = True
        self.last_mono: float | None = None
        self.ticks = 0
        # Open rows whose speeds may not be the idle ones (0.0, or None for a
        # row without counters): those the last tick moved or first saw
        # (see _settle_speeds). Every other open row already reads idle.
        self._stirred: list[ConnRow] = []
        # The samples of the last tick in their order, each of them its open
        # row's sample now; None when that is not known (see _changed_samples).
        self._last_sockets: list[SocketSample] | None = None
        # The open rows by kind as of the last tick (connection_counts).
        self._counts = {"sockets": 0, "connections": 0, "listeners": 0, "time_wait": 0}
        # Figures of the last tick, for stats.
        self.total_upload_speed = 0.0
        self.total_download_speed = 0.0
        self.attributed_upload_speed = 0.0
        self.attributed_download_speed = 0.0
        self.unattributed_upload_speed = 0.0
        self.unattributed_download_speed = 0.0
        # Unattributed bytes of the last tick and since start/clear.
        self.last_unattributed = (0, 0)
        self.unattributed_sent = 0
        self.unattributed_received = 0
        # Socket bytes counted ahead of the interfaces, owed to the next tick
        # (<= 0; see the module docstring), (up, down).
        self._carry = [0, 0]
        # Where the deltas of the app totals also go (the usage store), if anywhere.
        self.usage_sink: UsageSink | None = None

    # -- configuration -----------------------------------------------------
    def _history_len(self) -> int:
        return max(1, math.ceil(self.history_seconds / self.interval))

    def set_interval(self, interval: float) -> None:
        """Change the sampling interval; the ring keeps history_seconds of points."""
        with self.lock:
            self.interval = interval
            self._resize_history()

    def set_history_seconds(self, seconds: int) -> None:
        with self.lock:
            self.history_seconds = seconds
            self._resize_history()

    def _resize_history(self) -> None:
        self.history = deque(self.history, maxlen=self._history_len())

    def clear(self) -> None:
        """Zero totals and history; forget closed rows. Open rows stay."""
        with self.lock:
            self.apps.clear()
            self._apps_moving.clear()
            self._apps_moved.clear()
            self.history.clear()
            self.closed.clear()
            self._closed_by_key.clear()
            for tr in self._ifaces.values():
                tr.total_sent = tr.total_recv = 0
            self.unattributed_sent = self.unattributed_received = 0
            self.rebaseline()

    def set_include_loopback(self, include: bool) -> None:
        """Apply a new loopback policy: rows it no longer monitors go (without
        a close: they did not close), and the next tick is a baseline."""
        with self.lock:
            if include == self.include_loopback:
                return
            self.include_loopback = include
            if not include:
                for key in [k for k, row in self.open.items() if row.scope == "loopback"]:
                    del self.open[key]
                self._counts = self._count_open()
            self.rebaseline()

    def set_names(self, lookup: Callable[[str], str | None] | None) -> None:
        """Where rows' remote names come from from now on; None: no names."""
        self.names.lookup = lookup

    def rebaseline(self) -> None:
        """Next apply() takes current counters as the starting point (resume)."""
        with self.lock:
            self._baseline = True

    # -- the tick ----------------------------------------------------------
    def apply(self, snap: Snapshot) -> TickChanges:
        """Fold one snapshot in; return the rows that changed and closed.

        Thread-safe against the changes above (self.lock), so it may run on
        a worker thread while the event loop answers `status`."""
        with self.lock:
            return self._apply(snap)

    def _apply(self, snap: Snapshot) -> TickChanges:
        changes = TickChanges()
        baseline = self._baseline
        if self.usage_sink is not None:
            self.usage_sink.begin_tick(snap.wall)
        # Rates need a previous sample, and none counts across a baseline.
        dt = None if baseline or self.last_mono is None else snap.monotonic - self.last_mono
        if dt is not None and dt <= 0:
            dt = None
        wall = snap.wall
        # Every row open after this tick is seen now (see ConnRow.last_seen).
        self._row_context.wall = wall
        sockets, closed_samples = snap.sockets, snap.closed
        if not self.include_loopback:
            sockets = [s for s in sockets if connection_scope(s.local_ip, s.remote_ip) != "loopback"]
            closed_samples = [s for s in closed_samples if connection_scope(s.local_ip, s.remote_ip) != "loopback"]

        # Bytes moved this tick by rows that count toward attribution, by phase.
        just_closed, closed_up, closed_down = self._apply_destroyed(closed_samples, wall, baseline, changes)
        changed, unchanged = self._changed_samples(sockets, baseline)
        self._settle_speeds(dt)
        seen, open_up, open_down, kinds_changed = self._apply_open(changed, just_closed, wall, dt, baseline, changes)
        # Every sample is its row's now, unless one was a stale repeat (skipped).
        self._last_sockets = list(sockets) if len(seen) == len(changed) else None
        self._close_vanished(seen, len(sockets) - len(changed), unchanged, wall, changes)
        self._expire_closed(wall)
        self._apply_app_rates(dt)
        iface_up, iface_down = self._apply_interfaces(snap.interfaces, dt, baseline)
        self._apply_totals(dt, closed_up + open_up, closed_down + open_down, iface_up, iface_down)
        if not baseline and dt:
            point: api.HistoryPoint = {
                "timestamp": wall,
                "upload": self.total_upload_speed,
                "download": self.total_download_speed,
            }
            self.history.append(point)
            changes.history_point = point
        if kinds_changed or changes.closed:
            # Counted again only when a row came, went or changed state: an
            # idle tick at 100,000 sockets skips a pass over every row.
            self._counts = self._count_open()
        self.last_mono = snap.monotonic
        self._baseline = False
        self.ticks += 1
        self._bound_apps()
        return changes

    def _apply_destroyed(
        self, closed_samples: list[SocketSample], wall: float, baseline: bool, changes: TickChanges
    ) -> tuple[dict[Hashable, ConnRow], int, int]:
        """Phase 1, destroy events first: they carry final counters. Returns
        the rows closed by key and the bytes (up, down) they moved this tick."""
        counted_up = counted_down = 0
        just_closed: dict[Hashable, ConnRow] = {}
        for s in closed_samples:
            row = self.open.pop(s.key, None)
            if row is None:
                late = self._closed_by_key.get(s.key)
                if late is not None:
                    # The dump saw it vanish before its destroy event arrived:
                    # the event still carries the last bytes it moved.
                    up, down = self._account(late, s, baseline=False)
                    counted_up, counted_down = counted_up + up, counted_down + down
                    continue
                # Opened and closed between two samples: every byte is new.
                row = self._new_row(s, wall)
                up, down = self._account(row, s, baseline=False, fresh=True)
            else:
                # This snapshot may hand on its last sample (a dump taken just
                # before the event): last tick's samples are not all rows' now.
                self._last_sockets = None
                self._adopt(row, s)
                up, down = self._account(row, s, baseline=baseline)
            counted_up, counted_down = counted_up + up, counted_down + down
            self._close(row, wall)
            just_closed[s.key] = row
            changes.closed.append(row)

        return just_closed, counted_up, counted_down

    def _changed_samples(
        self, sockets: list[SocketSample], baseline: bool
    ) -> tuple[list[SocketSample], Callable[[], Iterable[Hashable]]]:
        """The samples the open rows have not applied yet (in their order) and
        how to list the keys of the others: those the backend handed on as the
        very object of last tick (SocketSample), which changed nothing. Sorted out
        in C, not one by one: at 10,000 idle sockets this is the whole tick of
        the state. At a baseline every sample is taken again.

        A backend hands on a sample in the place it had (the Linux one does
        while the dump's order holds): a sample that is last tick's sample at
        the same place is its row's, found by comparing two lists, without
        touching the sample (at 10,000 idle sockets, 0.2 ms instead of 1.5:
        memory latency, not Python, is the cost). The rest is looked up by key."""
        if baseline:
            return sockets, tuple
        last = self._last_sockets
        if last is None:
            return self._changed_by_key(sockets)
        moved = list(map(is_not, sockets, last))
        if len(sockets) > len(last):
            moved.extend(repeat(True, len(sockets) - len(last)))
        if not any(moved):
            return [], lambda: map(_KEY_OF, sockets)
        changed, unchanged_keys = self._changed_by_key(list(compress(sockets, moved)))
        return changed, lambda: chain(map(_KEY_OF, compress(sockets, map(not_, moved))), unchanged_keys())

    def _changed_by_key(
        self, sockets: list[SocketSample]
    ) -> tuple[list[SocketSample], Callable[[], Iterable[Hashable]]]:
        """_changed_samples by each sample's row, found by key."""
        rows = map(self.open.get, map(_KEY_OF, sockets), repeat(_NOT_OPEN))
        changed_flags = list(map(is_not, sockets, map(_SAMPLE_OF, rows)))
        changed = list(compress(sockets, changed_flags))
        return changed, lambda: map(_KEY_OF, compress(sockets, map(not_, changed_flags)))

    def _settle_speeds(self, dt: float | None) -> None:
        """Back to the idle speeds (0.0; None without counters), before this
        tick's changed samples are applied, for the open rows the last tick
        moved or first saw: rows unchanged since have moved nothing. Rows
        applied again this tick get their speeds in _account after this.
        Without a time step (dt None or 0) speeds stay as they were."""
        if not dt:
            return
        for row in self._stirred:
            if row.closed_at is None:
                if row.bytes_sent is None and row.bytes_received is None:
                    row.upload_speed = row.download_speed = None
                else:
                    row.upload_speed = row.download_speed = 0.0
        self._stirred = []

    def _apply_open(
        self, changed: list[SocketSample], just_closed: dict[Hashable, ConnRow], wall: float,
        dt: float | None, baseline: bool, changes: TickChanges,
    ) -> tuple[set[Hashable], int, int, bool]:
        """Phase 2, the sockets open now whose samples changed since their
        rows last applied them (the others changed nothing: not even their
        rows' speeds, see _settle_speeds). Returns the keys seen, the bytes
        (up, down) their rows moved this tick, and whether a row came or
        changed state (the counts by kind must be taken again)."""
        counted_up = counted_down = 0
        seen: set[Hashable] = set()
        kinds_changed = False
        stirred = self._stirred  # every row applied now, see _settle_speeds
        for s in changed:
            key = s.key
            row = self.open.get(key)
            if row is None:
                done = just_closed.get(key)
                if done is not None and _delta(s.bytes_sent, done.bytes_sent) == 0 and _delta(
                    s.bytes_received, done.bytes_received
                ) == 0:
                    continue  # dump taken just before the destroy event: stale
                row = self._new_row(s, wall)
                self.open[key] = row
                kinds_changed = True
                if baseline:  # its bytes so far are not counted; its speeds are unknown
                    self._account(row, s, baseline=True)
                else:
                    up, down = self._account(row, s, baseline=False, fresh=True, dt=dt)
                    counted_up, counted_down = counted_up + up, counted_down + down
                seen.add(key)
                stirred.append(row)
                changes.updated.append(row)
                continue
            if (s.bytes_sent is not None and row.bytes_sent is not None and s.bytes_sent < row.bytes_sent) or (
                s.bytes_received is not None
                and row.bytes_received is not None
                and s.bytes_received < row.bytes_received
            ):
                # Counters went backwards: the key names a new socket now.
                self._close(row, wall)
                changes.closed.append(row)
                row = self._new_row(s, wall)
                self.open[key] = row
                up, down = self._account(row, s, baseline=False, fresh=True, dt=dt)
                counted_up, counted_down = counted_up + up, counted_down + down
                seen.add(key)
                stirred.append(row)
                changes.updated.append(row)
                continue
            seen.add(key)
            stirred.append(row)
            ends_moved = self._take_sample(row, s)
            before = (row.state, row.bytes_sent, row.bytes_received, row.pid)
            self._adopt(row, s)
            up, down = self._account(row, s, baseline=baseline, dt=dt)
            counted_up, counted_down = counted_up + up, counted_down + down
            if ends_moved or (row.state, row.bytes_sent, row.bytes_received, row.pid) != before:
                changes.updated.append(row)
                if ends_moved or row.state != before[0]:
                    kinds_changed = True  # a listener or a remnant now, or no longer
        if not dt and len(stirred) > len(self.open):
            # Rows pile up over ticks without a time step: keep each open one once.
            self._stirred = [row for row in dict.fromkeys(stirred) if row.closed_at is None]

        return seen, counted_up, counted_down, kinds_changed

    def _take_sample(self, row: ConnRow, s: SocketSample) -> bool:
        """Make `s` the row's sample (what the socket is is read from it).
        True if the socket's endpoints moved with it (a UDP socket connected
        since the last sample: the Linux key is the kernel's cookie, not the
        endpoints): its scope and remote name are then taken again."""
        old, row.sample = row.sample, s
        if (s.remote_ip == old.remote_ip and s.remote_port == old.remote_port and s.local_ip == old.local_ip
                and s.local_port == old.local_port):
            return False
        row.scope = connection_scope(s.local_ip, s.remote_ip)
        if s.remote_ip is not None:
            self.names(s.remote_ip)  # asks for the name now, as for a new row
        return True

    def _close_vanished(
        self, seen: set[Hashable], unchanged_count: int, unchanged_keys: Callable[[], Iterable[Hashable]],
        wall: float, changes: TickChanges,
    ) -> None:
        """Phase 3, rows the OS no longer lists: closed since the last sample.

        `seen`: the keys of the samples applied this tick; the others
        (`unchanged_count`, listed by `unchanged_keys`) are open rows' keys
        too. A snapshot names a socket once (SocketSample.key), so when both
        add up to the open rows none vanished, and the unchanged keys need
        not even be taken."""
        if len(seen) + unchanged_count == len(self.open):
            return
        seen.update(unchanged_keys())
        for key in list(filterfalse(seen.__contains__, self.open)):
            row = self.open.pop(key)
            row.upload_speed = row.download_speed = 0.0 if row.bytes_sent is not None else None
            self._close(row, wall)
            changes.closed.append(row)

    def _new_row(self, s: SocketSample, wall: float) -> ConnRow:
        row = ConnRow(next(self._ids), s, wall, self._row_context)
        if s.remote_ip is not None:
            self.names(s.remote_ip)  # asks for the name now, so that it is known when shown
        return row

    def _adopt(self, row: ConnRow, s: SocketSample) -> None:
        """Take the sample's non-counter fields (state, late-known process)."""
        row.state = s.state
        if s.pid is not None and (row.pid != s.pid or row.process_name is None):
            old_app = row.app
            row.pid = s.pid
            row.process_name = s.process_name
            row.user = s.user
            if row.app != old_app and (row.counted_sent or row.counted_received):
                # The socket was first seen before its pid was known: the
                # bytes counted under "process unknown" belong to this app.
                old = self.apps.get(old_app)
                if old is not None:
                    old.bytes_sent -= row.counted_sent
                    old.bytes_received -= row.counted_received
                new = self.apps.setdefault(row.app, AppTotals())
                new.bytes_sent += row.counted_sent
                new.bytes_received += row.counted_received
                new.counted = True
                sink = self.usage_sink
                if sink is not None:
                    host = row.remote_host
                    sink.count(old_app, row.remote_ip, host, -row.counted_sent, -row.counted_received)
                    sink.count(row.app, row.remote_ip, host, row.counted_sent, row.counted_received)

    def _account(
        self,
        row: ConnRow,
        s: SocketSample,
        *,
        baseline: bool,
        fresh: bool = False,
        dt: float | None = None,
    ) -> tuple[int, int]:
        """Move row's counters to the sample's; add the delta to its app.

        Returns the bytes (up, down) that count toward the attributed rate.
        `fresh`: the row is new since the previous sample, so its whole
        counters were moved since then. Counters unknown in this sample (None)
        keep their last known value: a TIME_WAIT remnant has no tcp_info.
        """
        new_sent = s.bytes_sent if s.bytes_sent is not None else row.bytes_sent
        new_recv = s.bytes_received if s.bytes_received is not None else row.bytes_received
        if fresh:
            up, down = new_sent or 0, new_recv or 0
        else:
            up, down = _delta(new_sent, row.bytes_sent), _delta(new_recv, row.bytes_received)
        row.bytes_sent, row.bytes_received = new_sent, new_recv
        if new_sent is None and new_recv is None:
            row.upload_speed = row.download_speed = None
            if not row.is_remnant:  # a TIME_WAIT remnant moved nothing itself
                totals = self.apps.get(row.app)
                if totals is None:
                    totals = self.apps[row.app] = AppTotals()
                totals.uncounted = True
            return 0, 0
        if baseline and not fresh:
            row.upload_speed = row.download_speed = None
            return 0, 0
        if dt:
            row.upload_speed = up / dt
            row.download_speed = down / dt
        elif fresh:
            row.upload_speed = row.download_speed = None
        if up or down or fresh:
            totals = self.apps.get(row.app)
            if totals is None:
                totals = self.apps[row.app] = AppTotals()
            totals.counted = True
            totals.bytes_sent += up
            totals.bytes_received += down
            if up or down:
                totals.tick_sent += up
                totals.tick_received += down
                self._apps_moving[row.app] = totals
                if self.usage_sink is not None:
                    self.usage_sink.count(row.app, row.remote_ip, row.remote_host, up, down)
            row.counted_sent += up
            row.counted_received += down
        return up, down

    def _apply_app_rates(self, dt: float | None) -> None:
        """Turn the bytes each app moved this tick into its rates; apps that
        moved last tick and not this one are back to 0."""
        for totals in self._apps_moved.values():
            totals.upload_speed = totals.download_speed = 0.0
        for totals in self._apps_moving.values():
            if dt:
                totals.upload_speed = totals.tick_sent / dt
                totals.download_speed = totals.tick_received / dt
            totals.tick_sent = totals.tick_received = 0
        self._apps_moved, self._apps_moving = self._apps_moving, {}

    def _close(self, row: ConnRow, wall: float) -> None:
        row.state = "CLOSED"
        row.closed_at = wall
        row.upload_speed = 0.0 if row.bytes_sent is not None else None
        row.download_speed = 0.0 if row.bytes_received is not None else None
        if self.closed_retention > 0:
            self.closed.append(row)
            self._closed_by_key[row.key] = row

    def _expire_closed(self, wall: float) -> None:
        cutoff = wall - self.closed_retention
        closed = self.closed
        while closed and ((closed[0].closed_at or 0.0) <= cutoff or len(closed) > MAX_CLOSED_ROWS):
            row = closed.popleft()
            if self._closed_by_key.get(row.key) is row:
                del self._closed_by_key[row.key]

    def _apply_interfaces(
        self, samples: list[InterfaceSample], dt: float | None, baseline: bool
    ) -> tuple[int, int]:
        """Fold interface counters in; return the bytes (up, down) the counted
        interfaces moved since the previous sample."""
        up = down = 0
        present = set()
        for s in samples:
            present.add(s.name)
            tr = self._ifaces.get(s.name)
            if tr is None:
                tr = self._ifaces[s.name] = _IfaceTrack(s)
                continue
            d_sent = _delta(s.bytes_sent, tr.prev_sent)
            d_recv = _delta(s.bytes_received, tr.prev_recv)
            tr.prev_sent, tr.prev_recv = s.bytes_sent, s.bytes_received
            if baseline:
                tr.up = tr.down = 0.0
                continue
            tr.total_sent += d_sent
            tr.total_recv += d_recv
            tr.up = d_sent / dt if dt else 0.0
            tr.down = d_recv / dt if dt else 0.0
            if self.include_loopback or not tr.is_loopback:
                up += d_sent
                down += d_recv
        for name in [n for n in self._ifaces if n not in present]:
            del self._ifaces[name]  # interface went away (VPN down, USB unplugged)
        return up, down

    def _apply_totals(self, dt: float | None, att_up: int, att_down: int, if_up: int, if_down: int) -> None:
        """Total, attributed and unattributed rates of this tick.

        unattributed = interface bytes - socket bytes + what the previous tick
        owed; a negative result is owed to the next tick (at most one tick's
        socket bytes, so that a lasting excess, e.g. traffic on an interface
        that is not counted, cannot pile up) and this tick reads 0.
        """
        if not dt:
            self.total_upload_speed = self.total_download_speed = 0.0
            self.attributed_upload_speed = self.attributed_download_speed = 0.0
            self.unattributed_upload_speed = self.unattributed_download_speed = 0.0
            self.last_unattributed = (0, 0)
            self._carry = [0, 0]
            return
        unattributed = []
        for i, (att, iface) in enumerate(((att_up, if_up), (att_down, if_down))):
            pending = iface - att + self._carry[i]
            if pending >= 0:
                unattributed.append(pending)
                self._carry[i] = 0
            else:
                unattributed.append(0)
                self._carry[i] = max(pending, -att)
        un_up, un_down = unattributed
        self.last_unattributed = (un_up, un_down)
        self.unattributed_sent += un_up
        self.unattributed_received += un_down
        self.attributed_upload_speed = att_up / dt
        self.attributed_download_speed = att_down / dt
        self.unattributed_upload_speed = un_up / dt
        self.unattributed_download_speed = un_down / dt
        # By construction never below what the sockets explain.
        self.total_upload_speed = (att_up + un_up) / dt
        self.total_download_speed = (att_down + un_down) / dt

    def _bound_apps(self) -> None:
        if len(self.apps) <= MAX_APPS:
            return
        active = {row.app for row in self.open.values()}
        idle = sorted(
            (a for a in self.apps if a not in active),
            key=lambda a: self.apps[a].bytes_sent + self.apps[a].bytes_received,
        )
        for name in idle[: len(self.apps) - MAX_APPS]:
            del self.apps[name]

    # -- queries -----------------------------------------------------------
    def connections(self, include_closed: bool = False) -> Iterable[ConnRow]:
        """Open rows, then (optionally) closed ones, newest closed last."""
        yield from self.open.values()
        if include_closed:
            yield from self.closed

    def app_usage(self) -> list[api.AppUsage]:
        """AppUsage maps: every app with open sockets or counted bytes, and the
        "process unknown" line (process_name None) when it has any.

        bytes_*: since start/clear, None when none of the app's sockets had
        counters; *_speed: what its sockets moved in the last tick, those
        that closed in it included, None when it has open sockets, none has
        counters and nothing counted moved; `partial`: some sockets have
        counters and some not, so the figures are a lower bound;
        `connections`: its active connections (listeners and TIME_WAIT
        remnants are not connections: see connection_counts).
        """
        live: dict[str | None, _AppLive] = {}
        for row in self.open.values():
            if row.is_remnant:
                continue
            entry = live.get(row.app)
            if entry is None:
                entry = live[row.app] = _AppLive()
            entry.add(row)
        out = []
        for name in set(live) | set(self.apps):
            entry = live.get(name)
            totals = self.apps.get(name)
            if entry is None and (totals is None or not (totals.bytes_sent or totals.bytes_received)):
                continue  # nothing open, nothing moved: not worth a row
            out.append(_app_wire(name, entry, totals))
        out.sort(key=_app_order, reverse=True)
        return out

    def app_usage_of(self, rows: Iterable[ConnRow]) -> list[api.AppUsage]:
        """AppUsage maps computed over some rows only (a filtered `apps`).

        Bytes are what those rows moved since start/clear (closed ones still
        retained included); pids, connections and speeds come from the open ones.
        """
        live: dict[str | None, _AppLive] = {}
        totals: dict[str | None, AppTotals] = {}
        for row in rows:
            if row.is_remnant:
                continue
            t = totals.get(row.app)
            if t is None:
                t = totals[row.app] = AppTotals()
                live[row.app] = _AppLive()
            t.bytes_sent += row.counted_sent
            t.bytes_received += row.counted_received
            if row.has_counters:
                t.counted = True
            else:
                t.uncounted = True
            if row.closed_at is None:
                live[row.app].add(row)
        out = [_app_wire(name, live[name] if live[name].sockets else None, t) for name, t in totals.items()]
        out.sort(key=_app_order, reverse=True)
        return out

    def remote_usage(self, rows: Iterable[ConnRow] | None = None, by_port: bool = False) -> list[api.RemoteUsage]:
        """RemoteUsage maps: one per remote address (with `by_port`, per
        address and port) of `rows`, by default every open row and every
        retained closed one; busiest first.

        The figures follow app_usage_of: bytes are what the rows moved since
        start/clear, closed ones still retained included; connections and
        speeds come from the open ones. Sockets without a peer (listeners)
        and TIME_WAIT remnants are no one's traffic.
        """
        if rows is None:
            rows = self.connections(include_closed=True)
        # One plain list per remote (this runs over every row at every `top`
        # refresh): [sent, received, counted, uncounted, open sockets, open
        # counted, up, down, {app: bytes}].
        groups: dict[tuple[str, int | None], list[Any]] = {}
        for row in rows:
            s = row.sample
            ip = s.remote_ip
            if ip is None or row.is_remnant:
                continue
            key = (ip, s.remote_port if by_port else None)
            g = groups.get(key)
            if g is None:
                g = groups[key] = [0, 0, False, False, 0, 0, 0.0, 0.0, {}]
            g[0] += row.counted_sent
            g[1] += row.counted_received
            counters = row.bytes_sent is not None or row.bytes_received is not None
            if counters:
                g[2] = True
            else:
                g[3] = True
            if row.closed_at is None:
                g[4] += 1
                if counters:
                    g[5] += 1
                    g[6] += row.upload_speed or 0.0
                    g[7] += row.download_speed or 0.0
            name = row.process_name
            if name is not None:
                apps = g[8]
                apps[name] = apps.get(name, 0) + row.counted_sent + row.counted_received
        out: list[api.RemoteUsage] = []
        names = self.names
        for (ip, port), (sent, received, counted, uncounted, sockets, open_counted, up, down, apps) in groups.items():
            # As _app_wire: unknown (None) when open sockets have no counters
            # at all, 0 when nothing is open, else what the open ones moved.
            if sockets == 0:
                speed_up = speed_down = 0.0 if counted else None
            elif open_counted:
                speed_up, speed_down = up, down
            else:
                speed_up = speed_down = None
            out.append({
                "remote_ip": ip,
                "remote_port": port,
                "hostname": names(ip),
                "scope": classify_scope(ip),
                "connections": sockets,
                "upload_speed": speed_up,
                "download_speed": speed_down,
                "bytes_sent": sent if counted else None,
                "bytes_received": received if counted else None,
                "apps": sorted(apps, key=lambda app: (-apps[app], app)) if len(apps) > 1 else list(apps),
                "partial": counted and uncounted,
            })
        out.sort(key=_app_order, reverse=True)
        return out

    def connection_counts(self) -> dict[str, int]:
        """The open sockets, by what they are, as of the last tick; the one
        definition that `status`, `stats`, `apps` and `top` use. Counted
        once per tick: `status` reads it while the next tick runs.

        connections: active connections (a remote end, not TIME_WAIT; UDP
        sockets with a peer included); listeners: TCP listeners and UDP
        sockets without a peer; time_wait: remnants of closed connections
        the kernel still holds; sockets: all three.
        """
        return dict(self._counts)

    def _count_open(self) -> dict[str, int]:
        listeners = remnants = 0
        for row in self.open.values():
            if row.is_listener:
                listeners += 1
            elif row.is_remnant:
                remnants += 1
        return {
            "sockets": len(self.open),
            "connections": len(self.open) - listeners - remnants,
            "listeners": listeners,
            "time_wait": remnants,
        }

    def interfaces(self) -> list[api.Interface]:
        """Per-interface rates and totals since start/clear."""
        return [
            {
                "name": name,
                "upload_speed": tr.up,
                "download_speed": tr.down,
                "bytes_sent": tr.total_sent,
                "bytes_received": tr.total_recv,
            }
            for name, tr in sorted(self._ifaces.items())
        ]

    def stats(self, *, uptime: float, monitoring: bool) -> api.Stats:
        """The Stats map of docs/PROTOCOL.md §8, with the totals of this module's docstring."""
        ifaces = self.interfaces()
        counted = [
            i for i in ifaces if self.include_loopback or not self._ifaces[i["name"]].is_loopback
        ]
        apps = self.app_usage()
        top = next((a["process_name"] for a in apps if a["process_name"] is not None and (
            (a["upload_speed"] or 0) + (a["download_speed"] or 0) > 0
            or (a["bytes_sent"] or 0) + (a["bytes_received"] or 0) > 0)), None)
        socket_sent = socket_received = 0
        for totals in self.apps.values():
            socket_sent += totals.bytes_sent
            socket_received += totals.bytes_received
        unknown = self.apps.get(None)
        counts = self.connection_counts()
        return {
            "total_upload_speed": self.total_upload_speed,
            "total_download_speed": self.total_download_speed,
            "active_connections": counts["connections"],
            "listeners": counts["listeners"],
            "time_wait": counts["time_wait"],
            "total_bytes_sent": sum(i["bytes_sent"] for i in counted),
            "total_bytes_received": sum(i["bytes_received"] for i in counted),
            "uptime": uptime,
            "monitoring": monitoring,
            "interval": self.interval,
            "interfaces": ifaces,
            "attributed_upload_speed": self.attributed_upload_speed,
            "attributed_download_speed": self.attributed_download_speed,
            "unattributed_upload_speed": self.unattributed_upload_speed,
            "unattributed_download_speed": self.unattributed_download_speed,
            "unattributed_bytes_sent": self.unattributed_sent,
            "unattributed_bytes_received": self.unattributed_received,
            "socket_bytes_sent": socket_sent,
            "socket_bytes_received": socket_received,
            "unknown_process_bytes_sent": unknown.bytes_sent if unknown else 0,
            "unknown_process_bytes_received": unknown.bytes_received if unknown else 0,
            "include_loopback": self.include_loopback,
            "top_app": top,
        }

    def bandwidth_history(self, seconds: float, now: float) -> list[api.HistoryPoint]:
        """History points of the last `seconds`, oldest first."""
        cutoff = now - seconds
        return [p for p in self.history if p["timestamp"] >= cutoff]
