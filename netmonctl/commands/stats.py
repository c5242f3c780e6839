"""`netmonctl stats`: machine totals, interfaces, and what the sockets explain."""

from __future__ import annotations

from typing import Any, Mapping

import click

from common.units import human_bytes, human_duration, human_percent

from .. import render
from ..options import output_options
from ..render import Column, value_of
from ..session import Settings, connect, pass_settings

INTERFACE_COLUMNS = (
    Column("INTERFACE", value_of("name")),
    *render.traffic_columns(),
)


@click.command()
@output_options
@pass_settings
def stats(settings: Settings) -> None:
    """Show totals, interfaces and attribution.

    Total rates and bytes, per-interface figures, and how much of the traffic
    per-socket counters attribute to processes (the rest is unattributed:
    UDP, packet headers). "process unknown" is the socket bytes whose process
    could not be known (connections that closed before it was seen).

    csv prints the Stats map as one row (interfaces as JSON); use --json
    for the per-interface rows.
    """
    with connect(settings) as daemon:
        result = daemon.stats()
    render.emit(settings.format, result, human=lambda: _describe(result, settings))


def _share(part: float | None, total: float | None) -> str:
    """part as a rate and its percentage of total ('-' when there is no total)."""
    if part is None:
        return "-"
    pct = f" ({human_percent(part, total)})" if total else ""
    return render.rate(part) + pct


def _unknown_process(s: Mapping[str, Any]) -> str:
    """Socket bytes whose process is unknown, and their share of all socket bytes."""
    sent, received = s.get("unknown_process_bytes_sent"), s.get("unknown_process_bytes_received")
    if sent is None or received is None:
        return "-"
    total = (s.get("socket_bytes_sent") or 0) + (s.get("socket_bytes_received") or 0)
    share = f" ({human_percent(sent + received, total)} of socket bytes)" if total else ""
    return f"{human_bytes(sent)} sent, {human_bytes(received)} received since start{share}"


#: How stats shows include_loopback (unknown: "-").
_LOOPBACK: dict[Any, str] = {True: "monitored and counted", False: "not monitored (include_loopback = false)"}


def _describe(s: Mapping[str, Any], settings: Settings) -> str:
    up, down = s.get("total_upload_speed"), s.get("total_download_speed")
    summary = render.key_values(
        [
            ("upload", f"{render.rate(up)}  ({human_bytes(s.get('total_bytes_sent'))} since start)"),
            ("download", f"{render.rate(down)}  ({human_bytes(s.get('total_bytes_received'))} since start)"),
            ("attributed", f"up {_share(s.get('attributed_upload_speed'), up)}, "
                           f"down {_share(s.get('attributed_download_speed'), down)}"),
            ("unattributed", f"up {_share(s.get('unattributed_upload_speed'), up)}, "
                             f"down {_share(s.get('unattributed_download_speed'), down)}"),
            ("process unknown", _unknown_process(s)),
            ("connections", render.connection_counts(s)),
            ("loopback", _LOOPBACK.get(s.get("include_loopback"), "-")),
            ("top app", render.safe(s.get("top_app"))),
            ("monitoring", ("yes" if s.get("monitoring") else "no")
             + f", every {render.seconds(s.get('interval'))}, up {human_duration(s.get('uptime'))}"),
        ]
    )
    interfaces = render.table(
        s.get("interfaces") or [], INTERFACE_COLUMNS, color=settings.color, width=settings.width
    )
    return summary + ("\n\n" + interfaces if interfaces else "")
