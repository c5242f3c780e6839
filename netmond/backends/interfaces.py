"""Interface byte counters, the same on every platform (psutil)."""

from __future__ import annotations

import psutil

from common.ostext import os_text

from .base import InterfaceSample

_LOOPBACK_NAMES = ("lo", "lo0")


def _is_loopback(name: str) -> bool:
    return name in _LOOPBACK_NAMES or name.startswith("lo:")


def sample_interfaces() -> list[InterfaceSample]:
    """Cumulative counters of every interface; never raises."""
    try:
        counters = psutil.net_io_counters(pernic=True, nowrap=True)
    except (OSError, psutil.Error):
        return []
    return [
        InterfaceSample(os_text(name), c.bytes_sent, c.bytes_recv, _is_loopback(name))
        for name, c in counters.items()
    ]
