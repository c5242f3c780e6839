"""The usage store: one SQLite file of bytes per hour, per app and per remote.

Used by one thread at a time (netmond's recorder thread); nothing here
touches the event loop. What is kept (counters only, never a connection):

    apps(id, name)                        interned process names; app 0 is
                                          "process unknown" and has no row
    remotes(id, ip, host)                 interned remote addresses, with the
                                          latest name known for each
    app_hours(hour, app, sent, received)  bytes per app per clock hour
    remote_hours(hour, remote, app, ...)  bytes per remote and app per hour
    app_days, remote_days                 the same per local day: hours older
                                          than COMPACT_AFTER_DAYS are summed
                                          into the day they fall in

Hours are Unix epoch seconds at the start of the hour; days are the epoch of
the daemon's local midnight, so that "today" and "per day" are the user's
days. The schema is versioned (PRAGMA user_version) and every change to it
is a migration in MIGRATIONS, applied in order when an older file is opened;
a file from a newer netmond is left alone (not storing, with the reason).

One writer: the file is opened in exclusive locking mode (WAL without a
shared-memory index), so a second netmond pointed at the same directory is
told the store is in use instead of counting every byte a second time.

Faults: a file that is not a netmon store, fails SQLite's quick_check or
cannot be read is `StoreCorrupt` (the recorder moves it aside and starts a
new one); a directory that cannot be written, a full disk or a store in use
is `StoreUnavailable` (the recorder stops storing, monitoring goes on).
"""

from __future__ import annotations

import datetime
import errno
import math
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from common import paths

#: Version of the schema this code writes (PRAGMA user_version).
SCHEMA_VERSION = 1
#: PRAGMA application_id of a netmon usage store ("nmus").
APPLICATION_ID = 0x6E6D7573
#: The store's file name inside the data directory.
FILE_NAME = "usage.db"
HOUR = 3600
#: Hours older than this many days are summed into days.
COMPACT_AFTER_DAYS = 35
#: The app id of bytes whose process is unknown.
UNKNOWN_APP = 0
#: The keys a query may group by.
BY_KEYS = ("app", "remote", "day", "hour")

# Every schema change is one more entry: statements that take a store of the
# previous version to this one. Never edit a released entry.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE apps (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
        "CREATE TABLE remotes (id INTEGER PRIMARY KEY, ip TEXT NOT NULL UNIQUE, host TEXT)",
        "CREATE TABLE app_hours (hour INTEGER NOT NULL, app INTEGER NOT NULL,"
        " sent INTEGER NOT NULL, received INTEGER NOT NULL, PRIMARY KEY (hour, app)) WITHOUT ROWID",
        "CREATE TABLE app_days (day INTEGER NOT NULL, app INTEGER NOT NULL,"
        " sent INTEGER NOT NULL, received INTEGER NOT NULL, PRIMARY KEY (day, app)) WITHOUT ROWID",
        "CREATE TABLE remote_hours (hour INTEGER NOT NULL, remote INTEGER NOT NULL, app INTEGER NOT NULL,"
        " sent INTEGER NOT NULL, received INTEGER NOT NULL, PRIMARY KEY (hour, remote, app)) WITHOUT ROWID",
        "CREATE TABLE remote_days (day INTEGER NOT NULL, remote INTEGER NOT NULL, app INTEGER NOT NULL,"
        " sent INTEGER NOT NULL, received INTEGER NOT NULL, PRIMARY KEY (day, remote, app)) WITHOUT ROWID",
    ),
}

#: (hour, app name or None) -> [sent, received]
AppBatch = Mapping[tuple[int, "str | None"], "list[int]"]
#: (hour, remote ip, app name or None) -> [sent, received]
RemoteBatch = Mapping[tuple[int, str, "str | None"], "list[int]"]


class StoreCorrupt(Exception):
    """The file is not a usable netmon store: move it aside, start a new one."""


class StoreUnavailable(Exception):
    """The store cannot be written now (read-only, full, in use, too new)."""


def hour_of(ts: float) -> int:
    """The start of the clock hour `ts` falls in."""
    t = int(ts)
    return t - t % HOUR


def local_midnight(ts: float) -> int:
    """The epoch of the local midnight that starts the day `ts` falls in."""
    lt = time.localtime(ts)
    return int(time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1)))


def next_midnight(day: int) -> int:
    """The local midnight after the one at `day` (days are 23 to 25 hours)."""
    return local_midnight(day + 26 * HOUR)


def local_date(ts: float) -> str:
    """'YYYY-MM-DD' of the local day `ts` falls in."""
    return time.strftime("%Y-%m-%d", time.localtime(ts))


def classify_error(exc: BaseException) -> str:
    """'corrupt', 'busy' or 'unavailable' for a sqlite3 or OS error."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        primary = code & 0xFF
        if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return "corrupt"
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return "busy"
        return "unavailable"
    if isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc):
        return "corrupt"
    return "unavailable"


def describe_error(exc: BaseException) -> str:
    """A short human reason for a store failure."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
        return "the disk is full"
    if code is not None and code & 0xFF == sqlite3.SQLITE_READONLY:
        return "the store or its directory is read-only"
    if code is not None and code & 0xFF == sqlite3.SQLITE_CANTOPEN:
        return "cannot create or open the store's files (read-only or missing directory?)"
    if code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return "the store is in use by another netmond"
    return text


def prepare_directory(directory: str, gid: int | None) -> None:
    """Create the data directory (0700, or 0750 with the socket's group) if
    missing; refuse one that another user could swap files in."""
    if not os.path.isdir(directory):
        try:
            os.makedirs(directory, mode=0o750 if gid is not None else 0o700, exist_ok=True)
            if gid is not None:
                try:
                    os.chown(directory, -1, gid)
                    os.chmod(directory, 0o750)
                except OSError:
                    os.chmod(directory, 0o700)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {directory}: {exc.strerror or exc}") from None
    problem = paths.directory_trust_problem(directory)
    if problem is not None:
        raise StoreUnavailable(f"not storing in {directory}: {problem}")


def create_file(path: str, gid: int | None) -> None:
    """Create an empty store file 0600 (0640 owned by `gid`) before SQLite
    opens it: SQLite gives its WAL file the same mode and owner."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreUnavailable(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)
        if gid is not None:
            try:
                os.fchown(fd, -1, gid)
                os.fchmod(fd, 0o640)
            except OSError:
                pass  # not a member of that group (a user daemon): 0600 then
    finally:
        os.close(fd)


def move_aside(path: str, now: float | None = None) -> str:
    """Rename the store (and its WAL, if any) to *.corrupt-<timestamp>;
    returns the new name of the store file."""
    stamp = datetime.datetime.fromtimestamp(now if now is not None else time.time()).strftime("%Y%m%dT%H%M%S")
    target = f"{path}.corrupt-{stamp}"
    for suffix in ("", "-wal", "-shm", "-journal"):
        src = path + suffix
        if os.path.lexists(src):
            os.replace(src, f"{path}{suffix}.corrupt-{stamp}")
    return target


class UsageStore:
    """An open store. Not thread-safe: one thread uses it."""

    def __init__(self, path: str, *, gid: int | None = None, retention_days: int = 400) -> None:
        """Open (creating if needed) the store at `path`.

        Raises StoreCorrupt (move it aside and retry) or StoreUnavailable.
        """
        self.path = path
        self.retention_days = retention_days
        self._app_ids: dict[str, int] = {}
        self._remote_ids: dict[str, int] = {}
        self._remote_hosts: dict[str, str | None] = {}
        prepare_directory(os.path.dirname(os.path.abspath(path)), gid)
        if os.path.lexists(path):
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                raise StoreCorrupt(f"{path} is not a regular file")
            if not os.access(path, os.R_OK | os.W_OK):
                raise StoreCorrupt(f"{path} cannot be read and written by this user")
        else:
            create_file(path, gid)
        try:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=0.5)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{path}: {describe_error(exc)}") from None
        try:
            self._setup()
        except BaseException:
            self.db.close()
            raise

    def _setup(self) -> None:
        db = self.db
        try:
            # One writer: held from the first transaction until close.
            db.execute("PRAGMA locking_mode = EXCLUSIVE")
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.Error as exc:
            self._raise(exc)
        if app_id != APPLICATION_ID and (app_id != 0 or version != 0 or tables):
            raise StoreCorrupt(f"{self.path} is not a netmon usage store")
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"{self.path} was written by a newer netmond (schema {version}, this one knows {SCHEMA_VERSION})")
        try:
            if version == 0:
                # Must precede the first table: lets forget/retention give space back.
                db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise StoreUnavailable(f"{self.path}: WAL mode refused")
            # WAL + NORMAL: a commit survives the process being killed; only a
            # power cut may lose the last ones, never the file.
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA secure_delete = ON")  # forgotten usage is overwritten
            db.execute("PRAGMA cache_size = -1024")  # 1 MiB of pages: the daemon stays small
            db.execute("BEGIN IMMEDIATE")  # takes the exclusive lock now
            db.execute("COMMIT")
            if version:
                check = db.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise StoreCorrupt(f"{self.path} failed its integrity check: {check}")
            self._migrate(version)
        except sqlite3.Error as exc:
            self._raise(exc)

    def _raise(self, exc: sqlite3.Error) -> None:
        kind = classify_error(exc)
        if kind == "corrupt":
            raise StoreCorrupt(f"{self.path}: {exc}") from None
        raise StoreUnavailable(f"{self.path}: {describe_error(exc)}") from None

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction, begun IMMEDIATE (the write lock taken at
        once), committed at the end, rolled back on any exception."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _migrate(self, version: int) -> None:
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction():
                for statement in MIGRATIONS[target]:
                    self.db.execute(statement)
                if target == 1:
                    self.db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                self.db.execute(f"PRAGMA user_version = {target}")

    def close(self) -> None:
        """Checkpoint the WAL into the file and close."""
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self.db.close()

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def size(self) -> int:
        """Bytes on disk: the store and its WAL."""
        return file_size(self.path)

    # -- names ---------------------------------------------------------------
    def _app_id(self, name: str | None) -> int:
        if name is None:
            return UNKNOWN_APP
        app_id = self._app_ids.get(name)
        if app_id is None:
            self.db.execute("INSERT OR IGNORE INTO apps (name) VALUES (?)", (name,))
            app_id = self.db.execute("SELECT id FROM apps WHERE name = ?", (name,)).fetchone()[0]
            self._app_ids[name] = app_id
        return app_id

    def _remote_id(self, ip: str, host: str | None) -> int:
        remote_id = self._remote_ids.get(ip)
        if remote_id is not None and (host is None or self._remote_hosts.get(ip) == host):
            return remote_id
        self.db.execute(
            "INSERT INTO remotes (ip, host) VALUES (?, ?)"
            " ON CONFLICT (ip) DO UPDATE SET host = COALESCE(excluded.host, host)", (ip, host))
        remote_id = self.db.execute("SELECT id FROM remotes WHERE ip = ?", (ip,)).fetchone()[0]
        if len(self._remote_ids) > 100_000:  # a cache, not a copy of the table
            self._remote_ids.clear()
            self._remote_hosts.clear()
        self._remote_ids[ip] = remote_id
        self._remote_hosts[ip] = host
        return remote_id

    def _forget_names(self) -> None:
        """Drop names no row uses any more (after retention or forget)."""
        self.db.execute(
            "DELETE FROM apps WHERE id NOT IN (SELECT app FROM app_hours UNION SELECT app FROM app_days"
            " UNION SELECT app FROM remote_hours UNION SELECT app FROM remote_days)")
        self.db.execute(
            "DELETE FROM remotes WHERE id NOT IN (SELECT remote FROM remote_hours UNION SELECT remote FROM remote_days)")
        self._app_ids.clear()
        self._remote_ids.clear()
        self._remote_hosts.clear()

    # -- writing ---------------------------------------------------------------
    def write(self, apps: AppBatch, remotes: RemoteBatch, hosts: Mapping[str, str] | None = None) -> None:
        """Add one batch of byte counts in one transaction (all or nothing).

        Counts may be negative (bytes moved from "process unknown" to the app
        that turned out to own them); a counter never goes below 0.
        """
        hosts = hosts or {}
        db = self.db
        try:
            with self._transaction():
                app_rows = [(self._app_id(app), hour, s, r) for (hour, app), (s, r) in apps.items() if s or r]
                db.executemany(
                    "INSERT INTO app_hours (app, hour, sent, received) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (hour, app) DO UPDATE SET sent = max(0, sent + excluded.sent),"
                    " received = max(0, received + excluded.received)", app_rows)
                remote_rows = [(self._remote_id(ip, hosts.get(ip)), self._app_id(app), hour, s, r)
                               for (hour, ip, app), (s, r) in remotes.items() if s or r]
                db.executemany(
                    "INSERT INTO remote_hours (remote, app, hour, sent, received) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (hour, remote, app) DO UPDATE SET sent = max(0, sent + excluded.sent),"
                    " received = max(0, received + excluded.received)", remote_rows)
                # A count with nothing stored yet in its hour was inserted as
                # it came: one that is negative becomes 0.
                db.executemany(
                    "UPDATE app_hours SET sent = max(0, sent), received = max(0, received)"
                    " WHERE app = ? AND hour = ?", [row[:2] for row in app_rows if row[2] < 0 or row[3] < 0])
                db.executemany(
                    "UPDATE remote_hours SET sent = max(0, sent), received = max(0, received)"
                    " WHERE remote = ? AND app = ? AND hour = ?",
                    [row[:3] for row in remote_rows if row[3] < 0 or row[4] < 0])
        except sqlite3.Error as exc:
            self._app_ids.clear()  # ids of a rolled-back transaction are gone
            self._remote_ids.clear()
            self._remote_hosts.clear()
            self._raise(exc)

    # -- upkeep ----------------------------------------------------------------
    def maintain(self, now: float) -> dict[str, int]:
        """Sum hours older than COMPACT_AFTER_DAYS into days; delete what is
        older than the retention; give the space back. Returns counts."""
        hour_cutoff = local_midnight(now - COMPACT_AFTER_DAYS * 86400)
        keep_from = local_midnight(now - self.retention_days * 86400)
        db = self.db
        out = {"hours_compacted": 0, "rows_expired": 0}
        try:
            with self._transaction():
                for kind, cols in (("app", "app"), ("remote", "remote, app")):
                    hours = [h for (h,) in db.execute(
                        f"SELECT DISTINCT hour FROM {kind}_hours WHERE hour < ?", (hour_cutoff,))]
                    for day in sorted({local_midnight(h) for h in hours}):
                        end = min(next_midnight(day), hour_cutoff)
                        db.execute(
                            f"INSERT INTO {kind}_days (day, {cols}, sent, received)"
                            f" SELECT ?, {cols}, sum(sent), sum(received) FROM {kind}_hours"
                            f" WHERE hour >= ? AND hour < ? GROUP BY {cols}"
                            f" ON CONFLICT DO UPDATE SET sent = sent + excluded.sent,"
                            f" received = received + excluded.received",
                            (day, day, end))
                        out["hours_compacted"] += db.execute(
                            f"DELETE FROM {kind}_hours WHERE hour >= ? AND hour < ?", (day, end)).rowcount
                    out["rows_expired"] += db.execute(
                        f"DELETE FROM {kind}_days WHERE day < ?", (keep_from,)).rowcount
                    out["rows_expired"] += db.execute(
                        f"DELETE FROM {kind}_hours WHERE hour < ?", (keep_from,)).rowcount
                if out["rows_expired"]:
                    self._forget_names()
            if out["hours_compacted"] or out["rows_expired"]:
                db.execute("PRAGMA incremental_vacuum")
        except sqlite3.Error as exc:
            self._raise(exc)
        return out

    def forget(self, before: float | None = None) -> int:
        """Delete stored usage: all of it, or only hours and days that ended
        by `before`. Returns the rows deleted; the space is given back and
        the deleted bytes overwritten (secure_delete)."""
        db = self.db
        deleted = 0
        try:
            with self._transaction():
                for kind in ("app", "remote"):
                    if before is None:
                        deleted += db.execute(f"DELETE FROM {kind}_hours").rowcount
                        deleted += db.execute(f"DELETE FROM {kind}_days").rowcount
                    else:
                        deleted += db.execute(
                            f"DELETE FROM {kind}_hours WHERE hour + {HOUR} <= ?", (int(before),)).rowcount
                        deleted += db.execute(
                            f"DELETE FROM {kind}_days WHERE day < ?", (local_midnight(before),)).rowcount
                self._forget_names()
            db.execute("PRAGMA incremental_vacuum")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            self._raise(exc)
        return deleted

    # -- reading ---------------------------------------------------------------
    def query(
        self,
        since: float,
        until: float,
        by: tuple[str, ...],
        *,
        app_match: Callable[[str | None], bool] | None = None,
        remote_match: Callable[[str, str | None], bool] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of usage between `since` and `until`, grouped by `by`.

        Every hour (and, past COMPACT_AFTER_DAYS, every day) that overlaps
        [since, until) counts whole. Each row has the keys of `by` plus
        bytes_sent and bytes_received: `app` (name or None: process
        unknown), `remote` (ip) with `remote_host` (its name or None) and,
        without `app` in `by`, `apps` (the apps that talked to it), `day`
        ('YYYY-MM-DD', local), `hour` (epoch of the hour's start; a day
        past COMPACT_AFTER_DAYS is one row at its midnight). `app_match` and
        `remote_match` keep only the bytes of matching apps / remotes
        (remote_match gets ip and name). Time-keyed rows come oldest first,
        others largest first; `limit` keeps the largest rows only.
        """
        for wanted in by:
            if wanted not in BY_KEYS:
                raise ValueError(f"cannot group by {wanted!r}")
        plan = _QueryPlan(by, app_match is not None, remote_match is not None)
        rows, app_names, remote_rows = self._fetch(plan, since, int(math.ceil(until)))
        groups = _merge(plan, rows, app_names, remote_rows, app_match, remote_match)
        return _shape(plan, groups, limit)

    def _fetch(self, plan: "_QueryPlan", since: float, until: int
               ) -> tuple[list[tuple], dict[int, Any], dict[int, Any]]:
        """The summed rows of the hour and day tables, and the names of the
        apps and remotes they refer to."""
        try:
            # Summed by SQLite per (bucket, remote, app): Python only merges
            # what is left (hours into local days via a small map table).
            rows: list[tuple] = []
            for table, column, lo in ((f"{plan.kind}_hours", "hour", hour_of(since)),
                                      (f"{plan.kind}_days", "day", local_midnight(since))):
                rows.extend(self._grouped(table, column, lo, until, plan.time_key, plan.cols))
            app_names = self._names(
                "apps", "name", {r[-3] for r in rows} if plan.want_app else set())
            remote_rows = self._names(
                "remotes", "ip, host", {r[1] for r in rows} if plan.use_remote else set())
        except sqlite3.Error as exc:
            self._raise(exc)
        return rows, app_names, remote_rows

    def _grouped(self, table: str, column: str, lo: int, until: int, time_key: str | None,
                 cols: list[str]) -> list[tuple]:
        """Rows (bucket, *cols, sent, received) of one table, summed per bucket
        and cols; the bucket is the hour, or the local day (hours mapped to
        their day through a temporary table), or 0 without a time key."""
        where = f"t.{column} >= ? AND t.{column} < ?"
        keys = ", ".join(f"t.{c}" for c in cols)
        if time_key == "day" and column == "hour":
            hours = [h for (h,) in self.db.execute(
                f"SELECT DISTINCT hour FROM {table} WHERE hour >= ? AND hour < ?", (lo, until))]
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS hour_day (hour INTEGER PRIMARY KEY, day INTEGER)")
            self.db.execute("DELETE FROM temp.hour_day")
            self.db.executemany("INSERT INTO temp.hour_day VALUES (?, ?)", [(h, local_midnight(h)) for h in hours])
            bucket, source = "m.day", f"{table} AS t JOIN temp.hour_day AS m ON m.hour = t.hour"
        elif time_key is not None:
            bucket, source = f"t.{column}", f"{table} AS t"
        else:
            bucket, source = "0", f"{table} AS t"
        group = ", ".join(([bucket] if time_key else []) + [f"t.{c}" for c in cols])
        select = ", ".join([bucket] + ([keys] if keys else []))
        sql = (f"SELECT {select}, sum(t.sent), sum(t.received) FROM {source}"
               f" WHERE {where}" + (f" GROUP BY {group}" if group else ""))
        return [r for r in self.db.execute(sql, (lo, until)) if r[-2] is not None]

    def _names(self, table: str, columns: str, ids: Iterable[int]) -> dict[int, Any]:
        """id -> name (or (ip, host)) for the ids asked, in chunks."""
        wanted = [i for i in ids if i is not None and i != UNKNOWN_APP]
        out: dict[int, Any] = {UNKNOWN_APP: None} if table == "apps" else {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            for row in self.db.execute(f"SELECT id, {columns} FROM {table} WHERE id IN ({marks})", chunk):
                out[row[0]] = row[1] if len(row) == 2 else tuple(row[1:])
        return out


def file_size(path: str) -> int:
    """Bytes of the store file and its WAL on disk (0 for what is missing)."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(path + suffix).st_size
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
    return total


class _QueryPlan:
    """What one usage query reads and how its rows are keyed."""

    def __init__(self, by: tuple[str, ...], app_filter: bool, remote_filter: bool) -> None:
        self.by = by
        self.use_remote = "remote" in by or remote_filter
        self.time_key = "day" if "day" in by else "hour" if "hour" in by else None
        # Remote rows without `app` in `by` still list the apps involved.
        self.with_apps = "remote" in by and "app" not in by
        self.want_app = "app" in by or app_filter or self.with_apps
        self.cols = (["remote"] if self.use_remote else []) + (["app"] if self.want_app else [])
        self.kind = "remote" if self.use_remote else "app"


def _merge(plan: _QueryPlan, rows: list[tuple], app_names: dict[int, Any],
           remote_rows: dict[int, Any],
           app_match: Callable[[str | None], bool] | None,
           remote_match: Callable[[str, str | None], bool] | None,
           ) -> dict[tuple, list[Any]]:
    """Rows (bucket, remote?, app?, sent, received) merged per key of `by`:
    key -> [sent, received, apps or None, remote host]."""
    results: dict[tuple, list[Any]] = {}
    dates: dict[int, str] = {}
    for r in rows:
        app = app_names.get(r[-3]) if plan.want_app else None
        if app_match is not None and not app_match(app):
            continue
        ip = host = None
        if plan.use_remote:
            remote = remote_rows.get(r[1])
            if remote is None:
                continue
            ip, host = remote
            if remote_match is not None and not remote_match(ip, host):
                continue
        key: list[Any] = []
        for name in plan.by:
            if name == "day":
                date = dates.get(r[0])
                if date is None:
                    date = dates[r[0]] = local_date(r[0])
                key.append(date)
            elif name == "hour":
                key.append(r[0])
            elif name == "app":
                key.append(app)
            else:
                key.append(ip)
        entry = results.get(tuple(key))
        if entry is None:
            entry = results[tuple(key)] = [0, 0, set() if plan.with_apps else None, host]
        entry[0] += r[-2]
        entry[1] += r[-1]
        if plan.with_apps:
            entry[2].add(app)
    return results


def _shape(plan: _QueryPlan, groups: dict[tuple, list[Any]], limit: int | None
           ) -> list[dict[str, Any]]:
    """The wire rows: keys of `by`, the remote's name and apps where asked,
    bytes; the largest `limit` rows, time-keyed ones oldest first."""
    out = []
    for group, (sent, received, apps, host) in groups.items():
        row: dict[str, Any] = dict(zip(plan.by, group))
        if "remote" in plan.by:
            row["remote_host"] = host
            if plan.with_apps:
                row["apps"] = sorted(apps, key=lambda a: (a is None, a or ""))
        row["bytes_sent"] = sent
        row["bytes_received"] = received
        out.append(row)
    largest = sorted(out, key=lambda r: r["bytes_sent"] + r["bytes_received"], reverse=True)
    if limit is not None:
        largest = largest[:limit]
    time_key = plan.time_key
    if time_key:
        # Oldest first; within a time, largest first (the sort is stable).
        largest.sort(key=lambda r: r[time_key])
    return largest
