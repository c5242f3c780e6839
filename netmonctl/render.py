"""Output for people and for programs (docs/DESIGN.md §6): table, json, ndjson, csv.

- json is exactly the daemon's wire shape (`{"connections": [...]}`, the Stats
  map, ...), so jq programs written against the protocol work on CLI output.
- ndjson and csv flatten the rows of that shape: one object per line, or a
  header plus one line per row (nested values as JSON, unknown as empty).
- Tables use human units, show unknown as "-", colour connection states on a
  terminal, and drop low-priority columns until they fit its width.

tabulate is imported only when a table is drawn, to keep startup fast.
"""

from __future__ import annotations

import csv
import io
import json
import os
import select
import shutil
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

import click

from common.units import human_bits, human_bytes, human_rate

#: Eight levels of a sparkline, lowest first.
SPARK_CHARS = "▁▂▃▄▅▆▇█"
#: Partial cells of a horizontal bar, one to eight eighths.
BAR_CHARS = "▏▎▍▌▋▊▉█"

# Healthy traffic green, listeners cyan, handshakes yellow, teardown magenta,
# gone red; UDP's "NONE" stays plain.
_STATE_COLORS = {
    "ESTABLISHED": "green",
    "LISTEN": "cyan",
    "SYN_SENT": "yellow",
    "SYN_RECV": "yellow",
    "FIN_WAIT1": "magenta",
    "FIN_WAIT2": "magenta",
    "TIME_WAIT": "magenta",
    "CLOSE": "magenta",
    "CLOSE_WAIT": "magenta",
    "LAST_ACK": "magenta",
    "CLOSING": "magenta",
    "CLOSED": "red",
}

# Table layout: tabulate's "simple" format puts two spaces between columns.
_TABLE_FORMAT = "simple"
_COLUMN_GAP = 2


# -- terminal ----------------------------------------------------------------


def color_enabled(no_color: bool, stream: TextIO) -> bool:
    """Colour only on a terminal, never with --no-color, NO_COLOR set (no-color.org)
    or TERM=dumb (a terminal that shows escape sequences as text)."""
    if no_color or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def terminal_width(stream: TextIO) -> int | None:
    """The terminal's columns when `stream` is one, else None (no limit when piped)."""
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return shutil.get_terminal_size().columns


def printable(text: str) -> str:
    """`text` with control characters shown as '?'.

    Process names and the like come from other users' processes: printed
    raw, an escape sequence in a name could reprogram the terminal.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def printable_data(value: Any) -> Any:
    """`value` (a decoded message: maps, lists, strings, numbers) with every
    string, map keys included, passed through printable().

    netmonctl applies it to everything it reads from a daemon (session.
    connect), so that no command (tables, key-value lists, watch lines, top,
    fleet, error messages, JSON and CSV alike) ever writes a control
    character or escape sequence a daemon or a hostile `-H` host sent to the
    terminal. Only strings that need it are copied.
    """
    if isinstance(value, str):
        return value if value.isprintable() else printable(value)
    if isinstance(value, dict):
        return {printable_data(k): printable_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(printable_data(v) for v in value)
    return value


def safe(value: Any) -> str:
    """A name that comes from another process (process, app) for a cell:
    control characters masked (see printable), unknown (None) as '-'."""
    return "-" if value is None else printable(str(value))


#: How tables name the AppUsage line whose process_name is null: bytes of
#: sockets whose process could not be known (not an app of that name).
UNKNOWN_PROCESS_LABEL = "(process unknown)"
#: Mark after an app's name when its figures are partial (see PARTIAL_NOTE).
PARTIAL_MARK = " *"
PARTIAL_NOTE = "* partial: some of its sockets keep no byte counters (UDP on Linux); figures count the others"


def app_label(app: Mapping[str, Any]) -> str:
    """An AppUsage row's PROCESS cell: its name, marked when partial; the line
    of sockets whose process is unknown (process_name null) says so."""
    name = app.get("process_name")
    if name is None:
        return UNKNOWN_PROCESS_LABEL
    return printable(str(name)) + (PARTIAL_MARK if app.get("partial") else "")


def partial_note(apps: Sequence[Mapping[str, Any]]) -> str:
    """The footnote explaining PARTIAL_MARK, when a shown row carries it."""
    return PARTIAL_NOTE if any(a.get("partial") for a in apps) else ""


def clip(text: str, width: int, ellipsis: str = "…") -> str:
    """`text` cut to `width` characters, marking the cut."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: width - 1] + ellipsis if width > 1 else text[:width]


def state_color(state: Any) -> str | None:
    """The click colour name for a connection state, None for plain."""
    return _STATE_COLORS.get(state) if isinstance(state, str) else None


# -- cell formatters -----------------------------------------------------------

#: How rates read in tables and lines: bytes/s, or bits/s after use_bits(True)
#: (--bits, key b in top). JSON always carries bytes/s.
_rate_in_bits = False


def use_bits(on: bool) -> None:
    """Show every rate this process renders in bits per second (on) or bytes (off)."""
    global _rate_in_bits
    _rate_in_bits = on


def bits_shown() -> bool:
    """Whether rates are shown in bits per second."""
    return _rate_in_bits


def rate(bps: float | None) -> str:
    """A rate in bytes/s as the user asked to read it: '1.5 MB/s' or '12.0 Mbps'; None -> '-'."""
    return human_bits(bps) if _rate_in_bits else human_rate(bps)



def dash(value: Any) -> str:
    """str(value), with unknown (None) shown as '-' and never as 0."""
    return "-" if value is None else str(value)


def connection_counts(s: Mapping[str, Any]) -> str:
    """'2 active, 3 listening, 1 TIME_WAIT': the counts of `status` and
    `stats`, named alike (`active` is what `apps` CONNS adds up to)."""
    active = s.get("active_connections", s.get("connections"))
    text = f"{dash(active)} active"
    if s.get("listeners") is not None:
        text += f", {s['listeners']} listening"
    if s.get("time_wait") is not None:
        text += f", {s['time_wait']} TIME_WAIT"
    return text


def pids(values: Sequence[int] | None, shown: int) -> str:
    """At most `shown` pids, then "+N" for the rest: [1, 2, 3], 2 -> '1,2 +1'; none -> '-'."""
    if not values:
        return "-"
    text = ",".join(str(p) for p in values[:shown])
    return text + (f" +{len(values) - shown}" if len(values) > shown else "")


def pids_fit(values: Sequence[int] | None, width: int) -> str:
    """As many pids as fit in `width` characters, then "+N" for the rest (see pids)."""
    if not values:
        return "-"
    for shown in range(len(values), 0, -1):
        text = pids(values, shown)
        if len(text) <= width:
            return text
    return clip(pids(values, 1), width)


def clip_address(text: str, width: int) -> str:
    """An "addr:port" cut to `width` on the address's left, never on its port:
    '[::ffff:127.0.0.1]:54321' at 20 -> '…ffff:127.0.0.1]:54321'."""
    if len(text) <= width:
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or width < len(port) + 3:
        return clip(text, width)
    keep = width - len(port) - 2  # the ellipsis and the colon
    return "…" + host[len(host) - keep:] + ":" + port


def remote_end(row: Mapping[str, Any], numeric: bool = False) -> str:
    """A row's remote end as people read it: its name, with the port where
    the row has one ('example.com:443'), where the name is known and not
    `numeric`; else the address ('93.184.216.34:443', '[2001:db8::1]:443').
    Connection rows name it `remote_host`, RemoteUsage rows `hostname`; '-'
    for a row without a remote (a listener)."""
    ip, port = row.get("remote_ip"), row.get("remote_port")
    name = None if numeric else row.get("remote_host", row.get("hostname"))
    if name:
        text = printable(str(name))
        return text if port is None else f"{text}:{port}"
    if ip is None:
        return "-" if row.get("remote_addr") is None else safe(row["remote_addr"])
    ip = printable(str(ip))
    if port is None:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def seconds(value: float | None) -> str:
    """A short number of seconds for settings and ages: 0.2 -> '0.2s'; None -> '-'."""
    return "-" if value is None else f"{value:.3g}s"


def clock(timestamp: float | None, tenths: bool = False) -> str:
    """Unix seconds as local HH:MM:SS (with `tenths`, HH:MM:SS.t); None -> '-'."""
    if timestamp is None:
        return "-"
    text = time.strftime("%H:%M:%S", time.localtime(timestamp))
    return text + f".{int(timestamp * 10) % 10}" if tenths else text


# -- tables ------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One table column: how to read, format, align and colour its cells.

    `drop` orders columns for removal when the table is wider than the
    terminal: 0 is never dropped, otherwise the highest number goes first.
    """

    header: str
    value: Callable[[Mapping[str, Any]], Any]
    fmt: Callable[[Any], str] = dash
    align: str = "left"
    drop: int = 0
    color: Callable[[Any], str | None] | None = None


def value_of(name: str) -> Callable[[Mapping[str, Any]], Any]:
    """A Column.value reading one key (missing -> None)."""
    return lambda row: row.get(name)


def traffic_columns(bytes_drop: int = 0) -> tuple[Column, Column, Column, Column]:
    """UP, DOWN, SENT, RECV: the rate and byte columns every table shares.

    `bytes_drop` is the drop order of the two byte totals (0: never dropped).
    """
    return (
        Column("UP", value_of("upload_speed"), fmt=rate, align="right"),
        Column("DOWN", value_of("download_speed"), fmt=rate, align="right"),
        Column("SENT", value_of("bytes_sent"), fmt=human_bytes, align="right", drop=bytes_drop),
        Column("RECV", value_of("bytes_received"), fmt=human_bytes, align="right", drop=bytes_drop),
    )


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    color: bool = False,
    width: int | None = None,
    empty: str = "",
) -> str:
    """A tabulate table of `rows`, narrowed to `width` by dropping columns."""
    if not rows:
        return empty
    import tabulate as _tabulate  # here, not at import: keeps startup fast

    values = [[col.value(row) for col in columns] for row in rows]
    cells = [[col.fmt(v) for col, v in zip(columns, vals)] for vals in values]
    keep = _fit(columns, cells, width, _tabulate.MIN_PADDING)

    out_rows = []
    for vals, texts in zip(values, cells):
        line = []
        for i in keep:
            text, col = texts[i], columns[i]
            fg = col.color(vals[i]) if color and col.color else None
            line.append(click.style(text, fg=fg) if fg else text)
        out_rows.append(line)

    return _tabulate.tabulate(
        out_rows,
        headers=[columns[i].header for i in keep],
        tablefmt=_TABLE_FORMAT,
        colalign=[columns[i].align for i in keep],
        disable_numparse=True,  # cells are already formatted for people
    )


def _fit(
    columns: Sequence[Column], cells: list[list[str]], width: int | None, header_padding: int
) -> list[int]:
    """Indexes of the columns to show so that the table fits `width`.

    A column is as wide as its widest cell, or its header plus tabulate's
    `header_padding` (the "simple" format pads headers).
    """
    keep = list(range(len(columns)))
    if width is None:
        return keep
    widths = [
        max(len(columns[i].header) + header_padding, *(len(row[i]) for row in cells))
        for i in range(len(columns))
    ]

    def total() -> int:
        return sum(widths[i] for i in keep) + _COLUMN_GAP * (len(keep) - 1)

    while total() > width:
        droppable = [i for i in keep if columns[i].drop]
        if not droppable:
            break  # nothing more to give up: let the terminal wrap
        keep.remove(max(droppable, key=lambda i: columns[i].drop))
    return keep


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """Aligned 'key: value' lines; a list value continues on indented lines."""
    pairs = list(pairs)
    pad = max((len(k) for k, _ in pairs), default=0) + 2
    lines = []
    for key, value in pairs:
        label = f"{key}:".ljust(pad)
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items:
            items = ["none"]
        lines.append(label + dash(items[0]))
        lines.extend(" " * pad + dash(item) for item in items[1:])
    return "\n".join(lines)


# -- sparkline ---------------------------------------------------------------


def sparkline(values: Sequence[float | None], width: int) -> str:
    """Values drawn with ▁▂▃▄▅▆▇█ from 0 up to their maximum, in at most `width` chars.

    More values than `width` are averaged into `width` buckets so the whole
    span is shown, oldest on the left. Unknown (None) is a blank, never a
    low bar; negative values count as 0 (these are rates).
    """
    if width <= 0 or not values:
        return ""
    points = _buckets(list(values), width) if len(values) > width else list(values)
    top = max((v for v in points if v is not None), default=0.0)
    levels = len(SPARK_CHARS) - 1
    out = []
    for v in points:
        if v is None:
            out.append(" ")
        elif top <= 0:
            out.append(SPARK_CHARS[0])
        else:
            out.append(SPARK_CHARS[min(levels, max(0, round(v / top * levels)))])
    return "".join(out)


def sparkline_row(label: str, values: Sequence[float | None], width: int | None,
                  now: float | None = None, show_now: bool = False, most: int | None = None) -> str:
    """`up   ▁▂▅█▃  peak 3.4 MB/s` (with show_now: `up     1.2 MB/s ▁▂▅█▃  peak ...`).

    The sparkline is `most` characters wide (None: all `width` allows),
    and no wider than what `width` (None: no limit) leaves after the label,
    the rate `now` and the peak; with fewer than 8 left, the row is the
    label and the rate now only. History and top draw their rows with it.
    """
    head = f"{label:<5}" + (f"{rate(now):>11} " if show_now else "")
    peak = max((v for v in values if v is not None), default=None)
    tail = f"  peak {rate(peak)}"
    room = most
    if width is not None:
        fits = width - len(head) - len(tail)
        if fits < 8:  # too narrow for a useful sparkline and its peak: keep the rate
            return clip(head.rstrip(), width)
        room = fits if room is None else min(room, fits)
    if room is None:
        raise ValueError("sparkline_row needs a width or a most")
    return head + sparkline(values, room).ljust(room) + tail


def bar(value: float | None, top: float | None, width: int) -> str:
    """A horizontal bar of `value` out of `top`, `width` cells, in eighths of a cell.

    Always exactly `width` characters (padded with spaces) so bars line up
    in a column. Unknown (None) is an empty bar; any traffic at all shows at
    least a sliver, so that "little" and "none" look different.
    """
    if width <= 0:
        return ""
    if value is None or not top or top <= 0 or value <= 0:
        return " " * width
    eighths = max(1, min(width * 8, round(value / top * width * 8)))
    full, part = divmod(eighths, 8)
    text = BAR_CHARS[-1] * full + (BAR_CHARS[part - 1] if part else "")
    return text.ljust(width)


def _buckets(values: list[float | None], width: int) -> list[float | None]:
    n = len(values)
    out: list[float | None] = []
    for i in range(width):
        known = [v for v in values[i * n // width : (i + 1) * n // width] if v is not None]
        out.append(sum(known) / len(known) if known else None)
    return out


# -- machine formats -----------------------------------------------------------


def to_json(payload: Any, pretty: bool = True) -> str:
    """The payload as JSON, unchanged; indented for a person.

    Compact output is several times faster (json's C encoder does not indent)
    and is what a pipe into jq wants; a terminal gets the indented form.
    """
    if pretty:
        return json.dumps(payload, indent=2)
    return json.dumps(payload, separators=(",", ":"))


def to_ndjson(rows: Iterable[Mapping[str, Any]]) -> str:
    """One compact JSON object per line."""
    return "\n".join(json.dumps(row, separators=(",", ":")) for row in rows)


def to_csv(rows: Sequence[Mapping[str, Any]], fields: Sequence[str] | None = None) -> str:
    """A header line and one line per row; None empty, lists/maps/bools as JSON."""
    names = list(fields) if fields is not None else list(rows[0]) if rows else []
    if not names:
        return ""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_csv_cell(row.get(name)) for name in names])
    return buf.getvalue().rstrip("\n")


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (bool, list, tuple, dict)):
        return json.dumps(value)
    return value


#: Formats for programs, printed as they are (emit, emit_rows_streamed).
MACHINE_FORMATS = ("json", "ndjson", "csv")


def emit_rows_streamed(fmt: str, rows_key: str, chunks: Iterable[Sequence[Mapping[str, Any]]],
                       fields: Sequence[str]) -> None:
    """Print rows in a machine format as their chunks arrive, never holding
    them all: the same text emit() prints for {rows_key: every row} (json,
    indented on a terminal and compact otherwise; ndjson; csv with `fields`
    as columns, the header even when no row comes)."""
    out = sys.stdout
    if fmt == "json":
        pretty = out.isatty()
        first = True
        for rows in chunks:
            if pretty:
                text = ",\n".join(textwrap.indent(json.dumps(r, indent=2), "    ") for r in rows)
                out.write(("{\n  " + json.dumps(rows_key) + ": [\n" if first else ",\n") + text)
            else:
                text = ",".join(json.dumps(r, separators=(",", ":")) for r in rows)
                out.write(("{" + json.dumps(rows_key) + ":[" if first else ",") + text)
            first = False
        if first:  # no rows at all
            out.write(to_json({rows_key: []}, pretty=pretty) + "\n")
        else:
            out.write("\n  ]\n}\n" if pretty else "]}\n")
    elif fmt == "ndjson":
        for rows in chunks:
            out.write(to_ndjson(rows) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(fields)
        for rows in chunks:
            writer.writerows([_csv_cell(row.get(name)) for name in fields] for row in rows)
    else:
        raise ValueError(f"not a machine format: {fmt}")
    out.flush()


# -- a reader that leaves early -----------------------------------------------


def stdout_reader_gone() -> bool:
    """True if stdout is a pipe whose reader has left (`netmonctl conns | head`):
    what made a write fail was the reader, not the daemon or ssh."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)  # POLLERR is always reported
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def silence_stdout() -> None:
    """Point stdout at /dev/null once its reader has left.

    Python flushes stdout again at exit; pointed at the closed pipe it
    would print "Exception ignored ... BrokenPipeError".
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


# -- dispatch ------------------------------------------------------------------


def emit(
    fmt: str,
    payload: Mapping[str, Any],
    *,
    human: Callable[[], str],
    rows_key: str | None = None,
    fields: Sequence[str] | None = None,
) -> None:
    """Print `payload` (the wire shape) in format `fmt`.

    `rows_key` names the list inside payload that ndjson/csv print one row
    per line (None: the payload itself is the one row); `fields` fixes the
    csv columns; `human` draws the table form, only when asked for.
    """
    if fmt == "json":
        text = to_json(payload, pretty=sys.stdout.isatty())
    elif fmt in ("ndjson", "csv"):
        rows = payload[rows_key] if rows_key else [payload]
        text = to_ndjson(rows) if fmt == "ndjson" else to_csv(rows, fields)
    else:
        text = human()
    if text:
        click.echo(text)
