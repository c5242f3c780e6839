"""Prometheus exporter: `/metrics` over HTTP and/or a node_exporter textfile.

Off by default. `netmond --metrics-listen 127.0.0.1:9101` serves /metrics
(prometheus_client's HTTP server, in its own thread); `--metrics-textfile
PATH` writes the same exposition once per tick, atomically (a temporary file
in the same directory renamed over PATH), for node_exporter's textfile
collector. prometheus_client is optional (the `metrics` extra: `make` installs it)
and imported only when one of them is asked for.

Metrics, in base units; counters are `_total` and count from daemon start;
no rates (Prometheus computes them), no per-connection, remote-ip or pid
labels (unbounded cardinality):

    netmon_process_receive_bytes_total{app}     bytes per app, top N + app="other"
    netmon_process_transmit_bytes_total{app}
    netmon_process_connections{app}             active connections, same app labels
    netmon_connections{protocol,state}          open sockets
    netmon_unknown_process_receive_bytes_total  socket bytes whose process is unknown
    netmon_unknown_process_transmit_bytes_total
    netmon_unattributed_receive_bytes_total     interface bytes no socket explains
    netmon_unattributed_transmit_bytes_total

An app whose sockets have no byte counters (UDP-only on Linux) has no byte
series at all: absent is Prometheus's "unknown", 0 would be a claim.
    netmon_build_info{version,backend}          always 1

and the daemon's own health (see Health below):

    netmon_sampling                             1 sampling, 0 paused (netmonctl stop)
    netmon_sample_interval_seconds
    netmon_last_sample_timestamp_seconds        epoch seconds of the latest sample
    netmon_last_sample_age_seconds              its age when scraped (or written)
    netmon_tick_duration_seconds                histogram: sample + account + publish
    netmon_destroy_events_lost_total            TCP close events the kernel dropped
    netmon_sample_errors_total                  ticks that failed (logged)
    netmond_process_cpu_seconds_total, netmond_process_resident_memory_bytes, ...
                                                netmond itself (prefixed: a textfile's
                                                process_* would clash with node_exporter's own)

Counters never go backwards, whatever the daemon's own totals do:
- Per app, the exporter adds up the growth of MonitorState's totals from tick
  to tick. `netmonctl clear` (totals restart from 0) and apps forgotten by the
  state are recognised by the totals object being a new one, and count from
  there; the exported values keep growing (no counter reset to explain).
- The top N apps (by bytes since start) get their own label; every byte of
  the others, including apps that exited long ago, goes to app="other". An
  app that enters the top N appears with all its bytes; one that leaves it
  stops being exported and its new bytes go to "other". Per-series rate()
  is right either way; a plain sum() of the raw values can count the bytes
  an app moved before joining the top N twice (once in "other").
- Unattributed bytes are MonitorState's per-tick unattributed bytes added
  up (never negative by construction: the state carries an excess of
  socket bytes over interface bytes into the next tick).

Threads: `on_tick()` runs on the daemon's event loop, builds an immutable
MetricsSnapshot and swaps one reference; the HTTP thread's `collect()` reads
that reference once per scrape and builds fresh metric families from it. No
lock, and no scrape ever reads live state.

Safe on a shared machine (issue 10): any local user can connect to the port.
- The HTTP server is our own small one (http.server), not prometheus_client's
  thread-per-connection server: at most MAX_CONNECTIONS connections are
  served at once (one thread and one descriptor each), one over that is
  closed as soon as it is accepted, and a connection that has not sent its
  request within REQUEST_TIMEOUT is closed. Before, 1,016 idle connections
  took all of the daemon's 1,024 descriptors and every netmonctl call failed.
- The textfile is written to an unpredictable temporary name made with
  O_CREAT|O_EXCL|O_NOFOLLOW (mkstemp) in the target directory and renamed
  over PATH, so a symlink another user plants is never followed; a directory
  others may write is refused unless it is sticky (then only our own file is
  ever replaced).
- `metrics_listen` is parsed strictly (an IP address, `localhost`, or a
  bracketed IPv6 address, and a port); listening beyond loopback is logged
  as a warning and shown by `netmonctl status`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import resource
import stat
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterator

from common import __version__
from common.atomicfile import write_atomically

from .config import Config, ConfigError, split_listen

if TYPE_CHECKING:  # pragma: no cover
    from .state import MonitorState

log = logging.getLogger("netmond.metrics")

#: Apps with their own label; the rest are summed under OTHER.
TOP_APPS = 20
OTHER = "other"
#: Apps whose byte counts are remembered; the smallest never-exported ones go first.
MAX_TRACKED_APPS = 4096
#: Scrapes served at once; one more connection is closed when accepted.
MAX_CONNECTIONS = 16
#: Seconds a connection may take to send its request (and to read the reply).
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class AppSeries:
    """One app label's values."""

    app: str
    receive_bytes: int
    transmit_bytes: int
    connections: int


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything a scrape exports, frozen at the end of one tick."""

    apps: tuple[AppSeries, ...] = ()
    connections: tuple[tuple[str, str, int], ...] = ()  # (protocol, state, count)
    unattributed_receive_bytes: int = 0
    unattributed_transmit_bytes: int = 0
    unknown_process_receive_bytes: int = 0
    unknown_process_transmit_bytes: int = 0
    backend: str = ""
    version: str = __version__


#: Upper bounds of netmon_tick_duration_seconds' buckets: a tick takes a few
#: ms at 100 sockets, ~40 ms at 10,000; seconds mean trouble.
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Health:
    """How the daemon itself is doing, handed over by the daemon (app.py)."""

    sampling: bool = False
    interval: float = 0.0
    # When the latest sample was taken, on both clocks: the monotonic one
    # for its age (immune to clock changes), the wall one for the timestamp
    # (the only one that means something in a textfile read later).
    last_sample_mono: float | None = None
    last_sample_wall: float | None = None
    # How long the tick that just ended took; None when no tick ended.
    tick_seconds: float | None = None
    events_lost: int = 0
    sample_errors: int = 0


@dataclass(frozen=True)
class TickHistogram:
    """Cumulative bucket counts of tick durations (immutable: one per tick)."""

    buckets: tuple[int, ...] = (0,) * len(TICK_BUCKETS)  # count <= each bound
    count: int = 0
    total: float = 0.0

    def observe(self, seconds: float) -> "TickHistogram":
        """A new histogram with one more observation."""
        return TickHistogram(
            tuple(n + (seconds <= bound) for n, bound in zip(self.buckets, TICK_BUCKETS)),
            self.count + 1,
            self.total + seconds,
        )


@dataclass
class Accountant:
    """Turns MonitorState, tick after tick, into monotonic exported values. Pure."""

    top_n: int = TOP_APPS
    # app -> [receive, transmit] since daemon start; only ever grows.
    _cumulative: dict[str, list[int]] = field(default_factory=dict)
    # app -> (the state's AppTotals object, its bytes_received, its bytes_sent) last tick
    _previous: dict[str | None, tuple[Any, int, int]] = field(default_factory=dict)
    _other: list[int] = field(default_factory=lambda: [0, 0])
    _ever_exported: set[str] = field(default_factory=set)
    _last_tick: int | None = None
    # [receive, transmit] since daemon start
    _unattributed: list[int] = field(default_factory=lambda: [0, 0])
    _unknown_process: list[int] = field(default_factory=lambda: [0, 0])

    def update(self, state: "MonitorState", backend: str) -> MetricsSnapshot:
        """Fold the state after one tick in; return what scrapes should see now."""
        deltas, unknown = self._app_deltas(state)
        if unknown is not None:
            self._unknown_process[0] += unknown[0]
            self._unknown_process[1] += unknown[1]
        for app, (rx, tx) in deltas.items():
            cum = self._cumulative.setdefault(app, [0, 0])
            cum[0] += rx
            cum[1] += tx
        # A process literally named "other" must not collide with the bucket.
        ranked = sorted(
            (a for a in self._cumulative if a != OTHER),
            key=lambda a: (-(self._cumulative[a][0] + self._cumulative[a][1]), a),
        )[: self.top_n]
        top = set(ranked)
        for app, (rx, tx) in deltas.items():
            if app not in top:
                self._other[0] += rx
                self._other[1] += tx
        self._ever_exported |= top
        self._forget_small(top)

        per_app: Counter[str] = Counter()
        per_state: Counter[tuple[str, str]] = Counter()
        for row in state.connections():
            per_state[(row.protocol, row.state)] += 1
            if row.app is not None and not (row.is_listener or row.is_remnant):
                per_app[row.app] += 1  # the `connections` of `apps`
        apps = [
            AppSeries(a, self._cumulative[a][0], self._cumulative[a][1], per_app.get(a, 0)) for a in ranked
        ]
        other_conns = sum(n for a, n in per_app.items() if a not in top)
        apps.append(AppSeries(OTHER, self._other[0], self._other[1], other_conns))

        self._account_unattributed(state)
        return MetricsSnapshot(
            apps=tuple(apps),
            connections=tuple((p, s, n) for (p, s), n in sorted(per_state.items())),
            unattributed_receive_bytes=self._unattributed[0],
            unattributed_transmit_bytes=self._unattributed[1],
            unknown_process_receive_bytes=self._unknown_process[0],
            unknown_process_transmit_bytes=self._unknown_process[1],
            backend=backend,
        )

    def _app_deltas(self, state: "MonitorState") -> tuple[dict[str, tuple[int, int]], tuple[int, int] | None]:
        """(bytes received and sent since the last tick per app, those of the
        "process unknown" line (app None), if any)."""
        deltas: dict[str | None, tuple[int, int]] = {}
        current: dict[str | None, tuple[Any, int, int]] = {}
        for app, totals in state.apps.items():
            rx, tx = totals.bytes_received, totals.bytes_sent
            prev = self._previous.get(app)
            if prev is not None and prev[0] is totals:
                d_rx, d_tx = max(0, rx - prev[1]), max(0, tx - prev[2])
            else:
                # A new app, or new totals after `clear` or after the state
                # forgot the app: everything in them moved since our last look.
                d_rx, d_tx = rx, tx
            if d_rx or d_tx:
                deltas[app] = (d_rx, d_tx)
            # Holding the object itself (not its id) makes `is` above exact.
            current[app] = (totals, rx, tx)
        self._previous = current
        unknown = deltas.pop(None, None)
        return {app: d for app, d in deltas.items() if app is not None}, unknown

    def _forget_small(self, top: set[str]) -> None:
        if len(self._cumulative) <= MAX_TRACKED_APPS:
            return
        # Never forget an app that had its own label: if it came back, its
        # series would restart lower, which a counter must never do.
        candidates = sorted(
            (a for a in self._cumulative if a not in top and a not in self._ever_exported),
            key=lambda a: self._cumulative[a][0] + self._cumulative[a][1],
        )
        for app in candidates[: len(self._cumulative) - MAX_TRACKED_APPS]:
            del self._cumulative[app]

    def _account_unattributed(self, state: "MonitorState") -> None:
        # Once per tick of the state (update() may run twice on one tick).
        if state.ticks != self._last_tick:
            self._last_tick = state.ticks
            up, down = state.last_unattributed
            self._unattributed[0] += down
            self._unattributed[1] += up


class NetmonCollector:
    """A prometheus_client custom collector: fresh families from the latest snapshot."""

    def __init__(self, exporter: "MetricsExporter") -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self._exporter.snapshot  # one read: the loop may swap it meanwhile
        rx = CounterMetricFamily(
            "netmon_process_receive_bytes", "Bytes received by an app's sockets since netmond started "
            f"(top {self._exporter.top_n} apps, the rest as app=\"other\").", labels=["app"])
        tx = CounterMetricFamily(
            "netmon_process_transmit_bytes", "Bytes sent by an app's sockets (acknowledged by the peer) "
            f"since netmond started (top {self._exporter.top_n} apps, the rest as app=\"other\").",
            labels=["app"])
        conns = GaugeMetricFamily(
            "netmon_process_connections", "Active connections of an app (not listeners, not TIME_WAIT), "
            "as `netmonctl apps` counts them.", labels=["app"])
        for s in snap.apps:
            rx.add_metric([s.app], s.receive_bytes)
            tx.add_metric([s.app], s.transmit_bytes)
            conns.add_metric([s.app], s.connections)
        by_state = GaugeMetricFamily(
            "netmon_connections", "Open connections by protocol and state.", labels=["protocol", "state"])
        for protocol, state, n in snap.connections:
            by_state.add_metric([protocol, state], n)
        un_rx = CounterMetricFamily(
            "netmon_unattributed_receive_bytes",
            "Bytes received on the counted interfaces that no per-socket counter explains (UDP, ...).")
        un_rx.add_metric([], snap.unattributed_receive_bytes)
        un_tx = CounterMetricFamily(
            "netmon_unattributed_transmit_bytes",
            "Bytes sent on the counted interfaces that no per-socket counter explains (UDP, ...).")
        un_tx.add_metric([], snap.unattributed_transmit_bytes)
        unknown_rx = CounterMetricFamily(
            "netmon_unknown_process_receive_bytes",
            "Bytes received by sockets whose process could not be known (closed before it was seen).")
        unknown_rx.add_metric([], snap.unknown_process_receive_bytes)
        unknown_tx = CounterMetricFamily(
            "netmon_unknown_process_transmit_bytes",
            "Bytes sent by sockets whose process could not be known (closed before it was seen).")
        unknown_tx.add_metric([], snap.unknown_process_transmit_bytes)
        info = GaugeMetricFamily(
            "netmon_build_info", "netmond's version and sampling backend; always 1.",
            labels=["version", "backend"])
        info.add_metric([snap.version, snap.backend], 1)
        yield from (rx, tx, conns, by_state, un_rx, un_tx, unknown_rx, unknown_tx, info)


class HealthCollector:
    """The daemon's own health, from the latest Health and tick histogram."""

    def __init__(self, exporter: "MetricsExporter") -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        health, ticks = self._exporter.health, self._exporter.ticks  # one read each
        yield GaugeMetricFamily(
            "netmon_sampling", "1 while netmond samples, 0 while sampling is paused (netmonctl stop).",
            value=1 if health.sampling else 0)
        yield GaugeMetricFamily(
            "netmon_sample_interval_seconds", "Sampling interval.", value=health.interval)
        if health.last_sample_mono is not None and health.last_sample_wall is not None:
            yield GaugeMetricFamily(
                "netmon_last_sample_timestamp_seconds", "When the latest sample was taken (Unix time).",
                value=health.last_sample_wall)
            yield GaugeMetricFamily(
                "netmon_last_sample_age_seconds",
                "Age of the latest sample when this was scraped (in a textfile: when it was written).",
                value=max(0.0, time.monotonic() - health.last_sample_mono))
        yield HistogramMetricFamily(
            "netmon_tick_duration_seconds", "Wall time of one tick: sample, accounting, notifications.",
            buckets=[(floatToGoString(b), n) for b, n in zip(TICK_BUCKETS, ticks.buckets)] + [("+Inf", ticks.count)],
            sum_value=ticks.total)
        yield CounterMetricFamily(
            "netmon_destroy_events_lost", "TCP close events the kernel dropped (netlink buffer overflow): "
            "bytes of those short-lived connections are not counted. Always 0 without a destroy socket.",
            value=health.events_lost)
        yield CounterMetricFamily(
            "netmon_sample_errors", "Ticks that failed (the daemon logs why).", value=health.sample_errors)


#: Prefix of the daemon's own process metrics. Not plain process_*: in a
#: textfile those would clash with node_exporter's own, and its scrape fails.
PROCESS_NAMESPACE = "netmond"


class PsutilProcessCollector:
    """netmond_process_cpu_seconds_total & co. where prometheus_client's
    ProcessCollector has nothing to read (it reads /proc: Linux only; netmond
    also runs on macOS). Same names and meanings, so one dashboard fits both."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()

    def collect(self) -> Iterator[Any]:
        import psutil
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        p = self._process
        try:
            with p.oneshot():
                cpu = p.cpu_times()
                mem = p.memory_info()
                started = p.create_time()
                fds = p.num_fds()
        except psutil.Error:
            return
        prefix = f"{PROCESS_NAMESPACE}_process_"
        yield CounterMetricFamily(prefix + "cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                                  value=cpu.user + cpu.system)
        yield GaugeMetricFamily(prefix + "resident_memory_bytes", "Resident memory size in bytes.", value=mem.rss)
        yield GaugeMetricFamily(prefix + "virtual_memory_bytes", "Virtual memory size in bytes.", value=mem.vms)
        yield GaugeMetricFamily(prefix + "start_time_seconds",
                                "Start time of the process since unix epoch in seconds.", value=started)
        yield GaugeMetricFamily(prefix + "open_fds", "Number of open file descriptors.", value=fds)
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            yield GaugeMetricFamily(prefix + "max_fds", "Maximum number of open file descriptors.", value=soft)


def register_process_collector(registry: Any) -> None:
    """netmond's own CPU, memory and descriptors: prometheus_client's
    ProcessCollector where /proc has them, else the psutil equivalent."""
    from prometheus_client import ProcessCollector

    if sys.platform.startswith("linux") and os.path.exists("/proc/self/stat"):
        ProcessCollector(namespace=PROCESS_NAMESPACE, registry=registry)
    else:
        registry.register(PsutilProcessCollector())


def _require_prometheus_client() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(
            "metrics need prometheus_client, which is not installed: "
            f"{sys.executable} -m pip install prometheus-client"
        ) from None


def is_loopback_listen(listen: str) -> bool:
    """True when metrics_listen only accepts connections from this machine."""
    host, _ = split_listen(listen)
    return ipaddress.ip_address(host).is_loopback


def textfile_problem(path: str) -> str | None:
    """Why the textfile cannot be written safely at `path`, or None.

    The directory must exist and be writable, and no other user may be able
    to replace files in it (writable by others only with the sticky bit, and
    then PATH, if it exists, must be ours: root renaming over another user's
    file in /tmp would be writing where that user chose).
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return f"directory {directory} does not exist: create it, or choose another --metrics-textfile"
    except OSError as exc:
        return f"directory {directory}: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory} is not writable by netmond (uid {os.geteuid()})"
    mode = stat.S_IMODE(st.st_mode)
    others_write = mode & 0o002 or (mode & 0o020 and st.st_uid != 0)
    if others_write and not mode & stat.S_ISVTX:
        return (f"directory {directory} is writable by other users (mode {mode:04o}): they could "
                "replace the file; use a directory only root (or netmond's user) can write")
    if others_write:
        try:
            owner = os.lstat(path).st_uid
        except FileNotFoundError:
            owner = None
        if owner is not None and owner != os.geteuid():
            return f"{path} belongs to uid {owner}, in a directory others can write: refusing to replace it"
    if os.path.isdir(path):
        return f"{path} is a directory"
    return None


def write_textfile(path: str, data: bytes, mode: int) -> None:
    """Write `data` to `path` atomically without following any link (OSError on failure).

    node_exporter never reads half a file and ignores the temporary one (it
    does not end in .prom).
    """
    write_atomically(path, data, mode)


class MetricsExporter:
    """The exporter's life cycle: start() and stop() around serving, on_tick() per sample."""

    def __init__(self, listen: str | None, textfile: str | None, top_n: int = TOP_APPS) -> None:
        _require_prometheus_client()  # fail at startup, not at the first scrape
        self.listen = listen
        self.textfile = textfile
        self.top_n = top_n
        self.snapshot = MetricsSnapshot()
        self.health = Health()
        self.ticks = TickHistogram()
        self._accountant = Accountant(top_n=top_n)
        self._registry: Any = None
        self._http: Any = None
        self._http_thread: threading.Thread | None = None
        self._last_error: str | None = None
        # The mode open() would give a new file under our umask (0644 under
        # the usual 022, 0600 under systemd's UMask=0077): what the textfile
        # had before it was written through mkstemp (always 0600).
        umask = os.umask(0o022)
        os.umask(umask)
        self._file_mode = 0o666 & ~umask

    @classmethod
    def from_config(cls, config: Config) -> "MetricsExporter | None":
        """An exporter if the config asks for one, else None (ConfigError: library missing)."""
        if not config.metrics_listen and not config.metrics_textfile:
            return None
        return cls(config.metrics_listen, config.metrics_textfile)

    def warnings(self) -> list[str]:
        """What `netmonctl status` should say about the exporter's settings."""
        if self.listen and not is_loopback_listen(self.listen):
            return [f"Prometheus metrics are served to other machines on {self.listen} "
                    "(metrics_listen is not a loopback address)"]
        return []

    def start(self, backend: str, health: Health | None = None) -> None:
        """Register the collectors and start the HTTP server (OSError if the port
        is taken, ConfigError if the textfile cannot be written safely)."""
        from prometheus_client import CollectorRegistry

        self.snapshot = MetricsSnapshot(backend=backend)
        if health is not None:
            self.health = health
        # Our own registry: what this daemon measures, and the process
        # metrics of the default one (not its python_ ones).
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(NetmonCollector(self))
        self._registry.register(HealthCollector(self))
        register_process_collector(self._registry)
        if self.textfile:
            problem = textfile_problem(self.textfile)
            if problem is not None:
                raise ConfigError(f"metrics_textfile {self.textfile}: {problem}")
        if self.listen:
            host, port = split_listen(self.listen)
            try:
                # Imported here: http.server pulls in email, html, mimetypes and
                # socketserver, 2.3 MB of RSS a daemon without --metrics-listen
                # never uses.
                from .metrics_http import BoundedHTTPServer

                self._http = BoundedHTTPServer(host, port, self._registry, MAX_CONNECTIONS, REQUEST_TIMEOUT)
            except OSError as exc:
                raise OSError(exc.errno, f"metrics_listen {self.listen}: {exc.strerror or exc}") from None
            self._http_thread = threading.Thread(target=self._http.serve_forever, name="metrics-http",
                                                 daemon=True)
            self._http_thread.start()
            log.info("serving Prometheus metrics on http://%s/metrics (at most %d connections at once)",
                     self.listen, MAX_CONNECTIONS)
            if not is_loopback_listen(self.listen):
                log.warning("metrics_listen %s accepts connections from other machines: the metrics "
                            "name the apps of every user; listen on 127.0.0.1 unless that is meant",
                            self.listen)
        if self.textfile:
            self._write_textfile()
            log.info("writing Prometheus metrics to %s every tick", self.textfile)

    def on_tick(self, state: "MonitorState", backend: str, health: Health | None = None) -> None:
        """After each tick, on the event loop: new snapshot, textfile rewritten."""
        if health is not None:
            self._set_health(health)
        try:
            self.snapshot = self._accountant.update(state, backend)
        except Exception:  # noqa: BLE001 - metrics must never stop sampling
            self._log_once("metrics update failed", exc_info=True)
            return
        if self.textfile:
            self._write_textfile()

    def on_health(self, health: Health) -> None:
        """Sampling paused or resumed, interval changed: between ticks, so the
        textfile (not rewritten while paused) is brought up to date now."""
        self._set_health(replace(health, tick_seconds=None))
        if self.textfile and self._registry is not None:
            self._write_textfile()

    def _set_health(self, health: Health) -> None:
        if health.tick_seconds is not None:
            self.ticks = self.ticks.observe(health.tick_seconds)
        self.health = health

    def _write_textfile(self) -> None:
        from prometheus_client.exposition import generate_latest

        path = self.textfile
        if path is None:
            return
        try:
            problem = textfile_problem(path)  # the directory may change under us
            if problem is not None:
                raise OSError(problem)
            write_textfile(path, generate_latest(self._registry), self._file_mode)
        except OSError as exc:
            self._log_once(f"cannot write metrics textfile {self.textfile}: {exc.strerror or exc}")
        else:
            self._last_error = None

    def _log_once(self, message: str, exc_info: bool = False) -> None:
        # Once per distinct problem, not once per tick.
        if message != self._last_error:
            log.error("%s", message, exc_info=exc_info)
            self._last_error = message

    def stop(self) -> None:
        """Stop the HTTP server (the textfile stays: its mtime tells it is stale)."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            if self._http_thread is not None:
                self._http_thread.join(5)
            self._http = self._http_thread = None
