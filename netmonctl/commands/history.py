"""`netmonctl history`: total bandwidth over the last seconds."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import click

from common.models import HISTORY_FIELDS

from .. import render
from ..options import output_options
from ..render import Column, value_of
from ..session import Settings, connect, pass_settings

#: Widest sparkline drawn under the table, in characters.
SPARK_WIDTH = 60
#: Width of the bar drawn after each rate in the table, in characters.
BAR_WIDTH = 20


def _columns(tenths: bool, peak: float | None, bar_width: int) -> tuple[Column, ...]:
    """TIME, UP, DOWN, and a bar after each rate, scaled to the peak of both.

    One scale for both directions so that their bars compare; the bars are
    the first thing dropped on a narrow terminal.
    """
    time_col = Column("TIME", value_of("timestamp"), fmt=lambda ts: render.clock(ts, tenths))
    up = Column("UP", value_of("upload"), fmt=render.rate, align="right")
    down = Column("DOWN", value_of("download"), fmt=render.rate, align="right")
    if not peak:
        return (time_col, up, down)  # nothing moved: empty bars say nothing
    return (
        time_col,
        up,
        Column("", value_of("upload"), fmt=lambda v: render.bar(v, peak, bar_width), drop=1),
        down,
        Column("", value_of("download"), fmt=lambda v: render.bar(v, peak, bar_width), drop=1),
    )


@click.command()
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True, max=7 * 86400),
    default=60.0,
    show_default=True,
    metavar="N",
    help="How far back to go.",
)
@output_options
@pass_settings
def history(settings: Settings, seconds: float) -> None:
    """Show recent total bandwidth.

    Upload and download rates, one point per sample, oldest first, each
    with a bar, and a sparkline of each under the table. --json prints the
    points only.
    """
    with connect(settings) as daemon:
        result = daemon.bandwidth_history(seconds)
    render.emit(
        settings.format,
        result,
        rows_key="history",
        fields=HISTORY_FIELDS,
        human=lambda: _describe(result["history"], settings),
    )


def _describe(points: Sequence[Mapping[str, Any]], settings: Settings) -> str:
    if not points:
        return "no history yet (is monitoring on? see netmonctl status)"
    # Sub-second sampling would print the same HH:MM:SS on several lines.
    stamps = [p["timestamp"] for p in points]
    tenths = any(b - a < 1 for a, b in zip(stamps, stamps[1:]))
    peak = max((v for p in points for v in (p.get("upload"), p.get("download")) if v is not None), default=None)
    text = render.table(points, _columns(tenths, peak, BAR_WIDTH), color=settings.color, width=settings.width)
    # One character per point, averaged into SPARK_WIDTH when there are more.
    most = min(SPARK_WIDTH, len(points))
    lines = [render.sparkline_row(label, [p.get(key) for p in points], settings.width, most=most)
             for label, key in (("up", "upload"), ("down", "download"))]
    return text + "\n\n" + "\n".join(lines)
