"""The thread that owns the usage store, and what the daemon asks of it.

The event loop only swaps dicts: `flush()` takes the meter's batch and
queues it; the recorder's thread opens the store, writes batches, answers
queries and `forget`, and keeps the file tidy (compaction, retention) once
an hour. Every job runs in that one thread, in the order it was queued, so
a query sees every byte counted before it was asked.

Faults never stop monitoring:
- a corrupt or unreadable store is moved aside (`usage.db.corrupt-<time>`)
  and a new one started; `status` says where the old one went;
- a read-only directory, a full disk, a store held by another netmond:
  storing stops, `status` says why, the bytes counted meanwhile wait in
  memory (bounded, see meter.MAX_KEYS) and the store is tried again every
  RETRY_SECONDS.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, TypeVar

from common import api

from .meter import MAX_KEYS, Batch, UsageMeter
from .store import FILE_NAME, StoreCorrupt, StoreUnavailable, UsageStore, file_size, move_aside

log = logging.getLogger("netmond.usage")

T = TypeVar("T")

#: Seconds between the store's compaction and retention runs.
MAINTAIN_EVERY = 3600.0
#: Seconds between attempts to reopen a store that could not be written.
RETRY_SECONDS = 60.0
#: Seconds close() waits for the last batch to be written.
CLOSE_TIMEOUT = 10.0

_STOP = object()


class UsageUnavailable(Exception):
    """The store cannot answer now; the message says why."""


class UsageRecorder:
    """Feeds the store from the meter; answers usage queries; reports health."""

    def __init__(
        self,
        data_dir: str,
        *,
        retention_days: int = 400,
        gid: int | None = None,
        write_every: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, FILE_NAME)
        self.retention_days = retention_days
        self.gid = gid
        self.write_every = write_every
        self.clock = clock
        self.meter = UsageMeter()
        # Read by the event loop (status), written by the thread: plain
        # attribute stores, each atomic.
        self.storing = False
        self.warning: str | None = None
        self.moved_aside: str | None = None
        self.written_at: float | None = None
        self.dropped_bytes = 0
        # Thread only.
        self._store: UsageStore | None = None
        self._retry = Batch()
        self._next_open = 0.0
        self._next_maintain = 0.0
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._write_pending: concurrent.futures.Future[None] | None = None

    # -- event loop side ---------------------------------------------------------
    def start(self) -> None:
        """Start the thread and open the store in it."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="usage-store", daemon=True)
        self._thread.start()
        self._submit(self._open_now)

    def flush(self, force: bool = False) -> concurrent.futures.Future[None] | None:
        """Hand what the meter holds to the thread for writing.

        Called on the event loop, the one thread that counts: the batch is
        taken here (a dict swap), never by the writer while a tick adds to
        it. Unless `force` (a query, forget, shutdown: they must see every
        byte), a write still waiting in the queue makes this a no-op: the
        bytes stay in the meter for the next one, so a slow disk makes
        batches bigger, not more.
        """
        pending = self._write_pending
        if not force and pending is not None and not pending.done() and not pending.running():
            return None
        batch = self.meter.take()
        self._write_pending = fut = self._submit(lambda: self._write_batch(batch))
        return fut

    def query(self, **kwargs: Any) -> concurrent.futures.Future[list[dict[str, Any]]]:
        """Usage rows (UsageStore.query's arguments), everything counted so far included."""
        self.flush(force=True)
        return self._submit(lambda: self._with_store(lambda store: store.query(**kwargs)))

    def forget(self, before: float | None) -> concurrent.futures.Future[int]:
        """Delete stored usage (all, or what ended by `before`); rows deleted."""
        self.flush(force=True)
        return self._submit(lambda: self._with_store(lambda store: store.forget(before)))

    def set_retention(self, days: int) -> None:
        """A new usage_retention_days (SIGHUP): applied at the next upkeep, run now."""
        if days == self.retention_days:
            return
        self.retention_days = days

        def apply() -> None:
            if self._store is not None:
                self._store.retention_days = days
            self._next_maintain = 0.0
            self._maintain()

        self._submit(apply)

    def size(self) -> int | None:
        """Bytes of the store on disk, None when it cannot be read."""
        try:
            return file_size(self.path)
        except OSError:
            return None

    def status(self) -> api.UsageStore:
        """The `usage_store` map of `status`."""
        return {
            "path": self.path,
            "size_bytes": self.size(),
            "storing": self.storing,
            "written_at": self.written_at,
            "retention_days": self.retention_days,
        }

    def warnings(self) -> list[str]:
        out = []
        if self.warning:
            out.append(self.warning)
        if self.moved_aside:
            out.append(f"the usage store was corrupt or unreadable: moved aside to {self.moved_aside}, "
                       "a new one started")
        if self.dropped_bytes:
            out.append(f"usage: {self.dropped_bytes} bytes could not be kept while the store was not writable")
        return out

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Write what is left, close the store, end the thread (SIGTERM).

        Call it on the event loop, or once nothing counts any more."""
        if self._thread is None:
            return
        self.flush(force=True)
        self._jobs.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("usage store: the last batch was not written within %gs", timeout)
        self._thread = None

    def _submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._thread is None:
            fut.set_exception(UsageUnavailable("the usage store is closed"))
            return fut
        self._jobs.put((fn, fut))
        return fut

    # -- the thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                break
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                fut.set_exception(exc)
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # noqa: BLE001 - closing at exit must not raise
                log.exception("usage store: close failed")
            self._store = None

    def _open_now(self) -> None:
        self._next_open = 0.0
        try:
            self._open_store()
        except UsageUnavailable:
            pass  # said in warning

    def _open_store(self) -> UsageStore:
        """The open store; opening it (once per RETRY_SECONDS) if needed."""
        if self._store is not None:
            return self._store
        now = time.monotonic()
        if now < self._next_open:
            raise UsageUnavailable(self.warning or "the usage store is not open")
        self._next_open = now + RETRY_SECONDS
        try:
            try:
                store = UsageStore(self.path, gid=self.gid, retention_days=self.retention_days)
            except StoreCorrupt as exc:
                aside = move_aside(self.path, self.clock())
                log.error("usage store %s: %s; moved aside to %s, starting a new one", self.path, exc, aside)
                self.moved_aside = aside
                store = UsageStore(self.path, gid=self.gid, retention_days=self.retention_days)
        except (StoreCorrupt, StoreUnavailable, OSError) as exc:
            self._stop_storing(exc)
            raise UsageUnavailable(self.warning or str(exc)) from None
        self._store = store
        if not self.storing:
            log.info("usage store: %s", self.path)
        self.storing = True
        self.warning = None
        self._next_maintain = 0.0
        return store

    def _with_store(self, fn: Callable[[UsageStore], T]) -> T:
        """fn(store), its faults handled as the module docstring says."""
        store = self._open_store()
        try:
            return fn(store)
        except StoreCorrupt as exc:
            self._drop_corrupt(exc)
            raise UsageUnavailable(f"the usage store was corrupt: moved aside to {self.moved_aside}") from None
        except StoreUnavailable as exc:
            self._stop_storing(exc)
            raise UsageUnavailable(self.warning or str(exc)) from None

    def _drop_corrupt(self, exc: BaseException) -> None:
        """Close a store found corrupt in use and move it aside; the next
        use starts a new one."""
        log.error("usage store %s: %s", self.path, exc)
        if self._store is not None:
            try:
                self._store.db.close()
            except Exception:  # noqa: BLE001 - it is corrupt; closing is best effort
                pass
            self._store = None
        try:
            self.moved_aside = move_aside(self.path, self.clock())
        except OSError as err:
            self._stop_storing(err)
            return
        self._next_open = 0.0

    def _stop_storing(self, exc: BaseException) -> None:
        reason = str(exc) if not isinstance(exc, OSError) else (exc.strerror or str(exc))
        warning = f"not storing usage ({reason}); monitoring goes on, storing is retried every {RETRY_SECONDS:g}s"
        if self.storing or self.warning != warning:
            log.error("usage store %s: %s", self.path, warning)
        self.storing = False
        self.warning = warning
        if self._store is not None:
            try:
                self._store.db.close()
            except Exception:  # noqa: BLE001
                pass
            self._store = None
            self._next_open = time.monotonic() + RETRY_SECONDS

    def _write_batch(self, batch: Batch) -> None:
        if batch or self._retry:
            if self._retry:
                self.dropped_bytes += self._retry.merge(batch, MAX_KEYS)
                batch, self._retry = self._retry, Batch()
            self._write(batch)
        self._maintain()

    def _write(self, batch: Batch) -> None:
        try:
            store = self._open_store()
        except UsageUnavailable:
            self._retry = batch
            return
        try:
            store.write(batch.apps, batch.remotes, batch.hosts)
        except StoreCorrupt as exc:
            self._drop_corrupt(exc)
            self._write_retry(batch)
            return
        except StoreUnavailable as exc:
            self._stop_storing(exc)
            self._retry = batch
            return
        self.written_at = self.clock()

    def _write_retry(self, batch: Batch) -> None:
        """Once more, into a store just started after moving one aside."""
        try:
            store = self._open_store()
            store.write(batch.apps, batch.remotes, batch.hosts)
            self.written_at = self.clock()
        except (UsageUnavailable, StoreCorrupt, StoreUnavailable) as exc:
            if not isinstance(exc, UsageUnavailable):
                self._stop_storing(exc)
            self._retry = batch

    def _maintain(self) -> None:
        if self._store is None or time.monotonic() < self._next_maintain:
            return
        self._next_maintain = time.monotonic() + MAINTAIN_EVERY
        try:
            done = self._store.maintain(self.clock())
        except StoreCorrupt as exc:
            self._drop_corrupt(exc)
            return
        except StoreUnavailable as exc:
            self._stop_storing(exc)
            return
        if done["hours_compacted"] or done["rows_expired"]:
            log.info("usage store: %d hour rows compacted into days, %d rows past retention deleted",
                     done["hours_compacted"], done["rows_expired"])
