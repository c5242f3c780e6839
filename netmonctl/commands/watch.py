"""`netmonctl watch`: the daemon's notifications as a stream of lines.

Pushed by the daemon (`subscribe`), never polled. Decisions:
- one JSON line per notification: {"event": method, "timestamp": when this
  client received it (unix seconds, ms precision: one clock for every event,
  stats_update has no time of its own), "data": the payload as sent}; the
  daemon's own sample times are inside data (bandwidth_data.timestamp, a
  row's last_seen / closed_at);
- readable mode: one line per row for connection events (OPEN when the
  daemon saw the row for the first time this tick, UPD when it changed,
  CLOSE with its final counters), one line per stats/bandwidth event;
- `lagged` (this client fell behind, the daemon dropped updates) is always
  shown, whatever --events says, in the stream where the gap is: on stdout,
  as `! lagged` or {"event": "lagged", ...}; it does not count for --count;
- daemon gone: one notice on stderr per outage, reconnect with backoff
  (netmonctl.live), resubscribe with the same filter, one notice when back;
- Ctrl-C and a closed pipe (`| head -1`) end it with exit 0, quietly.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from common import api
from common.units import human_bytes, human_duration

from .. import options, render
from ..options import filter_options, output_options
from ..session import Settings, pass_settings
from ..topview import unattributed_percent

#: The daemon's topics (common.api imports no msgpack: --help stays fast).
EVENT_NAMES = api.TOPICS
#: Connection events only: one line per tick of stats would drown them.
DEFAULT_EVENTS = (api.CONNECTION_UPDATE, api.CONNECTION_CLOSED)
LAGGED = api.LAGGED

_LABEL_COLORS = {"OPEN": "green", "CLOSE": "red", "!": "yellow"}


def _events(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """--events a,b --events c -> (a, b, c); 'all' is every topic."""
    names = [n.strip() for item in value for n in item.split(",") if n.strip()]
    if not names:
        return DEFAULT_EVENTS
    if "all" in names:
        return EVENT_NAMES
    for name in names:
        if name not in EVENT_NAMES:
            raise click.BadParameter(f"unknown event {name!r} (one of {', '.join(EVENT_NAMES)}, all)")
    return tuple(dict.fromkeys(names))


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    seconds = options.duration(ctx, param, value)
    if seconds is not None and seconds <= 0:
        raise click.BadParameter("must be more than 0")
    return seconds


@click.command()
@filter_options
@click.option(
    "--events", multiple=True, metavar="LIST", callback=_events,
    help="Comma-separated: connection_update, connection_closed, stats_update, "
    "bandwidth_data, or all. Default: connection_update,connection_closed.",
)
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="Exit after N events.")
@click.option("--duration", callback=_duration, metavar="SECONDS",
              help="Exit after this long, e.g. 30, 1m.")
@output_options
@pass_settings
def watch(
    settings: Settings,
    flt: api.FilterMap,
    events: tuple[str, ...],
    count: int | None,
    duration: float | None,
) -> None:
    """Print events as the daemon sends them, one line each.

    Connection events (opened or changed rows, closed rows with their final
    counters) go through the filters, applied by the daemon; stats_update and
    bandwidth_data are machine totals and are not filtered.

    With --json (or --format ndjson), one JSON object per line:
    {"event": ..., "timestamp": ..., "data": {...}}, where timestamp is when
    netmonctl received it and data is the daemon's payload.

    If the daemon goes away, watch says so on stderr, reconnects when it is
    back and carries on. `lagged` means this client fell behind and missed
    updates; it is always shown. Ctrl-C exits.

    \b
    Examples:
      netmonctl watch --proc firefox
      netmonctl watch --json |
        jq -c 'select(.event == "connection_closed") | .data.connections[]'
      netmonctl watch --events all --count 10
    """
    if settings.format == "csv":
        raise click.UsageError("watch prints lines or JSON lines (--json); csv is not supported")
    from ..live import LiveFeed, Outage, Restored  # pulls in the client (msgpack)

    as_json = settings.format in ("json", "ndjson")
    color = settings.color and not as_json
    feed = LiveFeed(settings, list(events), flt)
    deadline = None if duration is None else time.monotonic() + duration
    shown = 0
    try:
        feed.open()  # the first connection's failures are the usual exit 3/4
        for item in feed.events(deadline):
            if isinstance(item, Outage):
                _notice(f"netmond went away ({item.reason}); reconnecting...")
            elif isinstance(item, Restored):
                _notice("reconnected to netmond")
            else:
                received = time.time()
                if as_json:
                    lines = [json_line(item.method, item.payload, received)]
                else:
                    lines = readable_lines(item.method, item.payload, received, color=color)
                for line in lines:
                    click.echo(line)
                sys.stdout.flush()  # live through pipes: `watch --json | jq`
                if item.method != LAGGED:
                    shown += 1
                    if count is not None and shown >= count:
                        break
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends: exit 0, no traceback
    except BrokenPipeError:
        render.silence_stdout()  # the reader left (`| head -1`): nothing more to say
    finally:
        feed.close()


def _notice(text: str) -> None:
    click.echo(f"netmonctl: {text}", err=True)


# -- formatting (pure) --------------------------------------------------------


def json_line(event: str, data: dict[str, Any], received: float) -> str:
    """One compact NDJSON line: {"event", "timestamp", "data"}."""
    return json.dumps(
        {"event": event, "timestamp": round(received, 3), "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def readable_lines(event: str, data: dict[str, Any], received: float, color: bool = False) -> list[str]:
    """The readable form of one notification: one line per connection row,
    otherwise one line; each starts with the local time it was received."""
    stamp = render.clock(received)
    if event in (api.CONNECTION_UPDATE, api.CONNECTION_CLOSED):
        closed = event == api.CONNECTION_CLOSED
        return [
            _line(stamp, _conn_label(row, closed), _conn_text(row, closed), color)
            for row in data.get("connections") or []
        ]
    if event == api.STATS_UPDATE:
        text = f"{_rates(data.get('total_upload_speed'), data.get('total_download_speed'))}  " \
               f"{render.dash(data.get('active_connections'))} active"
        if data.get("top_app"):
            text += f"  top {render.printable(str(data['top_app']))}"
        share = unattributed_percent(data)
        if share is not None:
            text += f"  unattributed {share:.0f}%"
        return [_line(stamp, "STATS", text, color)]
    if event == api.BANDWIDTH_DATA:
        return [_line(stamp, "BW", _rates(data.get("upload"), data.get("download")), color)]
    if event == LAGGED:
        return [_line(stamp, "!", f"lagged: missed {render.dash(data.get('missed'))} updates "
                                   "(this client fell behind)", color)]
    return [_line(stamp, event.upper(), json.dumps(data, separators=(",", ":")), color)]


def _line(stamp: str, label: str, text: str, color: bool) -> str:
    tag = label.ljust(5)
    if color and label in _LABEL_COLORS:
        tag = click.style(tag, fg=_LABEL_COLORS[label])
    return f"{stamp} {tag} {text}"


def _conn_label(row: dict[str, Any], closed: bool) -> str:
    if closed:
        return "CLOSE"
    # A row is new when the daemon first saw it in this very tick.
    new = row.get("first_seen") is not None and row.get("first_seen") == row.get("last_seen")
    return "OPEN" if new else "UPD"


def _conn_text(row: dict[str, Any], closed: bool) -> str:
    local = row.get("local_addr") or "-"
    remote = row.get("remote_addr")
    peer = f"{local} -> {remote}" if remote else f"{local} -> *"
    name = render.printable(str(row.get("process_name") or "?"))
    proc = f"{name}({row['pid']})" if row.get("pid") is not None else name
    head = f"{row.get('protocol') or '-'} {peer} {row.get('state') or '-'} {proc}"
    if closed:
        return (f"{head} sent {human_bytes(row.get('bytes_sent'))} "
                f"recv {human_bytes(row.get('bytes_received'))} "
                f"after {human_duration(row.get('duration'))}")
    return f"{head} {_rates(row.get('upload_speed'), row.get('download_speed'))}"


def _rates(up: float | None, down: float | None) -> str:
    return f"↑{render.rate(up)} ↓{render.rate(down)}"

