"""Human renderings of bytes, rates and durations (docs/DESIGN.md §6).

Decimal units (kB = 1000 B), as nettop, bandwhich and network gear use.
Unknown values (None) render as "-": never as 0.
"""

from __future__ import annotations

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def human_bytes(n: float | None) -> str:
    """12345678 -> '12.3 MB'; None -> '-'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1000 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"  # pragma: no cover - loop always returns


def human_rate(bps: float | None) -> str:
    """1500000 -> '1.5 MB/s'; None -> '-'."""
    if bps is None:
        return "-"
    return human_bytes(bps) + "/s"


_BIT_UNITS = ("bps", "kbps", "Mbps", "Gbps", "Tbps", "Pbps")


def human_bits(bps: float | None) -> str:
    """A rate given in BYTES per second, shown in bits: 1500000 -> '12.0 Mbps'; None -> '-'."""
    if bps is None:
        return "-"
    value = float(bps) * 8
    for unit in _BIT_UNITS:
        if abs(value) < 1000 or unit == _BIT_UNITS[-1]:
            return f"{int(value)} bps" if unit == "bps" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} Pbps"  # pragma: no cover - loop always returns


def human_duration(seconds: float | None) -> str:
    """192 -> '3m 12s'; 7322 -> '2h 2m'; 90061 -> '1d 1h'; None -> '-'."""
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{s}s"


def parse_duration(text: str) -> float:
    """'1.5', '500ms', '2s', '1m' -> seconds; ValueError with a clear message."""
    t = text.strip().lower()
    scale = 1.0
    for suffix, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if t.endswith(suffix):
            t, scale = t[: -len(suffix)], mult
            break
    try:
        value = float(t) * scale
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 1, 0.5, 500ms, 2s, 1m)") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"not a finite duration: {text!r}")
    return value


def human_percent(part: float, total: float) -> str:
    """part / total as a whole percentage that never claims all or nothing
    when it is not: 99.6% is ">99%", 0.3% is "<1%", only exactly all is "100%"."""
    if total <= 0:
        return "-"
    pct = 100 * part / total
    if 0 < pct < 1:
        return "<1%"
    if 99 < pct < 100:
        return ">99%"
    return f"{pct:.0f}%"


_SPANS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")


def parse_time(value: str | int | float, now: float) -> float:
    """A point in time as Unix epoch seconds, for `usage --since/--until`.

    Accepts epoch seconds (a number, or its digits), a span back from `now`
    ('90s', '30m', '24h', '7d', '2w'; m is minutes), 'now', 'today' and
    'yesterday' (local midnight), or a local date and time ('2026-12-01',
    '2026-12-01 18:00', '2026-12-01T18:00:30'). ValueError says what is allowed.
    """
    import datetime
    import time

    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")) or value < 0:
            raise ValueError(f"not a time: {value!r}")
        return float(value)
    text = str(value).strip().lower()
    if text.isdigit():
        return float(text)
    if text == "now":
        return now
    if text in ("today", "yesterday"):
        lt = time.localtime(now)
        midnight = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))
        if text == "today":
            return midnight
        lt = time.localtime(midnight - 12 * 3600)
        return time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))
    if text[-1:] in _SPANS:
        try:
            amount = float(text[:-1])
        except ValueError:
            amount = None
        if amount is not None and amount >= 0 and amount == amount and amount != float("inf"):
            return now - amount * _SPANS[text[-1]]
    for fmt in _DATE_FORMATS:
        try:
            return datetime.datetime.strptime(text.upper() if "t" in text else text, fmt).timestamp()
        except ValueError:
            continue
    raise ValueError(
        f"not a time: {value!r} (e.g. 24h, 7d, 2w, today, yesterday, 2026-12-01, '2026-12-01 18:00', "
        "or epoch seconds)")
