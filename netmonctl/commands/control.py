"""`netmonctl start|stop|clear`: the daemon's `control` method.

The three commands share one RPC and one output, so they share one module.
"""

from __future__ import annotations

import click

from common import api

from .. import render
from ..options import output_options
from ..session import Settings, connect, pass_settings


def _control(settings: Settings, action: api.ControlAction, done: str) -> None:
    with connect(settings) as daemon:
        result = daemon.control(action)
    render.emit(settings.format, result, human=lambda: done)


@click.command()
@output_options
@pass_settings
def start(settings: Settings) -> None:
    """Resume sampling (rates restart from the next sample)."""
    _control(settings, api.START, "monitoring started")


@click.command()
@output_options
@pass_settings
def stop(settings: Settings) -> None:
    """Pause sampling; totals and history are kept."""
    _control(settings, api.STOP, "monitoring stopped")


@click.command()
@output_options
@pass_settings
def clear(settings: Settings) -> None:
    """Zero totals and history.

    Also forgets recently closed connections; open ones stay listed.
    """
    _control(settings, api.CLEAR, "totals and history cleared")
