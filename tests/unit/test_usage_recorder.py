"""The usage recorder (netmond/usage/recorder.py): its thread writes the
meter's batches, answers queries after them, and survives a bad store."""

from __future__ import annotations

import os
import time

import pytest

from netmond.usage import recorder as recorder_mod
from netmond.usage.recorder import UsageRecorder, UsageUnavailable
from netmond.usage.store import UsageStore


def _count(rec: UsageRecorder, app: str, sent: int, received: int, remote: str | None = "1.2.3.4") -> None:
    rec.meter.begin_tick(time.time())
    rec.meter.count(app, remote, None, sent, received)


def _apps(rec: UsageRecorder) -> dict:
    rows = rec.query(since=0, until=time.time() + 3600, by=("app",)).result(10)
    return {r["app"]: (r["bytes_sent"], r["bytes_received"]) for r in rows}


@pytest.fixture
def recorder(tmp_path):
    made = []

    def make(data_dir=None, **kw) -> UsageRecorder:
        rec = UsageRecorder(str(data_dir or tmp_path / "data"), **kw)
        rec.start()
        made.append(rec)
        return rec

    yield make
    for rec in made:
        rec.close()


def test_a_query_sees_everything_counted_before_it(recorder):
    rec = recorder()
    _count(rec, "curl", 100, 200)
    assert _apps(rec) == {"curl": (100, 200)}
    assert rec.storing and rec.written_at is not None and rec.warnings() == []
    _count(rec, "curl", 1, 1)
    assert rec.forget(None).result(10) == 2  # the app row and the remote row
    assert _apps(rec) == {}


def test_close_writes_the_last_batch(recorder, tmp_path):
    rec = recorder()
    rec.flush(force=True).result(10)
    _count(rec, "curl", 5, 6)
    rec.close()  # SIGTERM's path: nothing counted is lost
    store = UsageStore(rec.path)
    try:
        assert store.query(0, time.time() + 3600, ("app",)) == [{"app": "curl", "bytes_sent": 5, "bytes_received": 6}]
    finally:
        store.close()


def test_a_corrupt_store_is_moved_aside_and_a_new_one_started(recorder, tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "usage.db").write_bytes(b"garbage" * 1000)
    rec = recorder(data)
    _count(rec, "curl", 1, 2)
    assert _apps(rec) == {"curl": (1, 2)}
    aside = [n for n in os.listdir(data) if ".corrupt-" in n]
    assert aside and aside[0].startswith("usage.db.corrupt-")
    assert (data / aside[0]).read_bytes() == b"garbage" * 1000
    assert rec.storing
    assert any("moved aside to" in w for w in rec.warnings())


def test_an_unwritable_directory_stops_storing_keeps_the_bytes_and_retries(recorder, tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_mod, "RETRY_SECONDS", 0.0)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the directory's parent should be")
    rec = recorder(blocker / "data")
    _count(rec, "curl", 10, 20)
    rec.flush(force=True).result(10)
    assert not rec.storing
    assert any("not storing usage" in w for w in rec.warnings())
    with pytest.raises(UsageUnavailable, match="not storing usage"):
        rec.query(since=0, until=time.time(), by=("app",)).result(10)
    _count(rec, "curl", 1, 1)
    rec.flush(force=True).result(10)
    # Fixed: the bytes counted meanwhile are written at the next attempt.
    blocker.unlink()
    _count(rec, "curl", 100, 100)
    assert _apps(rec) == {"curl": (111, 121)}
    assert rec.storing and rec.warnings() == []


def test_status_names_the_file_and_its_size(recorder):
    rec = recorder()
    _count(rec, "curl", 1, 2)
    rec.flush(force=True).result(10)
    st = rec.status()
    assert st["path"] == rec.path and st["storing"] is True
    assert st["size_bytes"] == os.path.getsize(rec.path) + os.path.getsize(rec.path + "-wal")


def test_a_waiting_write_is_not_queued_twice_but_queries_see_every_byte(recorder):
    rec = recorder()
    rec.flush(force=True).result(10)
    gate = __import__("threading").Event()
    rec._submit(gate.wait)  # the thread is busy: the next write waits in the queue
    _count(rec, "curl", 1, 1)
    first = rec.flush()
    _count(rec, "curl", 2, 2)
    assert rec.flush() is None  # one write waiting is enough: the bytes stay counted
    assert rec.meter.batch.apps  # ... in the meter, for the next one
    result = rec.query(since=0, until=time.time() + 3600, by=("app",))
    gate.set()
    first.result(10)
    assert result.result(10) == [{"app": "curl", "bytes_sent": 3, "bytes_received": 3}]
