"""`netmonctl status`: is the daemon sampling, how, and at what cost."""

from __future__ import annotations

import time
from typing import Any, Mapping

import click

from common.units import human_bytes, human_duration

from .. import render
from ..options import output_options
from ..session import Settings, connect, pass_settings


@click.command()
@output_options
@pass_settings
def status(settings: Settings) -> None:
    """Show the daemon's state and warnings.

    Also its backend, uptime, clients and own CPU and memory use.
    """
    with connect(settings) as daemon:
        result = daemon.status()
    render.emit(settings.format, result, human=lambda: _describe(result))


def _yes(value: Any) -> str:
    return "-" if value is None else "yes" if value else "no"


def _root_mode(mode: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The 'root mode' line (Linux backend only): on or off, and why."""
    if not mode:
        return []
    return [("root mode", f"{'on' if mode.get('active') else 'off'} ({mode.get('reason')})")]


def _names(resolve: bool | None) -> list[tuple[str, str]]:
    """The remote-names line (none from a daemon too old to say)."""
    if resolve is None:
        return []
    if resolve:
        return [("remote names", "on (hosts file, reverse DNS in the background; netmond --no-resolve turns it off)")]
    return [("remote names", "off (--no-resolve: no DNS query is sent; conns and remotes show addresses)")]
def _usage_store(store: Mapping[str, Any] | None) -> str:
    """The 'usage store' line: where, how big, when last written, or off."""
    if store is None:
        return "off (store_usage = false)"
    text = f"{store.get('path')}, {human_bytes(store.get('size_bytes'))}"
    if not store.get("storing"):
        return text + ", NOT STORING (see warnings)"
    written = store.get("written_at")
    if written is not None:
        text += f", written {human_duration(max(0.0, time.time() - written))} ago"
    return text + f", kept {store.get('retention_days')} days"


def _describe(s: Mapping[str, Any]) -> str:
    # The daemon may add fields over time: read them with .get().
    monitoring = "yes" if s.get("monitoring") else "no (resume with: netmonctl start)"
    if s.get("monitoring"):
        monitoring += f", every {render.seconds(s.get('interval'))}"
        effective = s.get("effective_interval")
        if s.get("backed_off") and effective is not None:
            monitoring += (f" (backed off: sampling every {render.seconds(effective)}, "
                           "ticks take longer than the interval)")
        elif effective is not None and s.get("interval") is not None and abs(effective - s["interval"]) > 1e-6:
            monitoring += f" (the backend samples every {render.seconds(effective)})"
        if s.get("sample_age") is not None:
            monitoring += f", last sample {render.seconds(s.get('sample_age'))} ago"
    cpu, window = s.get("cpu_percent"), s.get("cpu_window_seconds")
    over = "" if cpu is None or window is None else f" over the last {window:.0f}s"
    cost = f"{'-' if cpu is None else f'{cpu:.1f}%'} CPU{over}, {human_bytes(s.get('rss_bytes'))} RSS"
    return render.key_values(
        [
            ("monitoring", monitoring),
            ("backend", f"{s.get('backend')} (per-socket bytes: {_yes(s.get('per_socket_bytes'))}, "
                        f"privileged: {_yes(s.get('privileged'))})"),
            *_root_mode(s.get("root_mode")),
            ("uptime", human_duration(s.get("uptime"))),
            ("connections", render.connection_counts(s)
                            + f"; {render.dash(s.get('closed_retained'))} recently closed"),
            *_names(s.get("resolve")),
            ("clients", s.get("clients")),
            ("daemon", f"netmond {render.dash(s.get('version'))}, pid {render.dash(s.get('pid'))}, {cost}"),
            ("socket", s.get("socket")),
            *([("usage store", _usage_store(s.get("usage_store")))] if "usage_store" in s else []),
            ("warnings", list(s.get("warnings") or [])),
        ]
    )
