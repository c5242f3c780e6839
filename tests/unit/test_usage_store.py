"""The usage store (netmond/usage/store.py): schema, writes, queries,
compaction, retention, forget, faults; and the meter that feeds it."""

from __future__ import annotations

import os
import sqlite3
import stat
import time

import pytest

from netmond.usage import store as store_mod
from netmond.usage.meter import Batch, UsageMeter
from netmond.usage.store import (
    HOUR, SCHEMA_VERSION, StoreCorrupt, StoreUnavailable, UsageStore, local_date, local_midnight, move_aside,
)

from tests.helpers import throwaway_group

# A fixed "now": noon of a local day, so that hours of the day stay in it.
NOW = local_midnight(time.mktime((2026, 12, 3, 12, 0, 0, 0, 0, -1))) + 12 * HOUR


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "data" / "usage.db")


def _open(path, **kw) -> UsageStore:
    return UsageStore(path, **kw)


def test_new_store_is_versioned_private_and_in_wal_mode(path):
    s = _open(path)
    try:
        assert s.schema_version == SCHEMA_VERSION
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.db.execute("PRAGMA application_id").fetchone()[0] == store_mod.APPLICATION_ID
        s.write({(NOW - NOW % HOUR, "curl"): [1, 2]}, {})
        for name in os.listdir(os.path.dirname(path)):
            mode = stat.S_IMODE(os.stat(os.path.join(os.path.dirname(path), name)).st_mode)
            assert mode == 0o600, (name, oct(mode))
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    finally:
        s.close()


def test_with_the_socket_group_files_are_0640_and_the_directory_0750(path):
    with throwaway_group() as (_, gid):
        s = _open(path, gid=gid)
        try:
            s.write({(NOW - NOW % HOUR, "curl"): [1, 2]}, {})
            for name in os.listdir(os.path.dirname(path)):
                st = os.stat(os.path.join(os.path.dirname(path), name))
                assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, gid), name
            st = os.stat(os.path.dirname(path))
            assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o750, gid)
        finally:
            s.close()


def test_counts_add_up_per_app_remote_hour_and_day(path):
    s = _open(path)
    h = NOW - NOW % HOUR
    s.write({(h, "curl"): [100, 1000], (h - HOUR, "curl"): [1, 10], (h, None): [5, 5], (h, "ssh"): [7, 0]},
            {(h, "1.2.3.4", "curl"): [100, 1000], (h, "5.6.7.8", "ssh"): [7, 0], (h, "1.2.3.4", "ssh"): [0, 3]},
            {"1.2.3.4": "example.org"})
    s.write({(h, "curl"): [50, 0]}, {(h, "1.2.3.4", "curl"): [50, 0]})  # a second batch adds up
    by_app = s.query(0, NOW + 1, ("app",))
    assert by_app == [
        {"app": "curl", "bytes_sent": 151, "bytes_received": 1010},
        {"app": None, "bytes_sent": 5, "bytes_received": 5},
        {"app": "ssh", "bytes_sent": 7, "bytes_received": 0},
    ]
    assert s.query(0, NOW + 1, ("hour",)) == [
        {"hour": h - HOUR, "bytes_sent": 1, "bytes_received": 10},
        {"hour": h, "bytes_sent": 162, "bytes_received": 1005},
    ]
    assert s.query(0, NOW + 1, ("day", "app")) == [
        {"day": local_date(NOW), "app": "curl", "bytes_sent": 151, "bytes_received": 1010},
        {"day": local_date(NOW), "app": None, "bytes_sent": 5, "bytes_received": 5},
        {"day": local_date(NOW), "app": "ssh", "bytes_sent": 7, "bytes_received": 0},
    ]
    remotes = s.query(0, NOW + 1, ("remote",))
    assert remotes == [
        {"remote": "1.2.3.4", "remote_host": "example.org", "apps": ["curl", "ssh"],
         "bytes_sent": 150, "bytes_received": 1003},
        {"remote": "5.6.7.8", "remote_host": None, "apps": ["ssh"], "bytes_sent": 7, "bytes_received": 0},
    ]
    # What one app talks to; and one remote's apps.
    assert s.query(0, NOW + 1, ("remote",), app_match=lambda a: a == "ssh") == [
        {"remote": "5.6.7.8", "remote_host": None, "apps": ["ssh"], "bytes_sent": 7, "bytes_received": 0},
        {"remote": "1.2.3.4", "remote_host": "example.org", "apps": ["ssh"], "bytes_sent": 0, "bytes_received": 3},
    ]
    assert s.query(0, NOW + 1, ("app",), remote_match=lambda ip, host: host == "example.org") == [
        {"app": "curl", "bytes_sent": 150, "bytes_received": 1000},
        {"app": "ssh", "bytes_sent": 0, "bytes_received": 3},
    ]
    assert s.query(0, NOW + 1, ("app",), limit=1) == by_app[:1]
    # since/until: every hour that overlaps the range counts whole.
    assert s.query(h + 1800, NOW + 1, ("app",), app_match=lambda a: a == "curl") == [
        {"app": "curl", "bytes_sent": 150, "bytes_received": 1000}]
    assert s.query(0, h, ("app",), app_match=lambda a: a == "curl") == [
        {"app": "curl", "bytes_sent": 1, "bytes_received": 10}]
    s.close()


def test_bytes_moved_to_the_app_that_owned_them_never_go_below_zero(path):
    s = _open(path)
    h = NOW - NOW % HOUR
    s.write({(h, None): [10, 10]}, {})
    # The pid became known: the bytes move from "process unknown" to curl,
    # and more was moved back than the hour holds (counted an hour before).
    s.write({(h, None): [-15, -10], (h, "curl"): [15, 10]}, {})
    s.write({(h + HOUR, None): [-3, 0]}, {})  # nothing stored in that hour yet
    got = {r["app"]: (r["bytes_sent"], r["bytes_received"]) for r in s.query(0, NOW + 2 * HOUR, ("app",))}
    assert got == {None: (0, 0), "curl": (15, 10)}
    s.close()


def test_data_survives_reopening(path):
    s = _open(path)
    s.write({(NOW - NOW % HOUR, "curl"): [1, 2]}, {})
    s.close()
    s = _open(path)
    assert s.query(0, NOW + 1, ("app",)) == [{"app": "curl", "bytes_sent": 1, "bytes_received": 2}]
    s.close()


def test_one_writer_a_second_store_on_the_same_file_is_refused(path):
    s = _open(path)
    try:
        with pytest.raises(StoreUnavailable, match="in use by another netmond"):
            _open(path)
    finally:
        s.close()


def test_hours_older_than_35_days_become_days_and_totals_stay(path):
    s = _open(path, retention_days=400)
    old_day = local_midnight(NOW - 40 * 86400)
    recent = NOW - NOW % HOUR
    s.write({(old_day + 3 * HOUR, "curl"): [1, 2], (old_day + 20 * HOUR, "curl"): [10, 20],
             (old_day + 20 * HOUR, "ssh"): [5, 5], (recent, "curl"): [100, 200]},
            {(old_day + 3 * HOUR, "9.9.9.9", "curl"): [1, 2], (old_day + 20 * HOUR, "9.9.9.9", "curl"): [10, 20]})
    before = s.query(0, NOW + 1, ("day", "app"))
    done = s.maintain(NOW)
    assert done["hours_compacted"] == 3 + 2
    assert s.db.execute("SELECT count(*) FROM app_hours").fetchone()[0] == 1
    assert s.db.execute("SELECT day, sent, received FROM app_days WHERE app = 1").fetchall() == [(old_day, 11, 22)]
    assert s.query(0, NOW + 1, ("day", "app")) == before
    assert s.query(0, NOW + 1, ("remote",)) == [
        {"remote": "9.9.9.9", "remote_host": None, "apps": ["curl"], "bytes_sent": 11, "bytes_received": 22}]
    # Past compaction, a day is one "hour" row at its midnight.
    assert {"hour": old_day, "bytes_sent": 16, "bytes_received": 27} in s.query(0, NOW + 1, ("hour",))
    # Compacting again changes nothing (idempotent).
    assert s.maintain(NOW)["hours_compacted"] == 0
    assert s.query(0, NOW + 1, ("day", "app")) == before
    s.close()


def test_retention_deletes_old_days_and_their_names(path):
    s = _open(path, retention_days=400)
    s.write({(local_midnight(NOW - 500 * 86400), "gone"): [1, 1], (NOW - NOW % HOUR, "kept"): [2, 2]},
            {(local_midnight(NOW - 500 * 86400), "8.8.8.8", "gone"): [1, 1]})
    done = s.maintain(NOW)
    assert done["rows_expired"] >= 2
    assert [r["app"] for r in s.query(0, NOW + 1, ("app",))] == ["kept"]
    assert s.db.execute("SELECT name FROM apps").fetchall() == [("kept",)]
    assert s.db.execute("SELECT count(*) FROM remotes").fetchone()[0] == 0
    s.close()


def test_forget_all_or_only_what_ended_before(path):
    s = _open(path)
    h = NOW - NOW % HOUR
    day = local_midnight(NOW)
    s.write({(day - 2 * HOUR, "a"): [1, 1], (day + HOUR, "b"): [2, 2], (h, "c"): [3, 3]},
            {(day - 2 * HOUR, "1.1.1.1", "a"): [1, 1]})
    assert s.forget(before=day) == 2  # the hour before midnight, app and remote rows
    assert sorted(r["app"] for r in s.query(0, NOW + 1, ("app",))) == ["b", "c"]
    assert s.forget() == 2
    assert s.query(0, NOW + 1, ("app",)) == []
    assert s.db.execute("SELECT count(*) FROM apps").fetchone()[0] == 0
    s.close()


def test_a_newer_schema_is_left_alone(path):
    s = _open(path)
    s.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    s.close()
    with pytest.raises(StoreUnavailable, match="newer netmond"):
        _open(path)


def test_migrations_run_from_an_older_version(path, monkeypatch):
    s = _open(path)
    s.write({(NOW - NOW % HOUR, "curl"): [1, 2]}, {})
    s.close()
    # A release with schema 2 opening this file: its migration runs once.
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(store_mod.MIGRATIONS, 2, ("CREATE TABLE notes (text TEXT)",))
    s = _open(path)
    assert s.schema_version == 2
    assert s.db.execute("SELECT count(*) FROM notes").fetchone()[0] == 0
    assert s.query(0, NOW + 1, ("app",)) == [{"app": "curl", "bytes_sent": 1, "bytes_received": 2}]
    s.close()


@pytest.mark.parametrize("content", [b"not a database at all" * 100, b""])
def test_garbage_is_corrupt_and_an_empty_file_is_a_new_store(path, content):
    os.makedirs(os.path.dirname(path), mode=0o700)
    with open(path, "wb") as fh:
        fh.write(content)
    if content:
        with pytest.raises(StoreCorrupt):
            _open(path)
    else:
        _open(path).close()


def test_another_sqlite_file_is_not_taken_for_a_store(path):
    os.makedirs(os.path.dirname(path), mode=0o700)
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    with pytest.raises(StoreCorrupt, match="not a netmon usage store"):
        _open(path)


def test_damaged_pages_fail_the_check_and_can_be_moved_aside(path):
    s = _open(path)
    s.write({(NOW - i * HOUR, f"app{i}"): [i, i] for i in range(500)}, {})
    s.close()
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:  # keep the header, wreck the pages
        fh.seek(4096)
        fh.write(os.urandom(size - 4096))
    with pytest.raises(StoreCorrupt):
        _open(path).query(0, NOW + 1, ("app",))
    aside = move_aside(path, NOW)
    assert aside.startswith(path + ".corrupt-") and os.path.exists(aside) and not os.path.exists(path)
    _open(path).close()  # a new one


def test_a_directory_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(StoreUnavailable, match="writable by other users"):
        _open(str(shared / "usage.db"))


def test_a_directory_that_cannot_be_made_is_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreUnavailable, match="cannot create"):
        _open(str(blocker / "sub" / "usage.db"))


# -- the meter -------------------------------------------------------------------


def test_meter_sums_per_hour_app_and_remote_and_hands_over():
    m = UsageMeter()
    m.begin_tick(NOW)
    m.count("curl", "1.2.3.4", "example.org", 10, 20)
    m.count("curl", "1.2.3.4", None, 1, 2)
    m.count("ntp", None, None, 5, 5)  # no remote (an unconnected UDP socket)
    m.begin_tick(NOW + HOUR)
    m.count("curl", "1.2.3.4", None, 3, 3)
    batch = m.take()
    h = NOW - NOW % HOUR
    assert batch.apps == {(h, "curl"): [11, 22], (h, "ntp"): [5, 5], (h + HOUR, "curl"): [3, 3]}
    assert batch.remotes == {(h, "1.2.3.4", "curl"): [11, 22], (h + HOUR, "1.2.3.4", "curl"): [3, 3]}
    assert batch.hosts == {"1.2.3.4": "example.org"}
    assert not m.take()


def test_meter_names_remotes_found_after_their_bytes_were_counted():
    """A short connection's bytes are counted before its remote's name is
    known and it moves nothing after: the name is asked again at hand-over."""
    known: dict[str, str] = {}
    asked: list[str] = []

    def names(ip):
        asked.append(ip)
        return known.get(ip)

    m = UsageMeter()
    m.names = names
    m.begin_tick(NOW)
    m.count("curl", "127.0.0.1", None, 10, 20)
    m.count("curl", "1.2.3.4", "example.org", 1, 1)
    m.count("curl", "5.6.7.8", None, 1, 1)
    known["127.0.0.1"] = "localhost"  # the lookup ends between tick and hand-over
    batch = m.take()
    assert batch.hosts == {"127.0.0.1": "localhost", "1.2.3.4": "example.org"}
    assert sorted(asked) == ["127.0.0.1", "5.6.7.8"]  # a name already carried is not asked


def test_meter_and_merge_are_bounded():
    m = UsageMeter(max_keys=2)
    m.begin_tick(NOW)
    for i in range(5):
        m.count(f"app{i}", f"10.0.0.{i}", None, 1, 1)
    batch = m.take()
    assert len(batch.apps) == 2 and len(batch.remotes) == 2
    assert m.dropped_bytes == 6
    other = Batch(apps={(0, "x"): [1, 1]})
    assert batch.merge(other, max_keys=2) == 2


def test_state_feeds_the_meter_the_deltas_of_its_app_totals():
    """The store gets exactly what `apps` shows: closed connections
    included, baseline bytes not counted, bytes moved when a pid is known late."""
    from netmond.backends.base import Snapshot, SocketSample
    from netmond.state import MonitorState

    def sock(key, sent, recv, pid=1, name="curl", remote="1.2.3.4"):
        return SocketSample(key=key, protocol="TCP", family="IPv4", local_ip="10.0.0.1", local_port=1000 + key,
                            remote_ip=remote, remote_port=443, state="ESTABLISHED", pid=pid,
                            process_name=name, user="u", bytes_sent=sent, bytes_received=recv)

    def snap(t, sockets, closed=()):
        return Snapshot(monotonic=t, wall=NOW + t, sockets=list(sockets), closed=list(closed), interfaces=[])

    st = MonitorState()
    meter = st.usage_sink = UsageMeter()
    st.apply(snap(0, [sock(1, 1000, 1000)]))  # baseline: earlier bytes not counted
    st.apply(snap(1, [sock(1, 1500, 1100), sock(2, 10, 20, pid=None, name=None)]))
    st.apply(snap(2, [sock(2, 30, 40, pid=7, name="ssh")], closed=[sock(1, 1600, 1100)]))
    batch = meter.take()
    h = NOW - NOW % HOUR
    apps = {app: tuple(v) for (hour, app), v in batch.apps.items()}
    assert apps == {"curl": (600, 100), None: (0, 0), "ssh": (30, 40)}
    shown = {a["process_name"]: (a["bytes_sent"], a["bytes_received"]) for a in st.app_usage()}
    assert shown["curl"] == apps["curl"] and shown["ssh"] == apps["ssh"]
    assert {k[0] for k in batch.apps} == {h}
    assert batch.remotes[(h, "1.2.3.4", "curl")] == [600, 100]


#: The stated bound on a year of 50 apps x 200 remotes, every one busy every
#: hour (README, "Usage over days"); measured: 6.5 MB.
YEAR_BOUND_BYTES = 16_000_000


def test_a_year_of_50_apps_and_200_remotes_stays_within_the_stated_bound(tmp_path):
    import importlib.util

    from tests.helpers import REPO

    spec = importlib.util.spec_from_file_location("bench_usage", REPO / "bench" / "usage.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = str(tmp_path / "data" / "usage.db")
    s = bench.generate_year(path, NOW, apps=50, remotes=200, days=365)
    try:
        counts = {t: s.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("app_hours", "app_days", "remote_hours", "remote_days")}
        # 35 days of hours (and today's so far), the rest of the year as days.
        assert 35 * 24 * 50 <= counts["app_hours"] <= 37 * 24 * 50
        assert counts["app_days"] + counts["app_hours"] // 24 >= 364 * 50
        by_day = s.query(NOW - 365 * 86400, NOW + 1, ("day", "app"))
        assert len({r["day"] for r in by_day}) >= 365
    finally:
        s.close()
    size = store_mod.file_size(path)  # the file and its WAL
    assert size < YEAR_BOUND_BYTES, size
