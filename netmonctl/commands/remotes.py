"""`netmonctl remotes`: who the machine talks to, one row per remote address."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import click

from common import api
from common.models import REMOTE_FIELDS

from .. import render
from ..options import filter_options, numeric_option, output_options, sort_options
from ..render import Column, value_of
from ..session import Settings, connect, pass_settings
from ..sorting import order_rows

#: Process names listed in a table cell before "+N".
SHOWN_APPS = 3


def apps_cell(names: Sequence[str] | None, shown: int = SHOWN_APPS) -> str:
    """'firefox,curl +2': the first names, then how many more; none -> '-'."""
    if not names:
        return "-"
    text = ",".join(render.printable(str(n)) for n in names[:shown])
    return text + (f" +{len(names) - shown}" if len(names) > shown else "")


def remote_label(row: Mapping[str, Any], numeric: bool) -> str:
    """The REMOTE cell: name (or address) and port, marked when the figures are partial."""
    return render.remote_end(row, numeric) + (render.PARTIAL_MARK if row.get("partial") else "")


def columns(numeric: bool = False) -> tuple[Column, ...]:
    return (
        Column("REMOTE", lambda row: remote_label(row, numeric), fmt=str),
        # The address beside the name (with -n, REMOTE is the address already).
        *(() if numeric else (Column("ADDRESS", value_of("remote_ip"), fmt=render.safe, drop=3),)),
        Column("CONNS", value_of("connections"), align="right", drop=1),
        Column("PROCESSES", value_of("apps"), fmt=apps_cell, drop=2),
        *render.traffic_columns(bytes_drop=4),
    )


@click.command()
@filter_options
@click.option("--by-port", is_flag=True, help="One row per remote service (address and port) instead of per address.")
@numeric_option
@sort_options(REMOTE_FIELDS)
@output_options
@pass_settings
def remotes(
    settings: Settings,
    flt: api.FilterMap,
    by_port: bool,
    numeric: bool,
    sort_field: str,
    reverse: bool,
    limit: int | None,
) -> None:
    """List the remote hosts this machine talks to, by bandwidth.

    One row per remote address (with --by-port, per address and port): its
    name where the daemon knows it, the current rates of its open
    connections, bytes since start or clear (recently closed connections
    included), active connections and the processes talking to it. Names come from the hosts file and reverse
    DNS, looked up by the daemon in the background (netmond --no-resolve
    turns that off); -n shows addresses only.

    With filters, each remote's figures are those of its matching
    connections, e.g. `remotes --proc firefox` shows whom firefox talks to.

    \b
    Examples:
      netmonctl remotes --limit 10
      netmonctl remotes --by-port --scope internet
      netmonctl remotes --host google --json
    """
    with connect(settings) as daemon:
        result = daemon.remotes(flt, by_port=by_port)
    rows = order_rows(result["remotes"], sort_field, reverse, limit)
    render.emit(
        settings.format,
        {"remotes": rows},
        rows_key="remotes",
        fields=REMOTE_FIELDS,
        human=lambda: _describe(rows, settings, numeric),
    )


def _describe(rows: Sequence[Mapping[str, Any]], settings: Settings, numeric: bool) -> str:
    text = render.table(rows, columns(numeric), color=settings.color, width=settings.width,
                        empty="no remotes match")
    note = render.partial_note(rows)
    return text + ("\n\n" + note if note else "")
