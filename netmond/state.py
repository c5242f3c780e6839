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
- Unknown is None, never 0: rows whose OS keeps no counters have bytes None.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable

from common.models import UNKNOWN_APP, connection_scope, format_addr

from .backends.base import InterfaceSample, Snapshot, SocketSample

#: Closed rows kept at most, whatever the retention: bounds memory under churn.
MAX_CLOSED_ROWS = 50_000
#: App totals kept at most; beyond it the smallest idle apps are forgotten.
MAX_APPS = 4096


class ConnRow:
    """One connection's row. Mutable; rendered to the wire by to_wire()."""

    __slots__ = (
        "id", "key", "protocol", "family", "local_ip", "local_port", "remote_ip",
        "remote_port", "scope", "state", "pid",
        "process_name", "user", "bytes_sent", "bytes_received", "upload_speed",
        "download_speed", "first_seen", "last_seen", "closed_at", "counted_sent",
        "counted_received", "sample",
    )

    def __init__(self, row_id: int, s: SocketSample, wall: float) -> None:
        self.id = row_id
        self.key = s.key
        self.protocol = s.protocol
        self.family = s.family
        self.local_ip = s.local_ip
        self.local_port = s.local_port
        self.remote_ip = s.remote_ip
        self.remote_port = s.remote_port
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
        self.last_seen = wall
        self.closed_at: float | None = None
        # Bytes of this row added to its app's totals, so that they can move
        # with the row when its process becomes known a tick late.
        self.counted_sent = 0
        self.counted_received = 0
        # The SocketSample last applied: a backend that hands the same object
        # again says the socket did not change (see MonitorState.apply).
        self.sample = s

    @property
    def app(self) -> str:
        """The app name this row's bytes are counted under."""
        return self.process_name or UNKNOWN_APP

    @property
    def is_listener(self) -> bool:
        return self.state == "LISTEN" or (self.protocol == "UDP" and self.remote_ip is None)

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

    def to_wire(self, now: float) -> dict[str, Any]:
        """The Connection map of docs/PROTOCOL.md §8."""
        end = self.closed_at if self.closed_at is not None else now
        return {
            "id": self.id,
            "protocol": self.protocol,
            "family": self.family,
            # Formatted here, not kept: two strings a row add up at 10,000 rows.
            "local_addr": format_addr(self.local_ip, self.local_port),
            "remote_addr": format_addr(self.remote_ip, self.remote_port),
            "local_ip": self.local_ip,
            "local_port": self.local_port,
            "remote_ip": self.remote_ip,
            "remote_port": self.remote_port,
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
            "counters": "kernel" if self.bytes_sent is not None or self.bytes_received is not None else None,
            "closed_at": self.closed_at,
        }


@dataclass
class AppTotals:
    """Bytes an app moved since start/clear, closed connections included."""

    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass
class TickChanges:
    """What one apply() changed; the server turns it into notifications."""

    updated: list[ConnRow] = field(default_factory=list)
    closed: list[ConnRow] = field(default_factory=list)
    history_point: dict[str, float] | None = None


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
        include_loopback: bool = False,
    ) -> None:
        self.interval = interval
        self.history_seconds = history_seconds
        self.closed_retention = closed_retention
        self.include_loopback = include_loopback
        self._ids = itertools.count(1)
        self.open: dict[Hashable, ConnRow] = {}
        # Closed rows, oldest first; and the same rows by key so that a destroy
        # event arriving a tick late can still add its last bytes.
        self.closed: deque[ConnRow] = deque()
        self._closed_by_key: dict[Hashable, ConnRow] = {}
        self.apps: dict[str, AppTotals] = {}
        self._ifaces: dict[str, _IfaceTrack] = {}
        self.history: deque[dict[str, float]] = deque(maxlen=self._history_len())
        self._baseline = True
        self.last_mono: float | None = None
        self.ticks = 0
        # Figures of the last tick, for stats.
        self.total_upload_speed = 0.0
        self.total_download_speed = 0.0
        self.attributed_upload_speed = 0.0
        self.attributed_download_speed = 0.0

    # -- configuration -----------------------------------------------------
    def _history_len(self) -> int:
        return max(1, math.ceil(self.history_seconds / self.interval))

    def set_interval(self, interval: float) -> None:
        """Change the sampling interval; the ring keeps history_seconds of points."""
        self.interval = interval
        self._resize_history()

    def set_history_seconds(self, seconds: int) -> None:
        self.history_seconds = seconds
        self._resize_history()

    def _resize_history(self) -> None:
        self.history = deque(self.history, maxlen=self._history_len())

    def clear(self) -> None:
        """Zero totals and history; forget closed rows. Open rows stay."""
        self.apps.clear()
        self.history.clear()
        self.closed.clear()
        self._closed_by_key.clear()
        for tr in self._ifaces.values():
            tr.total_sent = tr.total_recv = 0
        self.rebaseline()

    def rebaseline(self) -> None:
        """Next apply() takes current counters as the starting point (resume)."""
        self._baseline = True

    # -- the tick ----------------------------------------------------------
    def apply(self, snap: Snapshot) -> TickChanges:
        """Fold one snapshot in; return the rows that changed and closed."""
        changes = TickChanges()
        baseline = self._baseline
        # Rates need a previous sample, and none counts across a baseline.
        dt = None if baseline or self.last_mono is None else snap.monotonic - self.last_mono
        if dt is not None and dt <= 0:
            dt = None
        wall = snap.wall
        counted_up = 0  # bytes moved this tick by rows that count toward attribution
        counted_down = 0

        # 1. Destroy events first: they carry final counters.
        just_closed: dict[Hashable, ConnRow] = {}
        for s in snap.closed:
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
                row = ConnRow(next(self._ids), s, wall)
                up, down = self._account(row, s, baseline=False, fresh=True)
            else:
                self._adopt(row, s)
                up, down = self._account(row, s, baseline=baseline)
            counted_up, counted_down = counted_up + up, counted_down + down
            self._close(row, wall)
            just_closed[s.key] = row
            changes.closed.append(row)

        # 2. Sockets open now.
        seen: set[Hashable] = set()
        for s in snap.sockets:
            key = s.key
            row = self.open.get(key)
            if row is not None and s is row.sample and not baseline:
                # The backend handed on last tick's sample: nothing changed,
                # so no bytes moved. The same outcome as below, faster.
                seen.add(key)
                row.last_seen = wall
                if dt:
                    if row.bytes_sent is None and row.bytes_received is None:
                        row.upload_speed = row.download_speed = None
                    else:
                        row.upload_speed = row.download_speed = 0.0
                continue
            if row is None:
                done = just_closed.get(key)
                if done is not None and _delta(s.bytes_sent, done.bytes_sent) == 0 and _delta(
                    s.bytes_received, done.bytes_received
                ) == 0:
                    continue  # dump taken just before the destroy event: stale
                row = ConnRow(next(self._ids), s, wall)
                self.open[key] = row
                if baseline:
                    row.upload_speed = row.download_speed = None
                else:
                    up, down = self._account(row, s, baseline=False, fresh=True, dt=dt)
                    counted_up, counted_down = counted_up + up, counted_down + down
                seen.add(key)
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
                row = ConnRow(next(self._ids), s, wall)
                self.open[key] = row
                up, down = self._account(row, s, baseline=False, fresh=True, dt=dt)
                counted_up, counted_down = counted_up + up, counted_down + down
                seen.add(key)
                changes.updated.append(row)
                continue
            seen.add(key)
            row.sample = s
            before = (row.state, row.bytes_sent, row.bytes_received, row.pid)
            self._adopt(row, s)
            up, down = self._account(row, s, baseline=baseline, dt=dt)
            counted_up, counted_down = counted_up + up, counted_down + down
            row.last_seen = wall
            if (row.state, row.bytes_sent, row.bytes_received, row.pid) != before:
                changes.updated.append(row)

        # 3. Rows the OS no longer lists closed since the last sample.
        if len(seen) != len(self.open):
            for key in [k for k in self.open if k not in seen]:
                row = self.open.pop(key)
                row.upload_speed = row.download_speed = 0.0 if row.bytes_sent is not None else None
                self._close(row, wall)
                changes.closed.append(row)

        self._expire_closed(wall)
        self._apply_interfaces(snap.interfaces, dt, baseline)
        if dt:
            self.attributed_upload_speed = counted_up / dt
            self.attributed_download_speed = counted_down / dt
        else:
            self.attributed_upload_speed = self.attributed_download_speed = 0.0
        if not baseline and dt:
            point = {
                "timestamp": wall,
                "upload": self.total_upload_speed,
                "download": self.total_download_speed,
            }
            self.history.append(point)
            changes.history_point = point
        self.last_mono = snap.monotonic
        self._baseline = False
        self.ticks += 1
        self._bound_apps()
        return changes

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
                # bytes counted under "unknown" belong to this app.
                old = self.apps.get(old_app)
                if old is not None:
                    old.bytes_sent -= row.counted_sent
                    old.bytes_received -= row.counted_received
                new = self.apps.setdefault(row.app, AppTotals())
                new.bytes_sent += row.counted_sent
                new.bytes_received += row.counted_received

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
            return 0, 0
        if baseline and not fresh:
            row.upload_speed = row.download_speed = None
            return 0, 0
        if dt:
            row.upload_speed = up / dt
            row.download_speed = down / dt
        elif fresh:
            row.upload_speed = row.download_speed = None
        if up or down:
            totals = self.apps.get(row.app)
            if totals is None:
                totals = self.apps[row.app] = AppTotals()
            totals.bytes_sent += up
            totals.bytes_received += down
            row.counted_sent += up
            row.counted_received += down
        if row.scope == "loopback" and not self.include_loopback:
            return 0, 0
        return up, down

    def _close(self, row: ConnRow, wall: float) -> None:
        row.state = "CLOSED"
        row.closed_at = wall
        row.last_seen = wall
        row.upload_speed = 0.0 if row.bytes_sent is not None else None
        row.download_speed = 0.0 if row.bytes_received is not None else None
        if self.closed_retention > 0:
            self.closed.append(row)
            self._closed_by_key[row.key] = row

    def _expire_closed(self, wall: float) -> None:
        cutoff = wall - self.closed_retention
        closed = self.closed
        while closed and (closed[0].closed_at <= cutoff or len(closed) > MAX_CLOSED_ROWS):
            row = closed.popleft()
            if self._closed_by_key.get(row.key) is row:
                del self._closed_by_key[row.key]

    def _apply_interfaces(
        self, samples: list[InterfaceSample], dt: float | None, baseline: bool
    ) -> None:
        up = down = 0.0
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
                up += tr.up
                down += tr.down
        for name in [n for n in self._ifaces if n not in present]:
            del self._ifaces[name]  # interface went away (VPN down, USB unplugged)
        self.total_upload_speed = up
        self.total_download_speed = down

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

    def app_usage(self) -> list[dict[str, Any]]:
        """AppUsage maps: every app with open connections or counted bytes."""
        live: dict[str, dict[str, Any]] = {}
        for row in self.open.values():
            if row.is_remnant:
                continue
            entry = live.get(row.app)
            if entry is None:
                entry = live[row.app] = {"pids": set(), "connections": 0, "up": 0.0, "down": 0.0}
            if row.pid is not None:
                entry["pids"].add(row.pid)
            entry["connections"] += 1
            entry["up"] += row.upload_speed or 0.0
            entry["down"] += row.download_speed or 0.0
        out = []
        for name in set(live) | set(self.apps):
            entry = live.get(name)
            totals = self.apps.get(name) or AppTotals()
            if entry is None and not (totals.bytes_sent or totals.bytes_received):
                continue  # nothing open, nothing moved: not worth a row
            out.append(
                {
                    "process_name": name,
                    "pids": sorted(entry["pids"]) if entry else [],
                    "connections": entry["connections"] if entry else 0,
                    "upload_speed": entry["up"] if entry else 0.0,
                    "download_speed": entry["down"] if entry else 0.0,
                    "bytes_sent": totals.bytes_sent,
                    "bytes_received": totals.bytes_received,
                }
            )
        out.sort(
            key=lambda a: (a["upload_speed"] + a["download_speed"], a["bytes_sent"] + a["bytes_received"]),
            reverse=True,
        )
        return out

    def app_usage_of(self, rows: Iterable[ConnRow]) -> list[dict[str, Any]]:
        """AppUsage maps computed over some rows only (a filtered `apps`).

        Bytes are what those rows moved since start/clear (closed ones still
        retained included); pids, connections and speeds come from the open ones.
        """
        acc: dict[str, dict[str, Any]] = {}
        for row in rows:
            e = acc.get(row.app)
            if e is None:
                e = acc[row.app] = {"process_name": row.app, "pids": set(), "connections": 0,
                                    "upload_speed": 0.0, "download_speed": 0.0,
                                    "bytes_sent": 0, "bytes_received": 0}
            e["bytes_sent"] += row.counted_sent
            e["bytes_received"] += row.counted_received
            if row.closed_at is None:
                if row.pid is not None:
                    e["pids"].add(row.pid)
                e["connections"] += 1
                e["upload_speed"] += row.upload_speed or 0.0
                e["download_speed"] += row.download_speed or 0.0
        out = [{**e, "pids": sorted(e["pids"])} for e in acc.values()]
        out.sort(key=lambda a: (a["upload_speed"] + a["download_speed"],
                                a["bytes_sent"] + a["bytes_received"]), reverse=True)
        return out

    def interfaces(self) -> list[dict[str, Any]]:
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

    def stats(self, *, uptime: float, monitoring: bool) -> dict[str, Any]:
        """The Stats map of docs/PROTOCOL.md §8."""
        ifaces = self.interfaces()
        counted = [
            i for i in ifaces if self.include_loopback or not self._ifaces[i["name"]].is_loopback
        ]
        apps = self.app_usage()
        top = apps[0]["process_name"] if apps and (
            apps[0]["upload_speed"] + apps[0]["download_speed"] > 0
            or apps[0]["bytes_sent"] + apps[0]["bytes_received"] > 0
        ) else None
        return {
            "total_upload_speed": self.total_upload_speed,
            "total_download_speed": self.total_download_speed,
            "active_connections": sum(
                1 for r in self.open.values() if not (r.is_listener or r.is_remnant)
            ),
            "total_bytes_sent": sum(i["bytes_sent"] for i in counted),
            "total_bytes_received": sum(i["bytes_received"] for i in counted),
            "uptime": uptime,
            "monitoring": monitoring,
            "interval": self.interval,
            "interfaces": ifaces,
            "attributed_upload_speed": self.attributed_upload_speed,
            "attributed_download_speed": self.attributed_download_speed,
            "unattributed_upload_speed": max(0.0, self.total_upload_speed - self.attributed_upload_speed),
            "unattributed_download_speed": max(
                0.0, self.total_download_speed - self.attributed_download_speed
            ),
            "top_app": top,
        }

    def bandwidth_history(self, seconds: float, now: float) -> list[dict[str, float]]:
        """History points of the last `seconds`, oldest first."""
        cutoff = now - seconds
        return [p for p in self.history if p["timestamp"] >= cutoff]
