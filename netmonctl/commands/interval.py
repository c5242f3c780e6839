"""`netmonctl interval [SECONDS]`: show or set the sampling interval."""

from __future__ import annotations

from typing import Any

import click

from .. import render
from ..options import INTERVAL_RANGE, duration, output_options
from ..session import Settings, connect, pass_settings


def _interval(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    seconds = duration(ctx, param, value)
    low, high = INTERVAL_RANGE
    if seconds is not None and not low <= seconds <= high:
        raise click.BadParameter(f"{value}: the interval must be between {low:g} and {high:g} seconds")
    return seconds


# ignore_unknown_options: "-1" is a (wrong) value to explain, not an unknown option.
@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("seconds", required=False, callback=_interval)
@output_options
@pass_settings
def interval(settings: Settings, seconds: float | None) -> None:
    """Show the sampling interval, or set it.

    SECONDS: e.g. 1, 0.5, 500ms, 2s; from 0.1 to 3600. Setting it needs
    control rights. On macOS nettop samples in whole seconds (1.5 gives
    2): the output says so when the interval it really samples at differs.
    """
    if seconds is None:
        with connect(settings) as daemon:
            status = daemon.status()
        result: dict[str, Any] = {"interval": status["interval"]}
        effective = status.get("effective_interval")
        if effective is not None and abs(effective - status["interval"]) > 1e-6:
            result["effective_interval"] = effective
        message = f"sampling interval: {render.seconds(result['interval'])}"
    else:
        # The daemon checks the range and answers invalid_params (exit 2).
        with connect(settings) as daemon:
            result = dict(daemon.configure(seconds))
        message = f"sampling interval set to {render.seconds(result['interval'])}"
    message += _effective_note(result)
    render.emit(settings.format, result, human=lambda: message)


def _effective_note(result: dict[str, Any]) -> str:
    """Where the OS source can't sample as asked (macOS nettop: whole seconds)."""
    effective = result.get("effective_interval")
    if effective is None or abs(effective - result["interval"]) < 1e-6:
        return ""
    return f" (the backend samples every {render.seconds(effective)}: nettop takes whole seconds)"
