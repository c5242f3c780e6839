"""Click options shared by several commands, so that none repeats them.

- output_options: --json / --format / --no-color / --bits, on the root group AND on
  every command (people type `netmonctl conns --json`); a command's own
  choice wins over the global one.
- filter_options: the connection filter of docs/PROTOCOL.md §8, validated by
  common.models.Filter (the daemon's own validator, so the CLI and the daemon
  cannot disagree) and handed to the command as one wire map `flt`.
- sort_options: --sort / --reverse / --limit.
- duration: the callback of a SECONDS value (1, 0.5, 500ms, 2s, 1m).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence, cast

import click

from common import api
from common.models import SCOPES, Filter, FilterError
from common.units import parse_duration

from .session import FORMATS, Settings
from .sorting import sort_choices

F = Callable[..., Any]


# -- output ----------------------------------------------------------------


def _set_format(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    # Called for the root group and again for the command: only an option
    # that was actually given changes the format, so the last one given wins
    # between the two levels; within one level, --json and another --format
    # contradict each other and are refused.
    if not value:
        return
    wanted = "json" if param.name == "json" else value.lower()
    # Per level: ctx.meta is shared by nested contexts, so key it by this one.
    given = ctx.meta.setdefault(f"netmon.formats.{id(ctx)}", {})
    given[param.name] = wanted
    if len(set(given.values())) > 1:
        raise click.UsageError(
            f"--json and --format {given['format']} contradict each other: give one of them", ctx
        )
    ctx.ensure_object(Settings).format = wanted


def _set_no_color(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Settings).no_color = True


#: --json's help on commands that print what the daemon answers.
DAEMON_JSON = "Print the daemon's JSON as is (same as --format json)."


def color_option(f: F) -> F:
    """Add --no-color alone (for screens, which have no other output format)."""
    return click.option(
        "--no-color",
        is_flag=True,
        expose_value=False,
        callback=_set_no_color,
        help="Never colour output (also: NO_COLOR=1, TERM=dumb).",
    )(f)


def _set_bits(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from . import render

        render.use_bits(True)


def bits_option(f: F) -> F:
    """Add --bits: rates in bits per second in tables and lines (JSON keeps bytes/s)."""
    return click.option(
        "--bits",
        is_flag=True,
        expose_value=False,
        callback=_set_bits,
        help="Show rates in bits per second (kbps, Mbps) instead of bytes; JSON keeps bytes/s.",
    )(f)


def output_options(f: F | None = None, *, json_help: str = DAEMON_JSON) -> Any:
    """Add --json, --format and --no-color; they write to the context's Settings.

    `@output_options` on commands that print the daemon's answers;
    `@output_options(json_help=...)` where --json means something else.
    """

    def decorate(f: F) -> F:
        f = bits_option(f)
        f = color_option(f)
        f = click.option(
            "--format",
            type=click.Choice(FORMATS, case_sensitive=False),
            expose_value=False,
            callback=_set_format,
            help="Output format (default: table).",
        )(f)
        f = click.option(
            "--json",
            is_flag=True,
            expose_value=False,
            callback=_set_format,
            help=json_help,
        )(f)
        return f

    return decorate(f) if f is not None else decorate


# -- durations ---------------------------------------------------------------

#: The sampling intervals the daemon accepts, in seconds (netmond.config checks the same).
INTERVAL_RANGE = (0.1, 3600.0)



def duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Callback for a SECONDS option or argument: '1.5', '500ms', '2s', '1m' -> seconds."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


# -- filters -----------------------------------------------------------------

#: Filter keys (wire names), in the order the options are declared.
FILTER_KEYS = (
    "proc",
    "pid",
    "proto",
    "state",
    "scope",
    "remote_only",
    "listening",
    "port",
    "ip",
    "search",
    "family",
    "host",
)


def _validate(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Check one option with the daemon's Filter rules; return the wire value."""
    # Unset: no value, no --state, or a flag left off (--no-listening is a
    # criterion, so only remote_only's False means "any").
    if value is None or value == () or (param.name == "remote_only" and not value):
        return None
    try:
        checked = Filter.from_wire({param.name: list(value) if isinstance(value, tuple) else value})
    except FilterError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None
    return checked.to_wire()[param.name]


class PidType(click.ParamType):
    """One process id; says so for ranges and lists, which it does not take."""

    name = "pid"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if text.isdigit():
            return int(text)
        self.fail(f"{value!r} is not a process id: give one number, e.g. --pid 1234 "
                  "(for several processes of one program use --proc NAME)", param, ctx)


_FILTER_OPTIONS: tuple[Callable[[F], F], ...] = (
    click.option("--proc", metavar="NAME", callback=_validate,
                 help="Process name contains NAME (case-insensitive)."),
    click.option("--pid", type=PidType(), metavar="N", callback=_validate,
                 help="Process id (one number)."),
    click.option("--proto", type=click.Choice(["tcp", "udp"], case_sensitive=False),
                 callback=_validate, help="Protocol."),
    click.option("--state", multiple=True, metavar="STATE", callback=_validate,
                 help="TCP state, e.g. ESTABLISHED, LISTEN, TIME_WAIT (UDP: NONE). Repeatable."),
    click.option("--scope", type=click.Choice(SCOPES), callback=_validate,
                 help="Where the peer is."),
    click.option("--remote-only", is_flag=True, callback=_validate,
                 help="Only connections with a non-loopback peer."),
    click.option("--listening/--no-listening", default=None, callback=_validate,
                 help="Only listeners (TCP LISTEN, unconnected UDP), or none of them."),
    click.option("--port", type=click.IntRange(0, 65535), metavar="N", callback=_validate,
                 help="Local or remote port."),
    click.option("--ip", metavar="ADDR|CIDR", callback=_validate,
                 help="Local or remote address, or a network such as 10.0.0.0/8."),
    click.option("--search", metavar="TEXT", callback=_validate,
                 help="TEXT in the process name, an address or the remote's name, or equal to a port or pid."),
    click.option("--family", type=click.Choice(["4", "6"]), callback=_validate,
                 help="IPv4 or IPv6."),
    click.option("--host", metavar="TEXT", callback=_validate,
                 help="The remote's name contains TEXT (case-insensitive); rows without a name never "
                 "match. (-H/--host before the command names the daemon's machine.)"),
)


def build_filter(values: dict[str, Any]) -> api.FilterMap:
    """The wire filter map: the criteria that are set, and nothing else."""
    # Each option converts to the type FilterMap gives its key.
    return cast(api.FilterMap, {key: values[key] for key in FILTER_KEYS if values.get(key) is not None})


def filter_options(f: F) -> F:
    """Add the filter options; the command receives them as one map `flt`."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["flt"] = build_filter({key: kwargs.pop(key) for key in FILTER_KEYS})
        return f(*args, **kwargs)

    decorated: Callable[..., Any] = wrapper
    for option in reversed(_FILTER_OPTIONS):
        decorated = option(decorated)
    return decorated


def numeric_option(f: F) -> F:
    """Add -n/--numeric: addresses instead of the remotes' names (as nettop -n); the command gets `numeric`."""
    return click.option("-n", "--numeric", is_flag=True,
                        help="Show remote addresses, not their names (JSON has both).")(f)


# -- sorting -------------------------------------------------------------------


def sort_options(fields: Sequence[str]) -> Callable[[F], F]:
    """Add --sort (speed, bytes or any of `fields`), --reverse and --limit."""

    def decorate(f: F) -> F:
        f = click.option("--limit", type=click.IntRange(min=1), metavar="N",
                         help="Show at most N rows.")(f)
        f = click.option("--reverse", is_flag=True, help="Reverse the order.")(f)
        f = click.option(
            "--sort", "sort_field",
            type=click.Choice(sort_choices(fields), case_sensitive=False),
            default="speed", show_default=True, metavar="FIELD",
            help="speed (total rate, then bytes), bytes, or any field of the JSON rows. "
            "Numbers sort largest first, text A-Z; unknown values always last.",
        )(f)
        return f

    return decorate
