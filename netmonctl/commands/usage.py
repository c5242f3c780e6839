"""`netmonctl usage`: bytes per app, remote, day or hour, kept by the daemon over days."""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping, cast

import click

from common.api import FilterMap
from common.models import SCOPES
from common.units import human_bytes, parse_time

from .. import render
from ..options import _validate, output_options
from ..render import Column, value_of
from ..session import Settings, connect, pass_settings

#: What --by takes: one key, or two (the first is the row's main key).
BY_CHOICES = ("app", "remote", "day", "hour", "day,app", "day,remote", "hour,app", "hour,remote",
              "app,remote", "remote,app")
#: Width of the bar after each row of a table by day or hour, in characters.
BAR_WIDTH = 24
#: Fields of a row in csv, in this order (those of the --by keys only).
CSV_FIELDS = ("day", "hour", "app", "remote", "remote_host", "apps", "bytes_sent", "bytes_received")


def _time(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Check a --since/--until/--before value here (same rules as the daemon), pass it on as given:
    the daemon resolves it, so that 'today' is the daemon's day."""
    if value is None:
        return None
    try:
        parse_time(value, time.time())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.command()
@click.option("--since", callback=_time, metavar="WHEN",
              help="From then: 24h, 7d, 2w, today, yesterday, 2026-12-01, '2026-12-01 18:00' or epoch "
                   "seconds. Default: 30d with --by day, else 24h.")
@click.option("--until", callback=_time, metavar="WHEN", help="Up to then (same forms; default: now).")
@click.option("--by", "by", type=click.Choice(BY_CHOICES, case_sensitive=False), default="app",
              show_default=True, metavar="KEY[,KEY]",
              help="Group by app, remote (address), day or hour, or two of them: day,app, day,remote, "
                   "hour,app, hour,remote, app,remote, remote,app.")
@click.option("--proc", metavar="NAME", callback=_validate, help="Only apps whose name contains NAME.")
@click.option("--ip", metavar="ADDR|CIDR", callback=_validate, help="Only bytes to and from that remote address or network.")
@click.option("--scope", type=click.Choice(SCOPES), callback=_validate, help="Only remotes of that scope.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Only the N largest rows.")
@click.option("--forget", is_flag=True, help="Delete the stored usage instead (all, or --before DATE).")
@click.option("--before", callback=_time, metavar="WHEN", help="With --forget: only usage that ended by then.")
@click.option("--yes", is_flag=True, help="With --forget: do not ask (it asks on a terminal only).")
@output_options
@pass_settings
def usage(settings: Settings, since: str | None, until: str | None, by: str, proc: str | None,
          ip: str | None, scope: str | None, limit: int | None, forget: bool, before: str | None,
          yes: bool) -> None:
    """Show usage over days: bytes per app, remote, day or hour.

    The daemon stores what every app sent and received, per hour (closed
    connections included, the same bytes `apps` counts), on disk, so it
    survives restarts; hours older than 35 days are kept per day. Days are
    the daemon's local days. The table ends with the total; by day or hour,
    each row has a bar. "(process unknown)" is the bytes of sockets whose
    process could not be known.

    \b
      netmonctl usage --since today             # today's top apps
      netmonctl usage --by day --since 30d      # a month, per day
      netmonctl usage --by remote --proc curl   # what one app talks to
      netmonctl usage --forget --before 2026-01-01
    """
    if forget:
        if since or until or proc or ip or scope or limit or by != "app":
            raise click.UsageError("--forget takes --before only")
        _forget(settings, before, yes)
        return
    if before is not None:
        raise click.UsageError("--before goes with --forget (to show usage up to a time: --until)")
    keys = by.lower().split(",")
    if since is None:
        since = "30d" if "day" in keys else "24h"
    flt = cast(FilterMap, {k: v for k, v in (("proc", proc), ("ip", ip), ("scope", scope)) if v is not None})
    with connect(settings) as daemon:
        result: dict[str, Any] = dict(daemon.usage(since=since, until=until, by=keys, filter=flt, limit=limit))
    rows = result["usage"]
    render.emit(
        settings.format,
        result,
        rows_key="usage",
        fields=[f for f in CSV_FIELDS if f in keys or f.startswith("bytes_")
                or (f == "remote_host" and "remote" in keys) or (f == "apps" and "remote" in keys
                                                                 and "app" not in keys)],
        human=lambda: _describe(rows, keys, result, settings),
    )


def _forget(settings: Settings, before: str | None, yes: bool) -> None:
    what = "all stored usage" if before is None else f"stored usage that ended by {before}"
    if not yes and sys.stdin.isatty() and sys.stdout.isatty():
        click.confirm(f"Delete {what}?", abort=True)
    with connect(settings) as daemon:
        result: dict[str, Any] = dict(daemon.forget(before))
    render.emit(settings.format, result, human=lambda: f"deleted {what} ({result['deleted']} rows)")


def _hour(ts: Any) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:00", time.localtime(ts))


def _app(name: Any) -> str:
    return render.UNKNOWN_PROCESS_LABEL if name is None else render.printable(str(name))


def _apps(names: Any) -> str:
    return ", ".join(_app(n) for n in names or [])


def _total(row: Mapping[str, Any]) -> int:
    return (row.get("bytes_sent") or 0) + (row.get("bytes_received") or 0)


def _describe(rows: list[dict[str, Any]], keys: list[str], result: dict[str, Any], settings: Settings) -> str:
    span = f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(result['since']))} to " \
           f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(result['until']))}"
    if not rows:
        return f"no usage stored from {span}"
    columns: list[Column] = []
    for key in keys:
        if key == "day":
            columns.append(Column("DAY", value_of("day"), fmt=str))
        elif key == "hour":
            columns.append(Column("HOUR", value_of("hour"), fmt=_hour))
        elif key == "app":
            columns.append(Column("APP", value_of("app"), fmt=lambda v: v if v == "TOTAL" else _app(v)))
        else:
            columns.append(Column("REMOTE", value_of("remote"), fmt=lambda v: render.printable(str(v))))
            columns.append(Column("HOST", value_of("remote_host"), fmt=lambda v: "" if v is None
                                  else render.printable(str(v)), drop=2))
            if "app" not in keys:
                columns.append(Column("APPS", value_of("apps"), fmt=_apps, drop=3))
    columns += [
        Column("SENT", value_of("bytes_sent"), fmt=human_bytes, align="right"),
        Column("RECV", value_of("bytes_received"), fmt=human_bytes, align="right"),
        Column("TOTAL", _total, fmt=human_bytes, align="right"),
    ]
    if keys[0] in ("day", "hour"):
        peak = max(_total(r) for r in rows)
        columns.append(Column("", _total, fmt=lambda v: render.bar(v, peak, BAR_WIDTH) if v is not None else "",
                              drop=1))
    total: dict[str, Any] = {key: None for key in keys}
    total[keys[0]] = "TOTAL"
    total["bytes_sent"] = sum(r.get("bytes_sent") or 0 for r in rows)
    total["bytes_received"] = sum(r.get("bytes_received") or 0 for r in rows)
    shown = rows + [total]
    # The total row has no bar and no second key.
    columns = [_total_aware(c, keys[0]) for c in columns]
    text = render.table(shown, columns, color=settings.color, width=settings.width)
    return f"usage from {span}, by {','.join(keys)}\n\n{text}"


def _total_aware(col: Column, first: str) -> Column:
    """The column, printing the TOTAL row's cells as a total line."""
    fmt = col.fmt

    def cell(row: Mapping[str, Any]) -> Any:
        return (True, row) if row.get(first) == "TOTAL" else (False, col.value(row))

    def show(value: Any) -> str:
        is_total, v = value
        if not is_total:
            return fmt(v)
        if col.header in ("DAY", "HOUR", "APP", "REMOTE"):
            return "TOTAL" if v.get(first) == "TOTAL" and _header_key(col.header) == first else ""
        if col.header in ("SENT", "RECV", "TOTAL"):
            return fmt(col.value(v))
        return ""

    return Column(col.header, cell, fmt=show, align=col.align, drop=col.drop, color=None)


def _header_key(header: str) -> str:
    return {"DAY": "day", "HOUR": "hour", "APP": "app", "REMOTE": "remote"}[header]
