"""`netmonctl top`: the full-screen live view (curses).

The screen is drawn by netmonctl.topview.layout (pure); this module owns the
terminal, the keys and the daemon connection.

Where the data comes from, with no client polling loop:
- one LiveFeed (netmonctl.live) subscribed to stats_update and
  bandwidth_data: the daemon pushes both once per sample;
- each stats_update triggers one `apps` or `connections` call (whichever
  the view shows) on the same connection, between notifications: the daemon's
  tick drives the table refresh, and a paused screen asks for nothing.
  connection_update/closed are not subscribed: a full table per tick
  supersedes those deltas, and the daemon would serialise every changed row
  for nothing;
- on every (re)connection the sparkline is seeded with
  `bandwidth_history {seconds: 60}` and stats and the table are fetched at
  once, so the screen fills without waiting for a tick.

The loop waits in one select() on the daemon socket and stdin, so keys are
handled at once; it also wakes every REDRAW_EVERY seconds to notice a resize
and to count down to the next reconnection while the daemon is away.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from dataclasses import replace
from typing import Any, Mapping

import click

from common import api
from common.errors import UsageProblem

from .. import render
from ..options import INTERVAL_RANGE, bits_option, color_option, filter_options, numeric_option
from ..session import Settings, pass_settings
from ..topview import (
    SORT_KEYS,
    SPARK_SECONDS,
    VIEW_KEYS,
    VIEWS,
    TopModel,
    ViewState,
    layout,
    next_sort,
    scroll,
    selected_row,
    table_room,
    visible_rows,
    window,
)

#: What --sort accepts: the sort keys of both views (key s cycles through the view's own).
TOP_SORTS = tuple(dict.fromkeys(k for keys in SORT_KEYS.values() for k in keys))
NOT_A_FORMAT = "top is a screen; for JSON use `netmonctl watch --json` or `netmonctl conns --json`"
DUMB_TERMINAL = ("top needs a terminal that can move the cursor (TERM='{term}' cannot); "
                 "use `netmonctl watch` or `netmonctl conns`, or set TERM (e.g. TERM=xterm)")
NOT_A_TERMINAL = "top needs a terminal; use `netmonctl watch` or `netmonctl conns`"
DENIED = "changing the interval needs root, the daemon's user, or its group"
#: Longest wait without input, in seconds: how late a resize or the
#: reconnect countdown may show.
REDRAW_EVERY = 0.5
#: The daemon's accepted interval range (configure), for +/-.
INTERVAL_MIN, INTERVAL_MAX = INTERVAL_RANGE
MAX_FILTER_TEXT = 64
#: Ticks without a stats_update after which the screen says the daemon is silent.
SILENT_TICKS = 3
#: Connection fields the table, the sort keys and the `/` filter use: the
#: daemon skips serialising the rest, which matters with 10,000 sockets.
CONN_FIELDS = ["id", "protocol", "local_addr", "remote_addr", "remote_host", "remote_ip", "local_port", "remote_port",
               "state", "pid", "process_name", "upload_speed", "download_speed",
               "bytes_sent", "bytes_received", "duration"]


@click.command()
@filter_options
@click.option("--view", type=click.Choice(VIEWS), default="apps", show_default=True,
              help="Start with applications, connections or remote hosts (keys a / c / h).")
@click.option("--sort", "sort_field", default="speed", show_default=True, metavar="FIELD",
              type=click.Choice(TOP_SORTS),
              help="Start sorted by FIELD, one of the columns top can sort by: "
              f"{', '.join(TOP_SORTS)} (key s cycles through the view's own; a view that has not FIELD "
              "starts sorted by speed).")
@click.option("--reverse", is_flag=True, help="Start in reverse order (key r).")
@numeric_option
@color_option
@bits_option
# Not listed in --help (top has no output format), but answered with the way to get JSON.
@click.option("--json", "--format", "machine", hidden=True, is_flag=False, flag_value="json",
              expose_value=False, callback=lambda ctx, p, v: _refuse_format(v))
@pass_settings
def top(settings: Settings, flt: api.FilterMap, view: str, sort_field: str, reverse: bool,
        numeric: bool) -> None:
    """Live full-screen view of bandwidth by application, connection or remote host.

    The header shows total upload and download rates, active connections,
    the top application, the share of traffic no socket explains, and a
    sparkline of the last minute. The daemon pushes every update; filters
    apply as in `conns`.

    \b
    Keys:
      q quit            a / c / h  applications / connections / remote hosts
      s sort column     r      reverse order
      / filter by text (process, ip, name, port)
      j / k, arrows, PgUp / PgDn, Home / End   scroll
      b bits / bytes    p      pause display
      + / -  daemon interval x2 / /2 (needs control rights)
      ? help

    Remote ends show their names where the daemon knows them; -n shows
    addresses. The line above the keys is the selected row's command line (for a
    daemon on this machine); with -H the title names the host.

    Needs a terminal that can move the cursor (not TERM=dumb); for pipes and
    scripts use `watch` or `conns`.
    """
    if settings.format != "table":  # netmonctl --json top
        raise click.UsageError(NOT_A_FORMAT)
    is_tty = sys.stdout.isatty() and sys.stdin.isatty()
    if not is_tty or not _can_address_cursor():
        raise UsageProblem(NOT_A_TERMINAL if not is_tty else DUMB_TERMINAL.format(term=os.environ.get("TERM", "")))
    if sort_field not in SORT_KEYS[view]:
        sort_field = "speed"
    import curses

    app = TopApp(settings, flt, ViewState(view=view, sort=sort_field, reverse=reverse), numeric=numeric)
    app.feed.open()  # before curses: a daemon that is not there is the usual exit 3
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        curses.wrapper(app.run)  # restores the terminal on return and on any exception
    except KeyboardInterrupt:
        pass  # Ctrl-C quits like q
    finally:
        signal.signal(signal.SIGTERM, previous)
        app.feed.close()


#: Command lines kept for the detail line (the selection visits a few rows).
MAX_CMDLINES = 256
#: Longest command line kept: the detail line is one screen line anyway.
CMDLINE_CHARS = 1024


def read_cmdline(pid: int, name: str | None) -> str:
    """The command line of `pid` on this machine, if it is still the process `name`."""
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            # A reused pid, or a daemon in another pid namespace: not this row's process.
            if name and proc.name() != name and not name.startswith(proc.name()[:15]):
                return f"(pid {pid} is now {proc.name()!r}, not {name!r})"
            argv = proc.cmdline()
    except psutil.NoSuchProcess:
        return "(the process has exited)"
    except psutil.AccessDenied:
        return "(command line not readable: another user's process)"
    except (psutil.Error, OSError) as exc:
        return f"(command line unavailable: {exc})"
    if not argv:
        return f"[{name or '?'}] (no command line: a kernel thread or a zombie)"
    return " ".join(argv)[:CMDLINE_CHARS]


def describe_host(host: str) -> tuple[str, bool]:
    """(how the title names an -H target: its hosts.toml name, else its host;
    whether it is on another machine: ssh)."""
    from ..fleetfile import resolve
    from ..targets import TargetError

    try:
        target = resolve(host)
    except (TargetError, OSError, ValueError):
        return host, True
    return target.name or target.host or target.url, target.scheme != "unix"


def _can_address_cursor() -> bool:
    """Whether the terminal (TERM) can move the cursor, which a full screen needs: TERM=dumb
    cannot, and curses on it writes the whole screen onto one line."""
    import curses

    if os.environ.get("TERM", "") in ("", "dumb"):
        return False
    try:
        curses.setupterm(fd=sys.stdout.fileno())
        return bool(curses.tigetstr("cup"))
    except (curses.error, OSError, ValueError, AttributeError):
        return False


def _refuse_format(value: str | None) -> None:
    if value is not None:
        raise click.UsageError(NOT_A_FORMAT)


def _terminate(signum: int, frame: Any) -> None:
    # Unwind through curses.wrapper so that the terminal is restored on kill too.
    raise SystemExit(128 + signum)


class TopApp:
    """The controller: daemon feed -> model, keys -> view state, both -> screen."""

    def __init__(self, settings: Settings, flt: api.FilterMap, ui: ViewState, numeric: bool = False) -> None:
        from ..live import LiveFeed  # pulls in the client (msgpack)

        self.ui = ui
        self.flt = flt
        #: -n: addresses, not names (the names are not even asked for).
        self.numeric = numeric
        self.model = TopModel()
        self.frozen: TopModel | None = None  # what the screen shows while paused
        self.table_view: str | None = None  # the view whose rows the model holds
        self.stale = True  # a tick arrived since the last table fetch
        self.quit = False
        self.screen: Any = None
        self.attrs: dict[str, int] = {}
        self.no_color = settings.no_color
        self.feed = LiveFeed(settings, [api.STATS_UPDATE, api.BANDWIDTH_DATA], flt, on_connect=self._seed)
        self.model.where = self.feed.where
        self.model.host, remote = describe_host(settings.host) if settings.host else (None, False)
        #: Command lines are read here, so only for a daemon on this machine.
        self.local = not remote
        self.cmdlines: dict[tuple[int, str | None], str] = {}

    # -- daemon side ---------------------------------------------------------------
    def _seed(self, feed: Any) -> None:
        """After each (re)subscription: the last minute, stats and the table."""
        self.model.history = list(feed.request(lambda d: d.bandwidth_history(SPARK_SECONDS))["history"])
        self.model.stats = feed.request(lambda d: d.stats())
        self.model.clock = time.time()
        self._fetch_table()

    def _fetch_table(self) -> None:
        if self.ui.view == "apps":
            self.model.apps = self.feed.request(lambda d: d.apps(self.flt))["apps"]
        elif self.ui.view == "remotes":
            remotes = self.feed.request(lambda d: d.remotes(self.flt))["remotes"]
            self.model.remotes = [{**r, "hostname": None} for r in remotes] if self.numeric else remotes
        else:
            fields = [f for f in CONN_FIELDS if f != "remote_host"] if self.numeric else CONN_FIELDS
            self.model.connections = self.feed.request(
                lambda d: d.connections(self.flt, fields=fields))["connections"]
        self.table_view = self.ui.view
        self.stale = False

    def _apply(self, notes: list[Any]) -> None:
        for note in notes:
            if note.method == api.STATS_UPDATE:
                self.model.stats = note.payload
                self.model.clock = time.time()
                self.stale = True
            elif note.method == api.BANDWIDTH_DATA:
                history = self.model.history
                history.append(note.payload)
                newest = note.payload.get("timestamp") or 0
                while history and (history[0].get("timestamp") or 0) <= newest - SPARK_SECONDS:
                    history.pop(0)
            elif note.method == api.LAGGED:
                self.ui.message = (f"the display fell behind: {note.payload.get('missed', '?')} "
                                   "updates skipped")

    def _sync(self) -> None:
        """Take in what the daemon pushed; refresh the table once per tick."""
        from common.protocol import RPCError

        from ..live import CONNECTION_ERRORS

        if self.feed.connected:
            self._apply(self.feed.receive(0))
            want_table = self.stale or self.table_view != self.ui.view
            if want_table and not self.ui.paused and self.feed.connected:
                try:
                    self._fetch_table()
                except CONNECTION_ERRORS:
                    pass  # the feed marked itself lost; the status line says so
                except RPCError as exc:
                    # Say it and wait for the next tick rather than ask again at once.
                    self.stale, self.table_view = False, self.ui.view
                    self.ui.message = f"the daemon could not list {self.ui.view}: {exc.message}"
                self._apply(self.feed.receive(0))  # what arrived during the call
        if not self.feed.connected and self.feed.due_in() == 0 and self.feed.try_reopen():
            self.ui.message = "reconnected to netmond"

    def _change_interval(self, factor: float) -> None:
        from common.protocol import ACCESS_DENIED, RPCError

        from ..live import CONNECTION_ERRORS

        current = (self.model.stats or {}).get("interval")
        if not self.feed.connected or current is None:
            self.ui.message = "the daemon is not reachable"
            return
        wanted = round(min(INTERVAL_MAX, max(INTERVAL_MIN, current * factor)), 3)
        if wanted == current:
            self.ui.message = f"the interval is already {render.seconds(current)}, its limit"
            return
        try:
            result = self.feed.request(lambda d: d.configure(wanted))
        except RPCError as exc:
            self.ui.message = DENIED if exc.code == ACCESS_DENIED else f"interval not changed: {exc.message}"
            return
        except CONNECTION_ERRORS:
            return
        self.model.stats = {**(self.model.stats or {}), "interval": result["interval"]}
        self.ui.message = f"sampling interval set to {render.seconds(result['interval'])}"

    # -- keys --------------------------------------------------------------------
    def _scroll_key(self, key: str | int) -> str | None:
        """The scroll action of a key (see topview.scroll), None if it is not one."""
        import curses

        return {
            curses.KEY_DOWN: "down", "j": "down", curses.KEY_UP: "up", "k": "up",
            curses.KEY_NPAGE: "pgdn", " ": "pgdn", curses.KEY_PPAGE: "pgup",
            curses.KEY_HOME: "home", "g": "home", curses.KEY_END: "end", "G": "end",
        }.get(key)

    def _shown_model(self) -> TopModel:
        return self.frozen if self.ui.paused and self.frozen is not None else self.model

    def on_key(self, key: str | int) -> None:
        """Apply one key (a str, or a curses KEY_* int) to the view state."""
        import curses

        ui = self.ui
        if key == curses.KEY_RESIZE:
            curses.update_lines_cols()
            return
        if ui.editing_filter:
            self._edit_filter(key)
            return
        if ui.help:
            ui.help = False  # any key closes the help; q also quits
            if key not in ("q", "Q"):
                return
        ui.message = ""
        action = self._scroll_key(key)
        if action is not None:
            total = len(visible_rows(self._shown_model(), ui))
            scroll(ui, action, total, table_room(self.screen.getmaxyx()[0] if self.screen else 24))
        elif key in ("q", "Q"):
            self.quit = True
        elif key in VIEW_KEYS:
            ui.view = VIEW_KEYS[key]
            if ui.sort not in SORT_KEYS[ui.view]:
                ui.sort = "speed"
            ui.selected = ui.offset = 0
        elif key == "s":
            ui.sort = next_sort(ui.view, ui.sort)
            ui.selected = ui.offset = 0
        elif key == "r":
            ui.reverse = not ui.reverse
            ui.selected = ui.offset = 0
        elif key == "/":
            ui.editing_filter = True
            ui.selected = ui.offset = 0
        elif key == "\x1b":
            ui.filter_text = ""
        elif key == "p":
            ui.paused = not ui.paused
            self.frozen = replace(self.model, history=list(self.model.history)) if ui.paused else None
        elif key == "b":
            render.use_bits(not render.bits_shown())
        elif key in ("+", "="):
            self._change_interval(2.0)
        elif key in ("-", "_"):
            self._change_interval(0.5)
        elif key == "?":
            ui.help = True

    def _edit_filter(self, key: str | int) -> None:
        import curses

        ui = self.ui
        if key in ("\n", "\r", curses.KEY_ENTER):
            ui.editing_filter = False
        elif key == "\x1b":
            ui.filter_text, ui.editing_filter = "", False
        elif key in (curses.KEY_BACKSPACE, "\x7f", "\x08"):
            ui.filter_text = ui.filter_text[:-1]
        elif key == "\x15":  # Ctrl-U, as in a shell
            ui.filter_text = ""
        elif isinstance(key, str) and key.isprintable() and len(ui.filter_text) < MAX_FILTER_TEXT:
            ui.filter_text += key

    def _read_keys(self) -> None:
        import curses

        while not self.quit:
            try:
                key = self.screen.get_wch()
            except curses.error:
                return  # no more input (nodelay)
            self.on_key(key)

    # -- screen ------------------------------------------------------------------
    def run(self, screen: Any) -> None:
        """The main loop; curses.wrapper calls it with the screen."""
        self.screen = screen
        self._setup_curses()
        while not self.quit:
            self._draw()
            waiting: list[Any] = [sys.stdin]
            if self.feed.connected:
                waiting.append(self.feed)
                timeout = REDRAW_EVERY
                if (self.stale or self.table_view != self.ui.view) and not self.ui.paused:
                    timeout = 0  # a tick is waiting for its table
            else:
                timeout = min(REDRAW_EVERY, self.feed.due_in())
            select.select(waiting, [], [], timeout)
            self._read_keys()  # also when stdin was quiet: curses queues KEY_RESIZE itself
            self._check_size()
            if not self.quit:
                self._sync()

    # -- the detail line: the selected row's process command line ------------------------
    def _detail(self, row: Mapping[str, Any] | None) -> str:
        if row is None:
            return ""
        if "remote_ip" in row and "pid" not in row:  # a remote host: who talks to it
            who = ", ".join(str(a) for a in row.get("apps") or ()) or "processes unknown"
            return f"{row['remote_ip']} ({row.get('hostname') or 'no name known'}): {who}"
        pids = [row["pid"]] if "pid" in row else list(row.get("pids") or [])
        pid = next((p for p in pids if p is not None), None)
        if pid is None:
            return "no process known for this row (another user's? a root daemon sees every one)"
        more = f" (+{len(pids) - 1} more)" if len(pids) > 1 else ""
        if not self.local:
            return f"pid {pid}{more}: command lines are shown for a daemon on this machine only"
        return f"pid {pid}{more}: {self._cmdline(pid, row.get('process_name'))}"

    def _cmdline(self, pid: int, name: str | None) -> str:
        """pid's command line, read once per (pid, name): one /proc read per new selection."""
        key = (pid, name)
        if key not in self.cmdlines:
            if len(self.cmdlines) >= MAX_CMDLINES:
                self.cmdlines.clear()  # bounded; re-reading is cheap
            self.cmdlines[key] = read_cmdline(pid, name)
        return self.cmdlines[key]

    def _silence(self) -> float | None:
        """How long the daemon has said nothing, once that is longer than a few ticks."""
        if not self.feed.connected or self.ui.paused or self.model.clock is None:
            return None
        interval = (self.model.stats or {}).get("interval") or 1.0
        quiet = time.time() - self.model.clock
        return quiet if quiet > max(SILENT_TICKS * interval, 3.0) else None

    def _check_size(self) -> None:
        """Follow the terminal's size even if curses missed the SIGWINCH
        (one that arrives while Python starts, before curses set its handler,
        is lost), at the cost of one ioctl per wake-up."""
        import curses

        if sys.__stdout__ is None:  # no stdout at all (pythonw-like embedding)
            return
        try:
            columns, lines = os.get_terminal_size(sys.__stdout__.fileno())
        except (OSError, AttributeError, ValueError):
            return
        if (lines, columns) != self.screen.getmaxyx():
            curses.resizeterm(lines, columns)

    def _setup_curses(self) -> None:
        import curses

        try:
            curses.curs_set(0)
        except curses.error:
            pass  # a terminal without an invisible cursor
        self.screen.nodelay(True)
        self.screen.keypad(True)
        curses.set_escdelay(25)  # Esc clears the filter at once, not after 1 s
        self.attrs = {
            "normal": curses.A_NORMAL,
            "title": curses.A_REVERSE | curses.A_BOLD,
            "header": curses.A_REVERSE,
            "dim": curses.A_DIM,
            "alert": curses.A_BOLD,
            "selected": curses.A_REVERSE,
        }
        if curses.has_colors() and render.color_enabled(self.no_color, sys.stdout):  # NO_COLOR too
            try:
                curses.use_default_colors()
                curses.init_pair(1, curses.COLOR_RED, -1)
            except curses.error:
                curses.init_pair(1, curses.COLOR_RED, curses.COLOR_BLACK)
            self.attrs["alert"] |= curses.color_pair(1)
        try:
            "▁█▼…·".encode(self.screen.encoding)
        except (UnicodeEncodeError, LookupError, AttributeError):
            self.ui.ascii = True

    def _draw(self) -> None:
        import curses

        height, width = self.screen.getmaxyx()
        shown = replace(
            self._shown_model(),
            connected=self.feed.connected,
            outage=self.feed.lost_reason,
            retry_in=None if self.feed.connected else self.feed.due_in(),
            silent_for=self._silence(),
        )
        # Rows come and go: keep the selection on a row and in view.
        ui = self.ui
        ui.selected, ui.offset = window(ui.selected, ui.offset, len(visible_rows(shown, ui)),
                                        table_room(height))
        shown.detail = self._detail(selected_row(shown, ui))
        self.screen.erase()
        for y, line in enumerate(layout(shown, self.ui, width, height)):
            try:
                self.screen.addstr(y, 0, line.text, self.attrs.get(line.style, 0))
            except curses.error:
                pass  # writing the bottom-right cell: curses cannot move past it
        self.screen.noutrefresh()
        curses.doupdate()
