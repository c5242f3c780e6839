"""`netmonctl apps`: bandwidth and totals per application."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import click

from common import api
from common.models import APP_FIELDS

from .. import render
from ..options import filter_options, output_options, sort_options
from ..render import Column, value_of
from ..session import Settings, connect, pass_settings
from ..sorting import order_rows

#: pids listed in a table cell before "+N more".
SHOWN_PIDS = 3


COLUMNS = (
    Column("PROCESS", render.app_label, fmt=str),
    Column("PIDS", value_of("pids"), fmt=lambda v: render.pids(v, SHOWN_PIDS), drop=2),
    Column("CONNS", value_of("connections"), align="right", drop=1),
    *render.traffic_columns(),
)


@click.command()
@filter_options
@sort_options(APP_FIELDS)
@output_options
@pass_settings
def apps(
    settings: Settings,
    flt: api.FilterMap,
    sort_field: str,
    reverse: bool,
    limit: int | None,
) -> None:
    """List applications by bandwidth.

    Current rates, and bytes since start or clear (closed connections included).
    CONNS counts active connections (not listeners, not TIME_WAIT). "(process
    unknown)" is the bytes of sockets whose process could not be known (a
    client that connected and closed between two samples); "-" is unknown
    (no byte counters: UDP on Linux); "*" marks partial figures.

    With filters, each application's figures are those of its matching
    connections (open and recently closed), e.g. `apps --pid 123` shows that
    process only; --proc alone lists whole applications, idle ones included.
    """
    with connect(settings) as daemon:
        result = daemon.apps(flt)
    rows = order_rows(result["apps"], sort_field, reverse, limit)
    render.emit(
        settings.format,
        {"apps": rows},
        rows_key="apps",
        fields=APP_FIELDS,
        human=lambda: _describe(rows, settings),
    )


def _describe(rows: Sequence[Mapping[str, Any]], settings: Settings) -> str:
    text = render.table(rows, COLUMNS, color=settings.color, width=settings.width, empty="no applications match")
    note = render.partial_note(rows)
    return text + ("\n\n" + note if note else "")
