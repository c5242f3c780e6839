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
from typing import Any, Sequence

from common.units import human_duration, human_rate

from . import render
from .render import Column, clip, field
from .sorting import descending, sort_rows

Row = dict[str, Any]

VIEWS = ("apps", "conns")
#: What `s` cycles through, per view; the first is the default.
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "apps": ("speed", "upload_speed", "download_speed", "bytes", "connections", "process_name"),
    "conns": ("speed", "upload_speed", "download_speed", "bytes", "duration",
              "process_name", "remote_addr", "state"),
}
#: Seconds of bandwidth the sparklines show.
SPARK_SECONDS = 60.0

#: Line styles; commands/top.py maps them to curses attributes.
STYLES = ("normal", "title", "header", "alert", "dim")

KEY_HELP = "q:quit a:apps c:conns s:sort r:reverse /:filter p:pause +/-:interval ?:help"

HELP_LINES = (
    "Keys",
    "",
    "  q        quit (also Ctrl-C)",
    "  a / c    applications / connections",
    "  s        next sort column: speed, up, down, bytes, ...",
    "  r        reverse the order",
    "  /        filter by text: process, ip or port (Enter keeps it, Esc clears it)",
    "  p        pause the display (data keeps arriving)",
    "  + / -    the daemon's sampling interval x2 / /2 (slower / faster);",
    "           needs root, the daemon's user or its group",
    "  ?        this help; any key closes it",
    "",
    "Rates are bytes per second over the daemon's last sample; the table",
    "is refreshed at every sample the daemon pushes.",
)

# Single-column stand-ins when the terminal cannot show Unicode.
_ASCII = str.maketrans({"▁": "_", "▂": ".", "▃": "-", "▄": "-", "▅": "=", "▆": "+",
                        "▇": "*", "█": "#", "▼": "v", "▲": "^", "…": "~", "·": "-"})

_GAP = "  "


@dataclass
class TopModel:
    """What the daemon last said, and whether it is reachable."""

    stats: dict[str, Any] | None = None
    apps: list[Row] = dc_field(default_factory=list)
    connections: list[Row] = dc_field(default_factory=list)
    #: HistoryPoints (timestamp, upload, download), oldest first.
    history: list[dict[str, Any]] = dc_field(default_factory=list)
    connected: bool = True
    #: Why the daemon is unreachable, while it is.
    outage: str | None = None
    #: Seconds until the next reconnection attempt, while unreachable.
    retry_in: float | None = None
    #: Where the daemon is expected: socket path or -H host.
    where: str = ""
    #: Wall time shown in the title (the last update).
    clock: float | None = None
    #: Seconds without any update while connected, once that is unusual
    #: (monitoring stopped, or the daemon stuck); None otherwise.
    silent_for: float | None = None


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


@dataclass(frozen=True)
class Line:
    """One screen line and how to draw it (one of STYLES)."""

    text: str
    style: str = "normal"


# -- rows ---------------------------------------------------------------------


def matches_text(row: Row, text: str) -> bool:
    """The `/` filter: text in the process name or an address, or a port or pid starting so."""
    needle = text.strip().lower()
    if not needle:
        return True
    for key in ("process_name", "local_addr", "remote_addr"):
        value = row.get(key)
        if value and needle in str(value).lower():
            return True
    numbers = [row.get("local_port"), row.get("remote_port"), row.get("pid"), *(row.get("pids") or [])]
    return any(n is not None and str(n).startswith(needle) for n in numbers)


def visible_rows(model: TopModel, ui: ViewState) -> list[Row]:
    """The current view's rows, text-filtered and sorted."""
    rows = model.apps if ui.view == "apps" else model.connections
    if ui.filter_text:
        rows = [r for r in rows if matches_text(r, ui.filter_text)]
    return sort_rows(rows, ui.sort, ui.reverse)


def next_sort(view: str, current: str) -> str:
    """The sort key after `current` in the view's cycle."""
    keys = SORT_KEYS[view]
    if current not in keys:
        return keys[0]
    return keys[(keys.index(current) + 1) % len(keys)]


def unattributed_percent(stats: dict[str, Any] | None) -> float | None:
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
    priority: highest dropped first, 0 never) with a fixed width; width 0
    means the flexible column that takes what is left (at least FLEX_MIN)."""

    column: Column
    width: int
    sorts: tuple[str, ...] = ()  # sort keys that this column shows


FLEX_MIN = 10
#: "999.9 kB/s"; the rare "1000.0 kB/s" (rounding up) is cut by one character.
RATE_WIDTH = 10


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
    TopColumn(Column("PROCESS", field("process_name"), fmt=render.safe), 0, ("process_name",)),
    TopColumn(Column("PIDS", field("pids"), fmt=lambda v: render.pids(v, 2), drop=4), 11),
    TopColumn(Column("CONNS", field("connections"), align="right", drop=2), 5, ("connections",)),
    *_traffic(3),
)

CONN_COLUMNS = (
    TopColumn(Column("PROTO", field("protocol"), drop=5), 5),
    TopColumn(Column("LOCAL", field("local_addr"), drop=6), 21),
    TopColumn(Column("REMOTE", field("remote_addr"), drop=3), 21, ("remote_addr",)),
    TopColumn(Column("STATE", field("state"), drop=4), 11, ("state",)),
    TopColumn(Column("PID", field("pid"), align="right", drop=7), 7),
    TopColumn(Column("PROCESS", field("process_name"), fmt=render.safe), 0, ("process_name",)),
    *_traffic(8),
    TopColumn(Column("AGE", field("duration"), fmt=human_duration, align="right", drop=9), 7,
              ("duration",)),
)


def fit_columns(columns: Sequence[TopColumn], width: int) -> list[tuple[TopColumn, int]]:
    """The columns that fit `width`, each with its width (the flexible one gets the rest).

    Columns are dropped by priority until the fixed ones plus FLEX_MIN fit;
    when even the undroppable ones do not fit, lines are simply cut.
    """
    keep = list(columns)

    def needed() -> int:
        return sum(c.width or FLEX_MIN for c in keep) + len(_GAP) * (len(keep) - 1)

    while needed() > width:
        droppable = [c for c in keep if c.column.drop]
        if not droppable:
            break
        keep.remove(max(droppable, key=lambda c: c.column.drop))
    spare = max(0, width - needed())
    return [(c, c.width or FLEX_MIN + spare) for c in keep]


def _cell(text: str, width: int, align: str) -> str:
    text = clip(text, width)
    return text.rjust(width) if align == "right" else text.ljust(width)


def table_lines(
    rows: Sequence[Row], columns: Sequence[TopColumn], width: int, sort: str, reverse: bool
) -> tuple[str, list[str]]:
    """(header line, row lines) of a fixed-width table `width` wide.

    The columns that show the sort key get ▼ (largest first) or ▲.
    """
    fitted = fit_columns(columns, width)
    arrow = "▼" if descending(sort, reverse) else "▲"
    header = _GAP.join(
        _cell(c.column.header + (" " + arrow if sort in c.sorts else ""), w, c.column.align)
        for c, w in fitted
    )
    lines = [
        _GAP.join(_cell(c.column.fmt(c.column.value(row)), w, c.column.align) for c, w in fitted)
        for row in rows
    ]
    return header, lines


# -- the screen ------------------------------------------------------------------


def _spread(left: str, right: str, width: int) -> str:
    """left and right on one line of `width`, right-aligned part kept if it fits."""
    if len(left) + 1 + len(right) > width:
        return clip(left, width)
    return left + " " * (width - len(left) - len(right)) + right


def _title(model: TopModel, ui: ViewState, width: int) -> str:
    left = f"netmon top · {'applications' if ui.view == 'apps' else 'connections'}"
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


def _spark_line(
    label: str, key: str, rate: float | None, history: Sequence[dict[str, Any]], width: int
) -> str:
    head = f"{label:<5}{human_rate(rate):>11} "
    values = [p.get(key) for p in history]
    peak = max((v for v in values if v is not None), default=None)
    tail = f"  peak {human_rate(peak)}"
    room = width - len(head) - len(tail)
    if room < 8:  # too narrow for a useful sparkline and its peak: keep the rate
        return clip(head.rstrip(), width)
    return head + render.sparkline(values, room).ljust(room) + tail


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
    parts.append("unattributed " + ("-" if share is None else f"{share:.0f}%"))
    return clip("  ".join(parts), width)


def _status(model: TopModel, ui: ViewState, shown: int, total: int, width: int) -> Line:
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
    noun = "apps" if ui.view == "apps" else "connections"
    text = f"{total} {noun}" + (f", {shown} shown" if shown < total else "")
    if ui.filter_text:
        text += f"  filter '{ui.filter_text}'"
    order = "▼" if descending(ui.sort, ui.reverse) else "▲"
    text += f"  sort: {ui.sort} {order}"
    return Line(clip(text, width), "dim")


def layout(model: TopModel, ui: ViewState, width: int, height: int) -> list[Line]:
    """The whole screen, top to bottom: `height` lines of at most `width` chars."""
    if width <= 0 or height <= 0:
        return []
    history = _last_minute(model.history)
    s = model.stats or {}
    rows = visible_rows(model, ui)
    columns = APP_COLUMNS if ui.view == "apps" else CONN_COLUMNS
    header, row_lines = table_lines(rows, columns, width, ui.sort, ui.reverse)

    title = Line(_title(model, ui, width).ljust(width), "title")
    head = [
        title,
        Line(_spark_line("up", "upload", s.get("total_upload_speed"), history, width)),
        Line(_spark_line("down", "download", s.get("total_download_speed"), history, width)),
        Line(_summary(model, width)),
    ]
    footer = [Line(clip(KEY_HELP, width), "dim")]
    if height < len(head) + 4:
        # A tiny terminal: the title, the status and what rows fit.
        head, footer = [title], []
    room = max(0, height - len(head) - 2 - len(footer))  # 2: status + table header

    if ui.help:
        body = [Line(clip(text, width)) for text in HELP_LINES][: room + 1]
        lines = head + [Line(clip("help: any key returns", width), "dim")] + body
    else:
        shown = min(len(row_lines), room)
        status = _status(model, ui, shown, len(rows), width)
        body = [Line(clip(header, width).ljust(width), "header")]
        body += [Line(clip(text, width), "dim" if not model.connected else "normal")
                 for text in row_lines[:room]]
        if not row_lines and room:
            empty = "no rows match the filter" if ui.filter_text else "waiting for data..."
            body.append(Line(clip(empty, width), "dim"))
        lines = head + [status] + body
    lines = lines[: height - len(footer)]
    # The key line sits at the bottom of the screen, wherever the rows end.
    lines += [Line("")] * (height - len(footer) - len(lines)) + footer
    if ui.ascii:
        lines = [Line(line.text.translate(_ASCII), line.style) for line in lines]
    return lines[:height]
