"""Usage over days: bytes per app and per remote, per hour, kept on disk.

- `store.py`    the SQLite file: schema and migrations, batched writes,
                compaction of hours into days, retention, queries, faults
- `meter.py`    what the daemon's ticks moved, summed per hour until written
- `recorder.py` the thread that owns the store: writes, queries and upkeep
                off the event loop; what `status` says about the store

The numbers come from `MonitorState`'s per-socket deltas (the ones its app
totals are made of), so the store says what `apps` says, closed connections
included, and a restart never counts a byte twice (a socket first seen at
start is a baseline: its earlier bytes are not counted).
"""
