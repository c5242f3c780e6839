"""`netmonctl conns`: the connection table."""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from common import api
from common.models import CONNECTION_FIELDS
from common.units import human_duration

from .. import render
from ..options import filter_options, numeric_option, output_options, sort_options
from ..render import Column, value_of
from ..session import Settings, connect, pass_settings
from ..sorting import order_rows

#: Longest process name shown in a table cell; the JSON has the full name.
PROCESS_WIDTH = 24

# Column drop order when the terminal is narrow: totals and age first, then
# pid; addresses, state, process and rates always stay.
COLUMNS = (
    Column("PROTO", value_of("protocol")),
    Column("LOCAL", value_of("local_addr")),
    Column("REMOTE", value_of("remote_addr")),
    Column("STATE", value_of("state"), color=render.state_color),
    Column("PID", value_of("pid"), align="right", drop=3),
    Column("PROCESS", value_of("process_name"),
           fmt=lambda v: render.clip(render.safe(v), PROCESS_WIDTH)),
    *render.traffic_columns(bytes_drop=4),
    Column("AGE", value_of("duration"), fmt=human_duration, align="right", drop=5),
)


def columns(numeric: bool = False) -> tuple[Column, ...]:
    """The table's columns; REMOTE shows the remote's name where known, its address when `numeric`."""
    remote = Column("REMOTE", lambda row: render.remote_end(row, numeric), fmt=str)
    return (COLUMNS[0], COLUMNS[1], remote, *COLUMNS[3:])


@click.command()
@filter_options
@click.option("--closed", is_flag=True, help="Also list recently closed connections, sorted with the open ones.")
@numeric_option
@sort_options(CONNECTION_FIELDS)
@output_options
@pass_settings
def conns(
    settings: Settings,
    flt: api.FilterMap,
    closed: bool,
    numeric: bool,
    sort_field: str,
    reverse: bool,
    limit: int | None,
) -> None:
    """List connections with their process and traffic.

    The daemon applies the filters; all of them must hold. REMOTE shows the
    remote's name where the daemon knows it (hosts file, reverse DNS; see
    netmonctl remotes), -n its address.

    With --json (and --format ndjson or csv), rows come in the daemon's
    order (open ones, then closed ones), printed as they arrive, unless
    --sort or --limit is given; each row is the daemon's Connection as sent: first_seen, last_seen and closed_at are Unix epoch
    seconds (floats), duration is seconds, bytes_sent/bytes_received are
    bytes, upload_speed/download_speed are bytes per second over the latest
    sampling interval, and null (empty in csv) means unknown, never 0.
    docs/PROTOCOL.md describes every field.

    \b
    Examples:
      netmonctl conns --proc firefox --state ESTABLISHED
      netmonctl conns --port 443 --sort bytes --limit 10
      netmonctl conns --ip 10.0.0.0/8 --remote-only
      netmonctl conns --host example.com -n
      netmonctl conns --json | jq '.connections[] | .remote_addr'
    """
    ctx = click.get_current_context()
    if (settings.format in render.MACHINE_FORMATS and limit is None
            and ctx.get_parameter_source("sort_field") is ParameterSource.DEFAULT):
        # Machine output in the daemon's order: printed as the daemon streams
        # it, so that neither side holds 100,000 rows at once.
        with connect(settings) as daemon:
            render.emit_rows_streamed(settings.format, "connections",
                                      daemon.connections_streamed(flt, include_closed=closed),
                                      CONNECTION_FIELDS)
        return
    with connect(settings) as daemon:
        # Streamed too: the daemon never holds the whole reply, even though
        # sorting needs every row here.
        every = [row for chunk in daemon.connections_streamed(flt, include_closed=closed) for row in chunk]
    # One order over open and closed rows: the biggest closed transfer must be
    # able to reach the top (a closed row's rate is 0: under `speed` it ranks with idle rows, by bytes).
    rows = order_rows(every, sort_field, reverse, limit)
    render.emit(
        settings.format,
        {"connections": rows},
        rows_key="connections",
        fields=CONNECTION_FIELDS,
        human=lambda: render.table(
            rows, columns(numeric), color=settings.color, width=settings.width, empty="no connections match"
        ),
    )
