"""`netmonctl fleet`: every machine's netmond at a glance, over ssh.

    netmonctl fleet add nas ssh://admin@nas.lan --tag home
    netmonctl fleet                 # one row per host: status, last seen, traffic
    netmonctl fleet --watch         # the same, refreshed live
    netmonctl -H nas conns          # drill into one host: any command works

Hosts live in hosts.toml and "last seen" in fleet.json (netmonctl.fleetfile).
Each poll is `hello` + `stats` through netmonctl.transport, with
BatchMode=yes (a poll never prompts), a timeout per answer, at most one poll
in flight per host, a bounded pool of them in parallel, and ssh connection
sharing (ControlMaster/ControlPersist under ~/.cache/netmon/) unless the
user's own ssh config already sets it, so `--watch` costs one ssh login per
host, not one per refresh.

Statuses (STATUS maps each failure kind of common.errors to one):
    ONLINE       the daemon answered
    NO_DAEMON    the host answered, netmond is not running there
    AUTH_FAILED  ssh could not authenticate (our key refused, or the host's key
                 unknown or changed), or the remote daemon refused our user
    OFFLINE      unreachable: refused, timed out, no route, unknown host name
    UNKNOWN      anything else (netmonctl missing remotely, ...); see the hint
"""

from __future__ import annotations

import hashlib
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import click

from common import __version__, api
from common.errors import FailureKind, NetmonError, failure_kind
from common.units import human_duration

from .. import render
from ..options import output_options
from ..render import Column
from ..session import Settings, pass_settings

if TYPE_CHECKING:  # pragma: no cover
    from ..transport import SSHChildren

#: A failed poll's status, by failure kind (any other kind: UNKNOWN).
STATUS = {
    FailureKind.NO_DAEMON: "NO_DAEMON",
    FailureKind.OFFLINE: "OFFLINE",
    FailureKind.TIMEOUT: "OFFLINE",
    FailureKind.AUTH: "AUTH_FAILED",
    FailureKind.HOST_KEY: "AUTH_FAILED",
    FailureKind.ACCESS_DENIED: "AUTH_FAILED",
    FailureKind.UNTRUSTED: "AUTH_FAILED",
}
_STATUS_COLORS = {
    "ONLINE": "green",
    "OFFLINE": "red",
    "AUTH_FAILED": "magenta",
    "NO_DAEMON": "yellow",
    "UNKNOWN": "yellow",
}
#: Polls running at once, whatever the number of hosts.
DEFAULT_PARALLEL = 8
#: Seconds an idle shared ssh connection stays up after the last poll.
CONTROL_PERSIST = 60
#: Longest ControlPath that works: a Unix socket path (104 bytes on macOS,
#: with its NUL), less the 17-character suffix ssh adds while creating it.
MAX_CONTROL_PATH = 104 - 1 - 17


# -- one host ----------------------------------------------------------------------


@dataclass
class HostStatus:
    """What one poll found; `to_json()` is the --json row."""

    name: str
    url: str
    tags: tuple[str, ...] = ()
    status: str = "UNKNOWN"
    last_seen: float | None = None
    connections: int | None = None
    upload_speed: float | None = None
    download_speed: float | None = None
    top_app: str | None = None
    version: str | None = None
    error: str | None = None
    hints: list[str] = field(default_factory=list)
    checked_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "tags": list(self.tags),
            "status": self.status,
            "last_seen": self.last_seen,
            "connections": self.connections,
            "upload_speed": self.upload_speed,
            "download_speed": self.download_speed,
            "top_app": self.top_app,
            "version": self.version,
            "error": self.error,
            "hints": list(self.hints),
            "checked_at": self.checked_at,
        }


def classify(exc: BaseException, timeout: float) -> tuple[str, str, list[str]]:
    """(status, error message, hints) for a failed poll."""
    kind = failure_kind(exc)
    hints = list(exc.hints or []) if isinstance(exc, NetmonError) else []
    status = "UNKNOWN" if kind is None else STATUS.get(kind, "UNKNOWN")
    if kind is FailureKind.TIMEOUT:
        return status, f"no answer within {timeout:g}s", hints
    return status, str(exc) or type(exc).__name__, hints


class ConnectionSharing:
    """ssh ControlMaster options per host, unless the user's ssh config shares already.

    Asking `ssh -G` (the effective config, nothing is contacted) once per
    host tells whether ~/.ssh/config sets ControlMaster or ControlPath for it;
    if so we leave it alone.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._known: dict[Any, list[str]] = {}
        self._lock = threading.Lock()

    def options(self, target: Any) -> list[str]:
        if not self.enabled or target.scheme != "ssh":
            return []
        with self._lock:
            if target not in self._known:
                self._known[target] = self._decide(target)
            return self._known[target]

    def _decide(self, target: Any) -> list[str]:
        from common.paths import cache_dir

        from ..transport import ssh_command, ssh_destination_args

        directory = cache_dir()
        # One master per hosts.toml entry, named by a digest of how we call
        # ssh for it. ssh's own %C (host, port, user) would let two entries
        # for one user@host with different keys share the first one's login.
        entry_id = repr((ssh_command(), target.host, target.user, target.port, target.ssh_options))
        path = os.path.join(directory, "ssh-" + hashlib.sha256(entry_id.encode()).hexdigest()[:20])
        if len(path) > MAX_CONTROL_PATH:
            return []
        try:
            out = subprocess.run(
                [*ssh_command(), "-G", *ssh_destination_args(target), "--", target.host],
                capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            return []
        if out.returncode != 0:
            return []
        settings = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
        if settings.get("controlmaster", "false") != "false" or settings.get("controlpath", "none") != "none":
            return []  # the user's own sharing wins
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError:
            return []
        return [
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={path}",
            "-o", f"ControlPersist={CONTROL_PERSIST}",
        ]


def poll_host(entry: Any, timeout: float, sharing: ConnectionSharing,
              children: SSHChildren | None = None) -> HostStatus:
    """Poll one host: hello + stats. Never raises; failures become a status.
    Its ssh is noted in `children`, if given."""
    from ..transport import open_client

    row = HostStatus(entry.name, entry.url, entry.tags, checked_at=time.time())
    try:
        target = entry.target()
        extra = ["-o", "BatchMode=yes", *sharing.options(target)] if target.scheme == "ssh" else []
        with open_client(target, timeout, extra, children) as client:
            # `hello` by hand: Client.hello() would warn about a version
            # mismatch on stderr, and here the version is a column.
            info = client.call(api.HELLO, {"client_version": __version__})
            stats = client.stats()
    except Exception as exc:  # noqa: BLE001 - any failure is this host's status, not ours
        row.status, row.error, row.hints = classify(exc, timeout)
        return row
    row.status = "ONLINE"
    row.last_seen = time.time()
    row.version = info.get("version")
    row.connections = stats.get("active_connections")
    row.upload_speed = stats.get("total_upload_speed")
    row.download_speed = stats.get("total_download_speed")
    row.top_app = stats.get("top_app")
    return row


class Poller:
    """Polls hosts on a bounded pool of worker threads, never two polls of one host at once.

    The workers are daemon threads: Ctrl-C ends netmonctl at once instead of
    waiting for slow hosts, and close() ends the ssh of every poll in flight
    (nothing else would end one whose host stalls).
    """

    def __init__(self, entries: Iterable[Any], timeout: float, parallel: int, share: bool = True) -> None:
        self.entries = list(entries)
        self.timeout = timeout
        from ..transport import SSHChildren

        self.sharing = ConnectionSharing(share)
        self.children = SSHChildren()
        self._work: queue.Queue[Any] = queue.Queue()
        self._results: queue.Queue[HostStatus] = queue.Queue()
        self._in_flight: set[str] = set()
        self._workers = max(1, min(parallel, len(self.entries)))
        for i in range(self._workers):
            threading.Thread(target=self._worker, name=f"fleet-poll-{i}", daemon=True).start()

    def _worker(self) -> None:
        while True:
            entry = self._work.get()
            if entry is None:
                return
            self._results.put(poll_host(entry, self.timeout, self.sharing, self.children))

    def submit_due(self) -> None:
        """Queue a poll of every host that has none queued or running."""
        for entry in self.entries:
            if entry.name not in self._in_flight:
                self._in_flight.add(entry.name)
                self._work.put(entry)

    def collect(self, wait: float | None) -> list[HostStatus]:
        """Results that are ready, waiting up to `wait` (None: for ever) for the first one."""
        if not self._in_flight:
            return []
        out = []
        try:
            out.append(self._results.get(timeout=wait))
            while True:
                out.append(self._results.get_nowait())
        except queue.Empty:
            pass
        for res in out:
            self._in_flight.discard(res.name)
        return out

    @property
    def busy(self) -> bool:
        """True while some poll is queued or running."""
        return bool(self._in_flight)

    def close(self) -> None:
        """End the polls in flight (their ssh) and let the workers end."""
        for _ in range(self._workers):
            self._work.put(None)
        self.children.end_all()


# -- output ------------------------------------------------------------------------


def _ago(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "never"
    age = now - timestamp
    return "now" if age < 2 else f"{human_duration(age)} ago"


def _columns(now: float) -> tuple[Column, ...]:
    return (
        Column("NAME", render.value_of("name")),
        Column("STATUS", render.value_of("status"), color=lambda s: _STATUS_COLORS.get(s)),
        Column("LAST SEEN", render.value_of("last_seen"), fmt=lambda t: _ago(t, now), align="right"),
        Column("CONNS", render.value_of("connections"), align="right", drop=2),
        Column("UP", render.value_of("upload_speed"), fmt=render.rate, align="right"),
        Column("DOWN", render.value_of("download_speed"), fmt=render.rate, align="right"),
        Column("TOP APP", render.value_of("top_app"), fmt=render.safe, drop=3),
        Column("VERSION", render.value_of("version"), drop=4),
    )


def hosts_table(rows: list[dict[str, Any]], settings: Settings, now: float) -> str:
    """The table, then one line per host that is not online, with its fix-it hint.

    Errors carry remote stderr and top_app a remote process name: both go
    through render.printable, so no remote text can reprogram the terminal.
    """
    text = render.table(rows, _columns(now), color=settings.color, width=settings.width)
    notes = []
    for row in rows:
        if row["status"] != "ONLINE" and row.get("error"):
            notes.append(f"{row['name']}: {render.printable(row['error'])}")
            if row.get("hints"):
                notes.append(f"  {render.printable(row['hints'][-1])}")
    return text + ("\n\n" + "\n".join(notes) if notes else "")


# -- the commands --------------------------------------------------------------------


def _load(tags: tuple[str, ...]) -> list[Any]:
    from ..fleetfile import load_hosts

    hosts = load_hosts()  # FleetFileError: a usage error (exit 2)
    entries = list(hosts.values())
    if tags:
        entries = [e for e in entries if set(tags) & set(e.tags)]
    return entries


def _merge(results: dict[str, HostStatus], entries: list[Any], seen: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in hosts.toml order; hosts not polled yet are UNKNOWN; last_seen from fleet.json."""
    rows = []
    for entry in entries:
        res = results.get(entry.name) or HostStatus(entry.name, entry.url, entry.tags, error=None)
        row = res.to_json()
        if row["last_seen"] is None:
            row["last_seen"] = seen.get(entry.name, {}).get("last_seen")
        rows.append(row)
    return rows


def _remember(results: Iterable[HostStatus], seen: dict[str, dict[str, Any]]) -> bool:
    """Note ONLINE hosts' last_seen in `seen`; True if anything changed."""
    changed = False
    for res in results:
        if res.status == "ONLINE" and res.last_seen is not None:
            seen[res.name] = {**seen.get(res.name, {}), "last_seen": res.last_seen}
            changed = True
    return changed


def _save(seen: dict[str, dict[str, Any]]) -> None:
    from ..fleetfile import save_state

    try:
        save_state(seen)
    except OSError as exc:  # the table matters more than the state file
        click.echo(f"netmonctl: warning: cannot save fleet state: {exc}", err=True)


@click.group(invoke_without_command=True)
@click.option("--watch", is_flag=True, help="Refresh live until Ctrl-C.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Only hosts with this tag (repeatable: any of them).")
@click.option("--interval", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
              metavar="SECONDS", help="With --watch: seconds between polls of a host.")
@click.option("--host-timeout", type=click.FloatRange(min=0.5), default=15.0, show_default=True,
              metavar="SECONDS", help="How long one host may take to answer.")
@click.option("--parallel", type=click.IntRange(min=1, max=64), default=DEFAULT_PARALLEL, show_default=True,
              metavar="N", help="Hosts polled at once.")
@click.option("--no-share", is_flag=True, help="Do not share ssh connections between polls (ControlMaster).")
@output_options(json_help="Print the hosts as JSON (same as --format json).")
@click.pass_context
def fleet(ctx: click.Context, watch: bool, tags: tuple[str, ...], interval: float,
          host_timeout: float, parallel: int, no_share: bool) -> None:
    """Every host's netmond: status, last seen, connections, speeds.

    Hosts are listed in ~/.config/netmon/hosts.toml (netmonctl fleet add).
    Statuses: ONLINE, OFFLINE, AUTH_FAILED, NO_DAEMON, UNKNOWN; lines under
    the table say what to do about the others. Drill into one host with
    `netmonctl -H NAME conns` (or apps, watch, top, ...).

    \b
    Examples:
      netmonctl fleet add nas ssh://admin@nas.lan --tag home
      netmonctl fleet --tag home
      netmonctl fleet --watch
      netmonctl fleet --json | jq '.hosts[] | select(.status != "ONLINE") | .name'
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..fleetfile import hosts_path, load_state

    settings = ctx.ensure_object(Settings)
    entries = _load(tags)
    if not entries:
        if settings.format == "table":
            click.echo(f"no hosts{' with that tag' if tags else ''} in {hosts_path()}; "
                       "add one with: netmonctl fleet add NAME ssh://[user@]host", err=True)
        else:
            render.emit(settings.format, {"hosts": []}, rows_key="hosts", human=lambda: "")
        return
    from ..transport import ssh_command

    ssh_command()  # a NETMON_SSH_COMMAND that cannot be parsed is exit 2 here, not in a worker
    seen = load_state()
    poller = Poller(entries, host_timeout, parallel, share=not no_share)
    try:
        if watch:
            _watch(poller, entries, seen, settings, interval)
        else:
            poller.submit_due()
            results: dict[str, HostStatus] = {}
            while poller.busy:
                for res in poller.collect(None):
                    results[res.name] = res
            if _remember(results.values(), seen):
                _save(seen)
            rows = _merge(results, entries, seen)
            now = time.time()
            render.emit(settings.format, {"hosts": rows}, rows_key="hosts",
                        human=lambda: hosts_table(rows, settings, now))
    finally:
        poller.close()


def _watch(poller: Poller, entries: list[Any], seen: dict[str, dict[str, Any]],
           settings: Settings, interval: float) -> None:
    """Poll every `interval` s (a slow host is not polled twice at once) and redraw."""
    results: dict[str, HostStatus] = {}
    live = settings.format == "table" and sys.stdout.isatty()
    try:
        while True:
            poller.submit_due()
            round_end = time.monotonic() + interval
            while True:
                left = round_end - time.monotonic()
                # A script reading the stream gets no line until every host
                # has answered once (each poll is bounded by --timeout): a
                # first round of "UNKNOWN" would only mean "not polled yet".
                first_answers_due = not live and poller.busy and any(e.name not in results for e in entries)
                if left <= 0 and not first_answers_due:
                    break
                fresh = poller.collect(min(1.0, left) if left > 0 else 0.2)
                for res in fresh:
                    results[res.name] = res
                if _remember(fresh, seen):
                    _save(seen)
                if live:  # redraw as results come in, and each second for "last seen"
                    rows = _merge(results, entries, seen)
                    click.clear()
                    click.echo(time.strftime("%H:%M:%S ") + f"every {interval:g}s, Ctrl-C to quit\n")
                    click.echo(hosts_table(rows, settings, time.time()))
            if not live:
                rows = _merge(results, entries, seen)
                if settings.format == "json":
                    click.echo(render.to_ndjson([{"timestamp": time.time(), "hosts": rows}]))
                else:
                    render.emit(settings.format, {"hosts": rows}, rows_key="hosts",
                                human=lambda: hosts_table(rows, settings, time.time()) + "\n")
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@fleet.command("ls")
@output_options(json_help="Print the hosts as JSON (same as --format json).")
@pass_settings
def ls(settings: Settings) -> None:
    """List the hosts of hosts.toml (no polling)."""
    entries = _load(())
    rows = [e.to_json() for e in entries]
    columns = (
        Column("NAME", render.value_of("name")),
        Column("URL", render.value_of("url")),
        Column("TAGS", render.value_of("tags"), fmt=lambda v: ",".join(v) or "-"),
        Column("SOCKET", render.value_of("socket"), drop=2),
        Column("REMOTE COMMAND", render.value_of("remote_command"), drop=1),
    )
    from ..fleetfile import hosts_path

    render.emit(settings.format, {"hosts": rows}, rows_key="hosts",
                human=lambda: render.table(rows, columns, color=settings.color, width=settings.width,
                                           empty=f"no hosts in {hosts_path()}"))


@fleet.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--socket", "socket_path", metavar="PATH", help="Daemon socket on that host (overrides the URL's path).")
@click.option("--remote-command", metavar="CMD",
              help="How to run netmonctl there when it is not on the non-login PATH, e.g. /opt/netmon/bin/netmonctl.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="A tag for --tag filters (repeatable).")
@click.option("--ssh-option", "ssh_options", multiple=True, metavar="ARG",
              help="An extra ssh argument, e.g. --ssh-option=-oProxyJump=bastion (repeatable).")
def add(name: str, url: str, socket_path: str | None, remote_command: str | None,
        tags: tuple[str, ...], ssh_options: tuple[str, ...]) -> None:
    """Add host NAME at URL (ssh://[user@]host[:port][/socket] or unix:///path)."""
    from ..fleetfile import FleetFileError, HostEntry, add_host, entry_from_table, hosts_path

    table: dict[str, Any] = {"url": url, "tags": list(tags), "ssh_options": list(ssh_options)}
    if socket_path is not None:
        table["socket"] = socket_path
    if remote_command is not None:
        table["remote_command"] = remote_command
    try:
        entry: HostEntry = entry_from_table(name, table, name)
    except FleetFileError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint="NAME/URL") from None
    add_host(entry)
    click.echo(f"added {name} ({entry.target().url}) to {hosts_path()}")


@fleet.command("rm")
@click.argument("name")
def rm(name: str) -> None:
    """Remove host NAME from hosts.toml."""
    from ..fleetfile import forget_state, hosts_path, remove_host

    remove_host(name)
    forget_state(name)
    click.echo(f"removed {name} from {hosts_path()}")
