"""Client-side ordering of rows (--sort FIELD, --reverse, --limit).

The daemon filters; the CLI orders, because the order is a matter of
presentation. Unknown values (None: no counters, no pid) always sort last,
whichever the direction: a row without numbers is not "the smallest".
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence, TypeVar

#: A wire row: a Connection or AppUsage TypedDict, or a plain dict.
Row = Mapping[str, Any]
R = TypeVar("R", bound=Row)

#: Sort keys that are not wire fields: totals over both directions.
#: "speed" (the default) ranks by current total rate, ties by total bytes.
PSEUDO_FIELDS = ("speed", "bytes")

# Measures whose interesting end is the big one: they sort descending unless
# --reverse; names, addresses and ids sort ascending.
_DESCENDING = frozenset(
    {
        "speed",
        "bytes",
        "upload_speed",
        "download_speed",
        "bytes_sent",
        "bytes_received",
        "duration",
        "connections",
    }
)


def sort_choices(fields: Sequence[str]) -> tuple[str, ...]:
    """What --sort accepts for rows with these wire fields."""
    return (*PSEUDO_FIELDS, *fields)


def descending(field: str, reverse: bool = False) -> bool:
    """Whether sort_rows(rows, field, reverse) puts the largest value first."""
    return (field in _DESCENDING) != reverse


def _total(row: Row, a: str, b: str) -> float | None:
    known = [v for v in (row.get(a), row.get(b)) if v is not None]
    return sum(known) if known else None


def _speed(row: Row) -> float | None:
    return _total(row, "upload_speed", "download_speed")


def _bytes(row: Row) -> float | None:
    return _total(row, "bytes_sent", "bytes_received")


def _keys(field: str) -> list[Callable[[Row], Any]]:
    """Primary key first, then tie-breakers."""
    if field == "speed":
        return [_speed, _bytes]
    if field == "bytes":
        return [_bytes, _speed]
    return [lambda row: row.get(field)]


def sort_rows(rows: Sequence[R], field: str, reverse: bool = False) -> list[R]:
    """Rows ordered by `field` in its natural direction (flipped by `reverse`).

    Stable, with None last at every key level: one stable pass per key, from
    the last tie-breaker to the primary key.
    """
    largest_first = descending(field, reverse)
    out = list(rows)
    for key in reversed(_keys(field)):
        known = [r for r in out if key(r) is not None]
        unknown = [r for r in out if key(r) is None]
        known.sort(key=key, reverse=largest_first)  # reverse=True keeps ties stable
        out = known + unknown
    return out


def order_rows(rows: Sequence[R], field: str, reverse: bool, limit: int | None) -> list[R]:
    """sort_rows, then at most `limit` rows."""
    out = sort_rows(rows, field, reverse)
    return out[:limit] if limit is not None else out
