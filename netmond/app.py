"""Wires backend, state and server together; `run(config)` is the daemon.

Importable and runnable from tests: `run()` blocks until `Daemon.request_stop()`
(thread-safe) or, in the main thread, SIGTERM/SIGINT: the tick in progress
finishes, clients are closed, the socket file is removed, exit status 0.
SIGHUP reloads the config file and logs what changed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import signal
import socket
import sys
import os
import threading
import time
from collections.abc import Awaitable, Iterable
from typing import Any, Callable, cast

import psutil

from common import api

from . import __version__, handlers, listener
from .backends.base import Backend, Snapshot
from .cadence import Cadence
from .gcpause import GcPacer
from .config import Config, ConfigError, load_config
from .metrics import Health, MetricsExporter
from .peercred import resolve_group
from .resolver import ReverseResolver
from .selfcost import RECORD_EVERY, CpuWindow
from .server import Policy, Server, pack_for
from .state import ConnRow, MonitorState
from .usage.recorder import UsageRecorder, UsageUnavailable

log = logging.getLogger("netmond")

# How long a stop waits for the tick in progress (launchd's default ExitTimeOut
# is 20 s, systemd's TimeoutStopSec 90 s).
_STOP_GRACE = 10.0
# Seconds a thread may hold the GIL while another waits for it (Python's
# default is 0.005); see Daemon.serve.
_SWITCH_INTERVAL = 0.001


def make_backend(config: Config) -> tuple[Backend, list[str]]:
    """The backend the config asks for; 'auto' picks the best that works here.

    Returns (backend, warnings): falling back to the portable backend is
    never silent, `status` shows why.
    """
    choice = config.backend
    warnings: list[str] = []
    if choice in ("auto", "linux") and sys.platform.startswith("linux"):
        try:
            from .backends import linux

            if linux.netlink_available():
                return linux.LinuxBackend(ebpf=config.ebpf), warnings
            reason = "netlink sock_diag unavailable"
        except Exception as exc:  # noqa: BLE001 - any failure means fall back
            reason = f"{type(exc).__name__}: {exc}"
        if choice == "linux":
            raise ConfigError(f"backend linux unavailable here: {reason}")
        warnings.append(f"kernel counters unavailable ({reason}); using the portable backend")
    elif choice == "linux":
        raise ConfigError("backend linux only runs on Linux")
    if choice == "darwin" or (choice == "auto" and sys.platform == "darwin"):
        from .backends.darwin import DarwinBackend

        return DarwinBackend(interval=config.interval), warnings
    from .backends.portable import PortableBackend

    return PortableBackend(), warnings


class Daemon:
    """The running daemon: one backend, one state, one server, one sampler.

    Handlers see it through handlers.DaemonInterface (the "-- what handlers
    see" methods below); the server sees only its Policy and dispatch table.
    """

    def __init__(
        self,
        config: Config,
        backend: Backend | None = None,
        *,
        config_path: str | None = None,
        cli_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        # What SIGHUP re-reads: the same file, with the same flags on top.
        self.config_path = config_path
        self.cli_overrides = dict(cli_overrides or {})
        self.warnings: list[str] = []
        if backend is None:
            backend, self.warnings = make_backend(config)
        self.backend = backend
        # Remote names, looked up off the sampling path (None: resolve = false).
        self.resolver: ReverseResolver | None = ReverseResolver() if config.resolve else None
        self.state = MonitorState(
            interval=config.interval,
            history_seconds=config.history_seconds,
            closed_retention=config.closed_retention,
            include_loopback=config.include_loopback,
            names=self.resolver.name if self.resolver is not None else None,
        )
        # Read by the server at each use; reload() updates it in place.
        self.policy = Policy(
            max_clients=config.max_clients,
            client_idle_timeout=config.client_idle_timeout,
            subscriber_queue=config.subscriber_queue,
            control_gid=_control_gid(config.socket_group),
        )
        self.monitoring = True
        self.started_mono = time.monotonic()
        self.last_tick_seconds: float | None = None
        self.socket_path = config.socket_path()
        self.server: Server | None = None
        self.self_process = psutil.Process()
        # CPU over a fixed recent window, the same for every caller (status).
        self.cpu_window = CpuWindow()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sampler")
        # When the next tick is due (late ticks, back-off, recovery).
        self.cadence = Cadence(config.interval)
        self._logged_backoff = config.interval
        # Full garbage-collector passes only every few minutes (gcpause).
        self._gc = GcPacer()
        # Set while no tick is changing the state (see state_quiet).
        self._quiet: asyncio.Event | None = None
        self._sample_errors = 0
        self.ready = threading.Event()
        # Prometheus exporter, only when configured (ConfigError: library missing).
        self.metrics = MetricsExporter.from_config(config)
        if self.metrics is not None:
            self.warnings.extend(self.metrics.warnings())
        # Usage over days: fed by the state's byte deltas, written by its own thread.
        self.usage_recorder: UsageRecorder | None = None
        if config.store_usage:
            self.usage_recorder = UsageRecorder(
                config.data_path(), retention_days=config.usage_retention_days, gid=self.policy.control_gid,
                write_every=config.usage_write_interval,
            )
            self.state.usage_sink = self.usage_recorder.meter
            self.usage_recorder.meter.names = self.resolver.name if self.resolver is not None else None

    # -- what handlers see (handlers.DaemonInterface; on the loop) ------------
    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def interval(self) -> float:
        return self.state.interval

    def capabilities(self) -> list[str]:
        return self.backend.capabilities() + (["usage"] if self.usage_recorder is not None else [])

    def usage(self, query: dict[str, Any]) -> Awaitable[list[api.UsageRow]]:
        # The server calls the usage handler while no tick runs (state_quiet):
        # the meter's batch is taken here, on the loop, never mid-tick.
        rows = asyncio.wrap_future(self._usage().query(**query))
        return cast(Awaitable[list[api.UsageRow]], rows)

    def forget_usage(self, before: float | None) -> Awaitable[int]:
        return asyncio.wrap_future(self._usage().forget(before))

    def _usage(self) -> UsageRecorder:
        if self.usage_recorder is None:
            raise UsageUnavailable("usage is not stored by this daemon (store_usage = false)")
        return self.usage_recorder

    def effective_interval(self) -> float | None:
        return self.backend.status().effective_interval

    def connections(self, include_closed: bool) -> Iterable[ConnRow]:
        return self.state.connections(include_closed)

    def app_usage(self, rows: Iterable[ConnRow] | None = None) -> list[api.AppUsage]:
        return self.state.app_usage() if rows is None else self.state.app_usage_of(rows)

    def remote_usage(self, rows: Iterable[ConnRow], by_port: bool = False) -> list[api.RemoteUsage]:
        return self.state.remote_usage(rows, by_port=by_port)

    def bandwidth_history(self, seconds: float) -> list[api.HistoryPoint]:
        return self.state.bandwidth_history(seconds, time.time())

    def stats(self) -> api.Stats:
        return self.state.stats(uptime=time.monotonic() - self.started_mono, monitoring=self.monitoring)

    def clear(self) -> None:
        self.state.clear()

    def status(self) -> api.Status:
        """The daemon's health (the `status` method)."""
        bst = self.backend.status()
        warnings = list(self.warnings) + list(bst.warnings)
        if self.usage_recorder is not None:
            warnings.extend(self.usage_recorder.warnings())
        if not bst.attribution_complete and not any("attribut" in w for w in warnings):
            warnings.append("process attribution is partial: some sockets are shown without pid")
        cadence_warning = self.cadence.warning()
        if cadence_warning is not None:
            warnings.append(cadence_warning)
        if bst.events_lost:
            warnings.append(
                f"{bst.events_lost} connection-close events were lost (kernel buffer overflow): "
                "bytes of those short-lived connections are not counted"
            )
        try:
            rss = self.self_process.memory_info().rss
        except psutil.Error:
            rss = None
        state = self.state
        counts = state.connection_counts()
        mono = time.monotonic()
        return {
            "monitoring": self.monitoring,
            "interval": state.interval,
            # What the OS source really samples at (nettop: whole seconds), or
            # the interval the daemon backed off to (ticks longer than interval).
            "effective_interval": max(bst.effective_interval if bst.effective_interval is not None
                                      else state.interval, self.cadence.current),
            "backed_off": self.cadence.backed_off,
            "uptime": mono - self.started_mono,
            "backend": self.backend.name,
            "per_socket_bytes": self.backend.per_socket_bytes,
            "privileged": bst.privileged,
            "attribution_complete": bst.attribution_complete,
            "root_mode": bst.root_mode,
            "events_lost": bst.events_lost,
            "warnings": warnings,
            "cpu_percent": self.cpu_window.percent(),
            "cpu_window_seconds": self.cpu_window.covered_seconds(),
            "rss_bytes": rss,
            "sample_age": None if state.last_mono is None else mono - state.last_mono,
            "last_tick_seconds": self.last_tick_seconds,
            "ticks": state.ticks,
            "connections": counts["connections"],
            "listeners": counts["listeners"],
            "time_wait": counts["time_wait"],
            "sockets": counts["sockets"],
            "closed_retained": len(state.closed),
            "clients": self.server.client_count if self.server else 0,
            "socket": self.socket_path,
            "version": __version__,
            "pid": os.getpid(),
            "history_seconds": state.history_seconds,
            "include_loopback": state.include_loopback,
            "resolve": self.resolver is not None,
            "usage_store": self.usage_recorder.status() if self.usage_recorder is not None else None,
        }

    def set_monitoring(self, on: bool) -> None:
        if on and not self.monitoring:
            self.state.rebaseline()  # bytes moved while stopped are not counted
            self._wake_sampler()
        self.monitoring = on
        log.info("monitoring %s", "started" if on else "stopped")
        if self.metrics is not None:
            self.metrics.on_health(self._health())

    async def state_quiet(self) -> None:
        """Return when no tick is changing the state: a tick's state update
        runs on the sampler thread, and the handlers that read the state
        (all but hello, status and (un)subscribe: handlers.ANSWERED_DURING_TICK)
        run after it. The caller must read without awaiting in between (a
        tick starts from the loop, so none can start meanwhile)."""
        quiet = self._quiet
        while quiet is not None and not quiet.is_set():
            await quiet.wait()

    def set_interval(self, interval: float) -> None:
        old = self.state.interval
        self.state.set_interval(interval)
        self.cadence.set_interval(interval)
        self.backend.set_interval(interval)
        self._wake_sampler()
        log.info("interval changed from %gs to %gs", old, interval)
        if self.metrics is not None:
            self.metrics.on_health(self._health())

    def _health(self, tick_seconds: float | None = None) -> Health:
        """What the Prometheus exporter says about the daemon itself."""
        last = self.state.last_mono
        wall = None if last is None else time.time() - (time.monotonic() - last)
        try:
            lost = self.backend.status().events_lost
        except Exception:  # noqa: BLE001 - a backend's status must not break a tick
            lost = self.metrics.health.events_lost if self.metrics is not None else 0
        return Health(
            sampling=self.monitoring, interval=self.state.interval, last_sample_mono=last,
            last_sample_wall=wall, tick_seconds=tick_seconds, events_lost=lost,
            sample_errors=self._sample_errors,
        )

    def use_resolver(self, resolver: ReverseResolver | None) -> None:
        """Name remotes with `resolver` from now on (None: no names); the old one stops."""
        if self.resolver is not None:
            self.resolver.close()
        self.resolver = resolver
        self.state.set_names(resolver.name if resolver is not None else None)
        if self.usage_recorder is not None:
            self.usage_recorder.meter.names = resolver.name if resolver is not None else None

    def _wake_sampler(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def request_stop(self) -> None:
        """Ask the daemon to shut down; safe from any thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def reload(self) -> None:
        """SIGHUP: re-read the config file; apply what can change live, log it.

        All or nothing: a file that does not validate (or names an unknown
        group) changes nothing. Settings that only a restart can change
        (socket, backend, metrics) are reported and left as they are.
        """
        try:
            new = load_config(self.config_path, **self.cli_overrides)
            new_gid = _control_gid(new.socket_group)
        except ConfigError as exc:
            log.error("reload failed, keeping the running config: %s", exc)
            return
        old = self.config
        # The interval may have been changed over RPC: compare with what runs.
        current = dataclasses.replace(old, interval=self.state.interval)
        changed = []
        for f in dataclasses.fields(Config):
            before, after = getattr(current, f.name), getattr(new, f.name)
            if before == after:
                continue
            if f.name in _RESTART_ONLY:
                log.warning("reload: %s changed in the config file; restart netmond to apply it",
                            f.name)
                setattr(new, f.name, before)  # status keeps telling the truth
                continue
            changed.append(f"{f.name} {_show(before)} -> {_show(after)}")
        if new.interval != self.state.interval:
            self.set_interval(new.interval)
        if new.history_seconds != self.state.history_seconds:
            self.state.set_history_seconds(new.history_seconds)
        self.state.closed_retention = new.closed_retention
        self.state.set_include_loopback(new.include_loopback)
        if new.resolve != old.resolve:
            self.use_resolver(ReverseResolver() if new.resolve else None)
        if new.socket_group != old.socket_group:
            try:
                listener.apply_socket_mode(self.socket_path, new.socket_group)
                self.policy.control_gid = new_gid
            except (KeyError, OSError) as exc:
                log.error("reload: socket_group %r not applied: %s", new.socket_group, exc)
                new.socket_group = old.socket_group
                changed = [c for c in changed if not c.startswith("socket_group ")]
        if new.log_level != old.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
        # Sessions read these at each use: every client follows.
        self.policy.max_clients = new.max_clients
        self.policy.client_idle_timeout = new.client_idle_timeout
        self.policy.subscriber_queue = new.subscriber_queue
        if self.usage_recorder is not None:
            self.usage_recorder.write_every = new.usage_write_interval
            self.usage_recorder.set_retention(new.usage_retention_days)
        self.config = new
        log.info("config reloaded: %s", ", ".join(changed) or "nothing changed")

    # -- sampling ------------------------------------------------------------
    async def _sampler(self) -> None:
        assert self._stop is not None and self._wake is not None and self._quiet is not None
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            t0 = time.monotonic()
            if self.monitoring:
                try:
                    snap = await loop.run_in_executor(self._executor, self.backend.sample)
                    if self.monitoring:
                        # The state update and the encoding of notifications
                        # run on the sampler thread too, so that `status` is
                        # answered while they run (at 100,000 sockets they take
                        # a good part of a second); readers of the state wait
                        # for them (state_quiet).
                        wanted = self.server.wanted() if self.server is not None else {}
                        self._quiet.clear()
                        try:
                            packed = await loop.run_in_executor(self._executor, self._apply_and_pack, snap, wanted)
                        finally:
                            self._quiet.set()
                        del snap
                        self._publish(packed)
                except Exception:  # noqa: BLE001 - a bad tick (sample, apply, publish) must not end sampling
                    self._sample_errors += 1
                    if self._sample_errors <= 5 or self._sample_errors % 100 == 0:
                        log.exception("sample failed (%d so far)", self._sample_errors)
                self._gc.after_tick()
                self.last_tick_seconds = time.monotonic() - t0
                if self.metrics is not None:
                    self.metrics.on_tick(self.state, self.backend.name, self._health(self.last_tick_seconds))
                was_backed_off = self.cadence.backed_off
                next_at = self.cadence.after_tick(t0, time.monotonic() - t0)
                if self.cadence.backed_off != was_backed_off or (
                        was_backed_off and self.cadence.current != self._logged_backoff):
                    self._log_cadence()
            else:
                self.backend.discard_pending()
                next_at = t0 + self.state.interval
            # Due already (a late tick): at once, without waiting a full interval.
            delay = max(0.0, next_at - time.monotonic())
            if self._wake.is_set():
                delay = 0.0  # woken: sample now on the new settings
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def _log_cadence(self) -> None:
        """One line per change of the back-off: a warning when it grows."""
        grew = self.cadence.current > self._logged_backoff
        self._logged_backoff = self.cadence.current
        if not self.cadence.backed_off:
            log.info("interval %gs held again: automatic back-off over", self.cadence.interval)
        elif grew:
            log.warning("%s", self.cadence.warning())
        else:
            log.info("ticks are faster: sampling every %gs (interval %gs)", self.cadence.current,
                     self.cadence.interval)

    async def _write_usage(self) -> None:
        """Hand the counted usage to the store's thread every usage_write_interval,
        between ticks: the meter is filled by the state update on the sampler
        thread, and taken (a dict swap) on the loop while none runs."""
        assert self.usage_recorder is not None
        while True:
            await asyncio.sleep(self.usage_recorder.write_every)
            await self.state_quiet()
            self.usage_recorder.flush()  # no await since state_quiet: no tick began

    async def _record_cost(self) -> None:
        """Record the daemon's CPU time every second, whatever the interval."""
        while True:
            self.cpu_window.record()
            await asyncio.sleep(RECORD_EVERY)

    def _apply_and_pack(self, snap: Snapshot, wanted: dict[str, set[Any]]) -> dict[str, dict[Any, Any]]:
        """On the sampler thread: fold the snapshot into the state, then
        encode this tick's notifications, once per subscribers' filter
        (`wanted`, Server.wanted()). Rows and stats are only serialised for
        a topic someone subscribed to."""
        changes = self.state.apply(snap)
        now = time.time()
        packed: dict[str, dict[Any, Any]] = {}
        for topic, rows in ((api.CONNECTION_UPDATE, changes.updated), (api.CONNECTION_CLOSED, changes.closed)):
            if rows and topic in wanted:
                packed[topic] = pack_for(topic, {"connections": [r.to_wire(now) for r in rows]}, "connections",
                                         wanted[topic])
        if api.STATS_UPDATE in wanted:
            stats = self.state.stats(uptime=time.monotonic() - self.started_mono, monitoring=self.monitoring)
            packed[api.STATS_UPDATE] = pack_for(api.STATS_UPDATE, dict(stats), None, wanted[api.STATS_UPDATE])
        if changes.history_point is not None and api.BANDWIDTH_DATA in wanted:
            packed[api.BANDWIDTH_DATA] = pack_for(api.BANDWIDTH_DATA, dict(changes.history_point), None,
                                                  wanted[api.BANDWIDTH_DATA])
        return packed

    def _publish(self, packed: dict[str, dict[Any, Any]]) -> None:
        """On the loop: queue what _apply_and_pack encoded for each subscriber."""
        server = self.server
        if server is None:
            return
        for topic, encodings in packed.items():
            server.deliver(topic, encodings)

    # -- life cycle ----------------------------------------------------------
    async def serve(self, sock: socket.socket | None = None, install_signals: bool = False) -> None:
        """Run until stopped. `sock`: an inherited listening socket, if any."""
        self._loop = asyncio.get_running_loop()
        # The sampler thread runs Python for most of a tick (parsing, the
        # state update); each time the loop's thread waits on a syscall it
        # must win the GIL back, and waits up to one switch interval for it.
        # 1 ms instead of 5 keeps `status` fast while a long tick runs.
        sys.setswitchinterval(_SWITCH_INTERVAL)
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()
        self._quiet.set()
        if install_signals:
            self.install_signal_handlers()
        file_id = None
        if sock is None:
            sock = listener.bind_unix_socket(self.socket_path, self.config.socket_group)
            file_id = listener.socket_file_id(self.socket_path)
        else:
            # The service manager owns that socket file (and removes it); we
            # only report where it is.
            name = sock.getsockname()
            if isinstance(name, str) and name:
                self.socket_path = name
            log.info("using the listening socket passed by the service manager")
        self.server = Server(handlers.bind(self), self.policy, state_gate=self.state_quiet,
                             ungated=handlers.ANSWERED_DURING_TICK)
        usage_writer = None
        try:
            if self.usage_recorder is not None:
                self.usage_recorder.start()
                usage_writer = asyncio.create_task(self._write_usage())
            self.backend.start()
            await self.server.start(sock)
            if self.metrics is not None:
                self.metrics.start(self.backend.name, self._health())
            sampler = asyncio.create_task(self._sampler())
            cost_recorder = asyncio.create_task(self._record_cost())
            log.info(
                "netmond listening on %s (backend %s, interval %gs)",
                self.socket_path, self.backend.name, self.state.interval,
            )
            self.ready.set()
            await self._stop.wait()
            log.info("stopping")
            cost_recorder.cancel()
            # Let a tick in progress finish (it is never interrupted halfway),
            # then the sampler sees the stop and ends.
            self._wake.set()
            try:
                await asyncio.wait_for(sampler, timeout=_STOP_GRACE)
            except asyncio.TimeoutError:
                log.warning("the tick in progress did not end within %gs; stopping anyway", _STOP_GRACE)
                sampler.cancel()
        finally:
            if usage_writer is not None:
                usage_writer.cancel()
            if self.usage_recorder is not None:
                # The last batch (SIGTERM), taken here on the loop, written
                # before the socket goes away.
                self.usage_recorder.flush(force=True)
                await asyncio.get_running_loop().run_in_executor(None, self.usage_recorder.close)
            if self.metrics is not None:
                self.metrics.stop()
            await self.server.close()
            self.backend.close()
            if self.resolver is not None:
                self.resolver.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._gc.close()
            sock.close()
            listener.remove_socket(self.socket_path, file_id)
            log.info("stopped")

    def install_signal_handlers(self) -> None:
        assert self._loop is not None and self._stop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._stop.set)
        self._loop.add_signal_handler(signal.SIGHUP, self.reload)


def run(
    config: Config,
    *,
    backend: Backend | None = None,
    install_signals: bool | None = None,
    on_start: Callable[[Daemon], None] | None = None,
    config_path: str | None = None,
    cli_overrides: dict[str, Any] | None = None,
) -> int:
    """Run the daemon until stopped; returns the process exit status.

    `on_start` receives the Daemon before serving (tests keep it to stop it).
    Signal handlers are installed when running in the main thread.
    `config_path` and `cli_overrides` are what a SIGHUP reload re-applies.
    """
    try:
        daemon = Daemon(config, backend, config_path=config_path, cli_overrides=cli_overrides)
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        return 1
    if on_start is not None:
        on_start(daemon)
    if install_signals is None:
        install_signals = threading.current_thread() is threading.main_thread()
    inherited = listener.inherited_socket()

    async def main() -> None:
        await daemon.serve(inherited, install_signals=install_signals)

    try:
        asyncio.run(main())
    except listener.SocketInUse as exc:
        log.error("%s", exc)
        return 1
    except (ConfigError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


# Config keys a reload cannot apply to a running daemon.
_RESTART_ONLY = frozenset({"socket", "backend", "metrics_listen", "metrics_textfile", "ebpf", "data_dir",
                           "store_usage"})


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def _control_gid(group: str | int | None) -> int | None:
    """The socket's group as a gid, or a ConfigError that names it.

    Control rights follow the socket's group: the configured one, else the
    platform default a root daemon's socket gets (macOS: admin).
    """
    if group is None:
        group = listener.default_group()
    try:
        return resolve_group(group)
    except KeyError:
        raise ConfigError(f"socket_group {group!r}: no such group") from None
