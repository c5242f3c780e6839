"""`netmonctl interval [SECONDS]`: show or set the sampling interval."""

from __future__ import annotations

from typing import Any

import click

from .. import render
from ..options import duration, output_options
from ..session import Settings, call, pass_settings


@click.command()
@click.argument("seconds", required=False, callback=duration)
@output_options
@pass_settings
def interval(settings: Settings, seconds: float | None) -> None:
    """Show the sampling interval, or set it.

    SECONDS: e.g. 1, 0.5, 500ms, 2s. Setting it needs control rights.
    """
    if seconds is None:
        result: dict[str, Any] = {"interval": call(settings, "status")["interval"]}
        message = f"sampling interval: {render.seconds(result['interval'])}"
    else:
        # The daemon checks the range and answers invalid_params (exit 2).
        result = call(settings, "configure", {"interval": seconds})
        message = f"sampling interval set to {render.seconds(result['interval'])}"
    render.emit(settings.format, result, human=lambda: message)
