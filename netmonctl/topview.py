"""The `top` screen as lines of text: a pure function of data and view state.

    layout(model, ui, width, height) -> [Line(text, style), ...]

No curses and no I/O here: tests check the screen at 80x24, 100x30 or 40x10
on fixed data, and commands/top.py only paints the lines it gets. There are
exactly `height` lines, each at most `width` characters.

    netmon top · applications                      every 1s  12:00:01   <- title
    up      1.2 MB/s ▁▂▃▅▇█▇▅▃▂▁▁▂▃▄▅▆▇█▇▆▅▄▃▂▁  peak 3.4 MB/s      <- last minute
    down    3.4 MB/s ▁▂▃▅▇█▇▅▃▂▁▁▂▃▄▅▆▇█▇▆▅▄▃▂▁  peak 5.6 MB/s
    127 active connections  top app firefox  unattributed 12%
    12 apps  sort: speed ▼                                           <- status
    PROCESS      PIDS   CONNS     UP ▼    DOWN ▼   SENT   RECV       <- table
    ...
    q:quit a:apps c:conns s:sort r:reverse /:filter p:pause ...      <- keys

Tables have fixed column widths (a live view whose columns jump as numbers
change is unreadable); the process column takes what is left, and less
important columns are dropped on narrow terminals.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Mapping, Sequence

from common.units import human_duration, human_percent

from . import render
from .render import Column, clip, value_of
from .sorting import descending, sort_rows

Row = Mapping[str, Any]

VIEWS = ("apps", "conns", "remotes")
#: What the title and the status line call each view's rows.
VIEW_TITLES = {"apps": "applications", "conns": "connections", "remotes": "remote hosts"}
VIEW_NOUNS = {"apps": "apps", "conns": "connections", "remotes": "remotes"}
#: The key that shows each view.
VIEW_KEYS = {"a": "apps", "c": "conns", "h": "remotes"}
#: What `s` cycles through, per view; the first is the default.
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "apps": ("speed", "upload_speed", "download_speed", "bytes", "connections", "process_name"),
    "conns": ("speed", "upload_speed", "download_speed", "bytes", "duration",
              "process_name", "remote_addr", "state"),
    "remotes": ("speed", "upload_speed", "download_speed", "bytes", "connections", "hostname", "remote_ip"),
}
#: Seconds of bandwidth the sparklines show.
SPARK_SECONDS = 60.0

#: Line styles; commands/top.py maps them to curses attributes.
STYLES = ("normal", "title", "header", "alert", "dim", "selected")

KEY_HELP = "q:quit a/c/h:view s:sort r:reverse /:filter j/k:scroll b:bits p:pause ?:help"

HELP_LINES = (
    "Keys",
    "",
    "  q        quit (also Ctrl-C)",
    "  a / c / h  applications / connections / remote hosts (per address)",
    "  s        next sort column: speed, up, down, bytes, ...",
    "  r        reverse the order",
    "  j / k    move the selection down / up (also the arrow keys);",
    "           PgDn / PgUp (Space) a page, Home / End (g / G) first / last row",
    "  /        filter by text: process, ip, name or port (Enter keeps it, Esc clears it)",
    "  b        rates in bits per second (kbps, Mbps) or bytes (kB/s, MB/s)",
    "  p        pause the display (data keeps arriving)",
    "  + / -    the daemon's sampling interval x2 / /2 (slower / faster);",
    "           needs root, the daemon's user or its group",
    "  ?        this help; any key closes it",
    "",
    "Rates are per second over the daemon's last sample; the table is",
    "refreshed at every sample the daemon pushes. The line above the keys",
    "is the selected row's process command line (local daemon only).",
)

# Single-column stand-ins when the terminal cannot show Unicode.
_ASCII = str.maketrans({"▁": "_", "▂": ".", "▃": "-", "▄": "-", "▅": "=", "▆": "+",
                        "▇": "*", "█": "#", "▼": "v", "▲": "^", "…": "~", "·": "-"})

_GAP = "  "


@dataclass
class TopModel:
    """What the daemon last said, and whether it is reachable."""

    stats: Mapping[str, Any] | None = None
    apps: Sequence[Row] = dc_field(default_factory=list)
    connections: Sequence[Row] = dc_field(default_factory=list)
    remotes: Sequence[Row] = dc_field(default_factory=list)
    #: HistoryPoints (timestamp, upload, download), oldest first.
    history: list[dict[str, Any]] = dc_field(default_factory=list)
    connected: bool = True
    #: Why the daemon is unreachable, while it is.
    outage: str | None = None
    #: Seconds until the next reconnection attempt, while unreachable.
    retry_in: float | None = None
    #: Where the daemon is expected: socket path or -H host.
    where: str = ""
    #: The -H host's name for the title; None for the local daemon.
    host: str | None = None
    #: Wall time shown in the title (the last update).
    clock: float | None = None
    #: Seconds without any update while connected, once that is unusual
    #: (monitoring stopped, or the daemon stuck); None otherwise.
    silent_for: float | None = None
    #: The line under the table: the selected row's process command line.
    detail: str | None = None


@dataclass
class ViewState:
    """What the user chose with keys (and options)."""

    view: str = "apps"
    sort: str = "speed"
    reverse: bool = False
    filter_text: str = ""
    editing_filter: bool = False
    paused: bool = False
    help: bool = False
    #: One-line feedback, e.g. the answer to +/-.
    message: str = ""
    #: Draw with ASCII only (the terminal's encoding has no block characters).
    ascii: bool = False
    #: The selected row (index into the visible rows) and the first row shown.
    selected: int = 0
    offset: int = 0


@dataclass(frozen=True)
class Line:
    """One screen line and how to draw it (one of STYLES)."""

    text: str
    style: str = "normal"


# -- rows ---------------------------------------------------------------------


def matches_text(row: Row, text: str) -> bool:
    """The `/` filter: text in the process name, an address or the remote's
    name (a remote's processes too), or a port or pid starting so."""
    needle = text.strip().lower()
    if not needle:
        return True
    for key in ("process_name", "local_addr", "remote_addr", "remote_host", "remote_ip", "hostname"):
        value = row.get(key)
        if value and needle in str(value).lower():
            return True
    if any(needle in str(name).lower() for name in row.get("apps") or ()):
        return True
    numbers = [row.get("local_port"), row.get("remote_port"), row.get("pid"), *(row.get("pids") or [])]
    return any(n is not None and str(n).startswith(needle) for n in numbers)


def visible_rows(model: TopModel, ui: ViewState) -> list[Row]:
    """The current view's rows, text-filtered and sorted."""
    rows = {"apps": model.apps, "conns": model.connections, "remotes": model.remotes}[ui.view]
    if ui.filter_text:
        rows = [r for r in rows if matches_text(r, ui.filter_text)]
    return sort_rows(rows, ui.sort, ui.reverse)


def next_sort(view: str, current: str) -> str:
    """The sort key after `current` in the view's cycle."""
    keys = SORT_KEYS[view]
    if current not in keys:
        return keys[0]
    return keys[(keys.index(current) + 1) % len(keys)]


def unattributed_percent(stats: Mapping[str, Any] | None) -> float | None:
    """Share of the total rate that per-socket counters do not explain, in %."""
    if not stats:
        return None
    total = (stats.get("total_upload_speed") or 0) + (stats.get("total_download_speed") or 0)
    part = (stats.get("unattributed_upload_speed"), stats.get("unattributed_download_speed"))
    if total <= 0 or part == (None, None):
        return None
    return min(100.0, 100.0 * sum(p or 0 for p in part) / total)


# -- table columns ---------------------------------------------------------------


@dataclass(frozen=True)
class TopColumn:
    """A table column of top: render.Column (value, format, align, drop
    priority: highest dropped first, 0 never) with its widths.

    `width` is the least it gets, `ideal` what its content usually needs:
    spare room brings columns to their ideal, most important (lowest drop)
    first; what is left goes to the `flex` column(s). Widths depend only on
    the terminal's width (a live view whose columns jump as values change is
    unreadable). `cell` formats a value for a given width (default: the
    column's format, clipped)."""

    column: Column
    width: int
    sorts: tuple[str, ...] = ()  # sort keys that this column shows
    ideal: int = 0
    flex: bool = False
    cell: Callable[[Any, int], str] | None = None
    #: Growth priority towards the ideal width (lowest first); default: the drop priority.
    grow: int | None = None

    @property
    def rank(self) -> int:
        return self.column.drop if self.grow is None else self.grow

    def text(self, row: Row, width: int) -> str:
        value = self.column.value(row)
        if self.cell is not None:
            return self.cell(value, width)
        return clip(self.column.fmt(value), width)


#: "999.9 kB/s"; the rare "1000.0 kB/s" (rounding up) is cut by one character.
RATE_WIDTH = 10
#: An IPv4 address with its port: "255.255.255.255:65535".
ADDR_MIN = 21
#: A full IPv6 address with its port: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".
ADDR_IDEAL = 47


def _addr_cell(value: Any, width: int) -> str:
    return "-" if value is None else render.clip_address(render.safe(value), width)


def _pids_cell(value: Any, width: int) -> str:
    return render.pids_fit(value, width)


def _traffic(bytes_drop: int) -> tuple[TopColumn, ...]:
    """render.traffic_columns() with top's widths and sort keys."""
    up, down, sent, recv = render.traffic_columns(bytes_drop)
    return (
        TopColumn(up, RATE_WIDTH, ("speed", "upload_speed")),
        TopColumn(down, RATE_WIDTH, ("speed", "download_speed")),
        TopColumn(sent, 9, ("bytes",)),
        TopColumn(recv, 9, ("bytes",)),
    )


APP_COLUMNS = (
    TopColumn(Column("PROCESS", render.app_label, fmt=str), 10, ("process_name",),
              ideal=24, flex=True),
    TopColumn(Column("PIDS", value_of("pids"), drop=4), 11, ideal=30, cell=_pids_cell),
    TopColumn(Column("CONNS", value_of("connections"), align="right", drop=2), 5, ("connections",)),
    *_traffic(3),
)

def _remote_cell(value: Any, width: int) -> str:
    """A remote's name (or address), cut on the name's left: the domain is what tells most."""
    text = render.safe(value)
    return text if len(text) <= width else "…" + text[len(text) - width + 1:] if width > 1 else text[:width]


def _apps_cell(value: Any, width: int) -> str:
    names = [render.safe(n) for n in value or ()]
    if not names:
        return "-"
    for shown in range(len(names), 0, -1):
        text = ",".join(names[:shown]) + (f" +{len(names) - shown}" if shown < len(names) else "")
        if len(text) <= width:
            return text
    return clip(names[0], width)


REMOTE_COLUMNS = (
    TopColumn(Column("REMOTE", lambda row: render.remote_end(row) + (render.PARTIAL_MARK if row.get("partial") else "")),
              16, ("hostname",), ideal=40, flex=True, cell=_remote_cell),
    # The address beside the name: the first to go on a narrow screen (a
    # name-less remote shows its address under REMOTE anyway), and only
    # shown with room to spare, so that it never squeezes the names.
    TopColumn(Column("ADDRESS", value_of("remote_ip"), drop=5), 24, ("remote_ip",), ideal=39,
              cell=_remote_cell),  # 39: a full IPv6 address
    TopColumn(Column("CONNS", value_of("connections"), align="right", drop=2), 5, ("connections",)),
    # 14: wide enough for a name or two; at 80 columns it gives way to the remotes' names.
    TopColumn(Column("PROCESSES", value_of("apps"), drop=4), 14, ideal=24, cell=_apps_cell),
    *_traffic(3),
)

CONN_COLUMNS = (
    TopColumn(Column("PROTO", value_of("protocol"), drop=5), 5),
    TopColumn(Column("LOCAL", value_of("local_addr"), drop=6), ADDR_MIN, ideal=ADDR_IDEAL, cell=_addr_cell,
              grow=3),  # grows with REMOTE: both addresses as readable
    # The remote's name where known (netmonctl top -n: the address), as in `conns`.
    TopColumn(Column("REMOTE", lambda row: render.remote_end(row) if row.get("remote_addr") else None, drop=3),
              ADDR_MIN, ("remote_addr",),
              ideal=ADDR_IDEAL, cell=_addr_cell),
    TopColumn(Column("STATE", value_of("state"), drop=4), 11, ("state",)),
    TopColumn(Column("PID", value_of("pid"), align="right", drop=7), 7),
    TopColumn(Column("PROCESS", value_of("process_name"), fmt=render.safe), 10, ("process_name",),
              ideal=24, flex=True),
    *_traffic(8),
    TopColumn(Column("AGE", value_of("duration"), fmt=human_duration, align="right", drop=9), 7,
              ("duration",)),
)
VIEW_COLUMNS: dict[str, tuple[TopColumn, ...]] = {
    "apps": APP_COLUMNS, "conns": CONN_COLUMNS, "remotes": REMOTE_COLUMNS}


def fit_columns(columns: Sequence[TopColumn], width: int, sort: str = "") -> list[tuple[TopColumn, int]]:
    """The columns that fit `width`, each with its width.

    The columns that show `sort` are never dropped. Others are dropped by
    priority, all columns of the same priority together (SENT and RECV go as
    a pair), until the least widths fit; when even the undroppable ones do
    not fit, lines are simply cut. Spare room then goes to ideals, then to
    the flexible columns.
    """
    keep = list(columns)

    def least(c: TopColumn) -> int:  # room for the header's sort arrow too
        return max(c.width, len(c.column.header) + 2) if sort in c.sorts else c.width

    def needed() -> int:
        return sum(least(c) for c in keep) + len(_GAP) * (len(keep) - 1)

    while needed() > width:
        droppable = [c for c in keep if c.column.drop and sort not in c.sorts]
        if not droppable:
            break
        worst = max(c.column.drop for c in droppable)
        keep = [c for c in keep if c not in droppable or c.column.drop != worst]
    widths = [least(c) for c in keep]
    spare = max(0, width - needed())
    # Growth by priority; columns of one priority share the room evenly (LOCAL and REMOTE).
    for rank in sorted({c.rank for c in keep}):
        group = [i for i, c in enumerate(keep) if c.rank == rank and c.ideal > widths[i]]
        while spare and group:
            for i in list(group):
                if spare:
                    widths[i] += 1
                    spare -= 1
                if widths[i] >= keep[i].ideal:
                    group.remove(i)
    flexible = [i for i, c in enumerate(keep) if c.flex]
    for n, i in enumerate(flexible):
        share = spare // (len(flexible) - n)
        widths[i] += share
        spare -= share
    return list(zip(keep, widths))


def _cell(text: str, width: int, align: str) -> str:
    text = clip(text, width)
    return text.rjust(width) if align == "right" else text.ljust(width)


def table_lines(
    rows: Sequence[Row], columns: Sequence[TopColumn], width: int, sort: str, reverse: bool
) -> tuple[str, list[str]]:
    """(header line, row lines) of a fixed-width table `width` wide.

    The columns that show the sort key get ▼ (largest first) or ▲.
    """
    fitted = fit_columns(columns, width, sort)
    arrow = "▼" if descending(sort, reverse) else "▲"
    header = _GAP.join(
        _cell(c.column.header + (" " + arrow if sort in c.sorts else ""), w, c.column.align)
        for c, w in fitted
    )
    lines = [_GAP.join(_cell(c.text(row, w), w, c.column.align) for c, w in fitted) for row in rows]
    return header, lines


# -- the screen ------------------------------------------------------------------


def _spread(left: str, right: str, width: int) -> str:
    """left and right on one line of `width`, right-aligned part kept if it fits."""
    if len(left) + 1 + len(right) > width:
        return clip(left, width)
    return left + " " * (width - len(left) - len(right)) + right


def _title(model: TopModel, ui: ViewState, width: int) -> str:
    host = f"{render.printable(model.host)} · " if model.host else ""
    left = f"netmon top · {host}{VIEW_TITLES[ui.view]}"
    if ui.paused:
        left += " · PAUSED"
    parts = []
    interval = (model.stats or {}).get("interval")
    if interval is not None:
        parts.append(f"every {render.seconds(interval)}")
    if model.stats and model.stats.get("monitoring") is False:
        parts.append("monitoring stopped")
    if model.clock is not None:
        parts.append(render.clock(model.clock))
    return _spread(left, "  ".join(parts), width)


def _last_minute(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if not history:
        return []
    newest = history[-1].get("timestamp") or 0
    return [p for p in history if (p.get("timestamp") or 0) > newest - SPARK_SECONDS]


def _summary(model: TopModel, width: int) -> str:
    s = model.stats or {}
    parts = [f"{render.dash(s.get('active_connections'))} active connections"]
    parts.append(f"top app {render.safe(s.get('top_app') or None)}")
    share = unattributed_percent(s)
    parts.append("unattributed " + ("-" if share is None else human_percent(share, 100.0)))
    return clip("  ".join(parts), width)


#: How the status line names the pseudo sort keys: totals over both directions.
_SORT_LABELS = {"speed": "speed (up+down)", "bytes": "bytes (sent+recv)"}


def _status(model: TopModel, ui: ViewState, first: int, shown: int, total: int, width: int) -> Line:
    if not model.connected:
        retry = "" if model.retry_in is None else f" in {model.retry_in:.1f}s"
        reason = model.outage or "connection lost"
        text = f"daemon unreachable at {model.where}: {reason}; reconnecting{retry}"
        return Line(clip(text, width), "alert")
    if ui.editing_filter:
        return Line(clip(f"filter: {ui.filter_text}_   (Enter keep, Esc clear)", width), "normal")
    if ui.message:
        return Line(clip(ui.message, width), "alert")
    if model.silent_for is not None:
        text = (f"no update from the daemon for {human_duration(model.silent_for)} "
                "(monitoring stopped? see netmonctl status)")
        return Line(clip(text, width), "alert")
    noun = VIEW_NOUNS[ui.view]
    text = f"{total} {noun}"
    if shown < total:
        text += f", rows {first + 1}-{first + shown} shown"
    if ui.filter_text:
        text += f"  filter '{ui.filter_text}'"
    order = "▼" if descending(ui.sort, ui.reverse) else "▲"
    text += f"  sort: {_SORT_LABELS.get(ui.sort, ui.sort)} {order}"
    return Line(clip(text, width), "dim")


# -- scrolling -------------------------------------------------------------------


def window(selected: int, offset: int, total: int, room: int) -> tuple[int, int]:
    """(selected, offset) clamped: the selection on a row, and visible among
    the `room` rows shown from `offset`, with no blank rows below the last
    while rows remain above the first."""
    if total <= 0:
        return 0, 0
    selected = min(max(selected, 0), total - 1)
    if room <= 0:
        return selected, selected
    offset = min(max(offset, selected - room + 1), selected)
    return selected, max(0, min(offset, total - room))


def _frame(height: int) -> tuple[int, int, bool]:
    """(lines above the status line, lines below the rows, tiny) for a screen `height` tall."""
    if height < _HEAD_LINES + 5:
        return 1, 0, True  # a tiny terminal: the title, the status and what rows fit
    return _HEAD_LINES, 2, False  # the detail line and the key line below the rows


def table_room(height: int) -> int:
    """How many table rows a screen `height` lines tall shows (what PgDn moves by)."""
    above, below, _tiny = _frame(height)
    return max(0, height - above - 2 - below)  # 2: status + table header


def scroll(ui: ViewState, key: str, total: int, room: int) -> None:
    """Move the selection for a scrolling key: up, down, pgup, pgdn, home, end."""
    step = {"up": -1, "down": 1, "pgup": -max(1, room), "pgdn": max(1, room)}
    if key == "home":
        ui.selected = 0
    elif key == "end":
        ui.selected = total - 1
    else:
        ui.selected += step[key]
        if key in ("pgup", "pgdn"):
            ui.offset += step[key]  # a page turns the window, not just the selection
    ui.selected, ui.offset = window(ui.selected, ui.offset, total, room)


def selected_row(model: TopModel, ui: ViewState) -> Row | None:
    """The row under the selection, if any."""
    rows = visible_rows(model, ui)
    if not rows:
        return None
    return rows[min(max(ui.selected, 0), len(rows) - 1)]


def _detail(model: TopModel, width: int) -> Line:
    text = model.detail if model.detail is not None else ""
    return Line(clip(render.printable(text), width), "dim")


_HEAD_LINES = 4  # title, up, down, summary


def layout(model: TopModel, ui: ViewState, width: int, height: int) -> list[Line]:
    """The whole screen, top to bottom: `height` lines of at most `width` chars."""
    if width <= 0 or height <= 0:
        return []
    history = _last_minute(model.history)
    s = model.stats or {}
    rows = visible_rows(model, ui)
    columns = VIEW_COLUMNS[ui.view]
    room = table_room(height)
    selected, offset = window(ui.selected, ui.offset, len(rows), room)
    window_rows = rows[offset : offset + room]
    header, row_lines = table_lines(window_rows, columns, width, ui.sort, ui.reverse)

    title = Line(_title(model, ui, width).ljust(width), "title")
    _above, _below, tiny = _frame(height)
    head = [title]
    footer = []
    if not tiny:
        head += [
            Line(render.sparkline_row("up", [p.get("upload") for p in history], width,
                                      s.get("total_upload_speed"), show_now=True)),
            Line(render.sparkline_row("down", [p.get("download") for p in history], width,
                                      s.get("total_download_speed"), show_now=True)),
            Line(_summary(model, width)),
        ]
        footer = [_detail(model, width), Line(clip(KEY_HELP, width), "dim")]

    if ui.help:
        body = [Line(clip(text, width)) for text in HELP_LINES][: room + 1]
        lines = head + [Line(clip("help: any key returns", width), "dim")] + body
    else:
        status = _status(model, ui, offset, len(row_lines), len(rows), width)
        body = [Line(clip(header, width).ljust(width), "header")]
        for i, text in enumerate(row_lines):
            style = "dim" if not model.connected else "normal"
            if offset + i == selected and not tiny and model.connected:
                style, text = "selected", text.ljust(width)
            body.append(Line(clip(text, width), style))
        if not row_lines and room:
            empty = "no rows match the filter" if ui.filter_text else "waiting for data..."
            body.append(Line(clip(empty, width), "dim"))
        lines = head + [status] + body
    lines = lines[: height - len(footer)]
    # The detail and key lines sit at the bottom of the screen, wherever the rows end.
    lines += [Line("")] * (height - len(footer) - len(lines)) + footer
    if ui.ascii:
        lines = [Line(line.text.translate(_ASCII), line.style) for line in lines]
    return lines[:height]
