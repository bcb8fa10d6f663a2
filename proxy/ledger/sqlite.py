"""SqliteLedger: the default ledger, one SQLite file in WAL mode, written by one background thread.

`record` puts the record on a `queue.SimpleQueue` (a C call, no lock held
across I/O) and returns; the event loop never waits on the disk. The writer
thread takes what is queued and commits it in transactions of `batch_size`
records. When the queue is quiet it lingers `linger_s` after the first record,
so a trickle of calls still lands as batches rather than one commit each.

Failures (disk full, file unwritable, locked too long) are retried every
`retry_s` with the records kept in memory; past `max_pending` records held,
new ones are dropped and counted (RELIABILITY scenario 28): the calls go on.
A record the file refuses (a value SQLite cannot store) is dropped alone,
logged by request id, so it cannot block the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TypeVar

from proxy.experiments.report import ExperimentRow, experiment_rows
from proxy.ledger import sqlite_store as store
from proxy.ledger.aggregate import UsageRow
from proxy.ledger.base import DEFAULT_LIMIT, DEFAULT_MAX_PENDING, LedgerUnavailable, check_dimensions, check_limit
from proxy.ledger.record import CallRecord

logger = logging.getLogger("sluice.ledger")
T = TypeVar("T")

BATCH_SIZE = 500
LINGER_S = 0.05
RETRY_S = 1.0
STOP_ATTEMPTS = 3  # writes tried at shutdown before what is still held is given up (and counted)
# Errors about one record's values, not about the file: the record is dropped alone.
_DATA_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.DataError)
_VALUE_ERRORS = (*_DATA_ERRORS, ValueError, TypeError, OverflowError)


@dataclass(slots=True)
class _Marker:
    """Put on the queue by `flush` (and `aclose`, with `stop`): resolved once what precedes it was tried."""

    stop: bool = False
    done: Future[None] = field(default_factory=Future)


class SqliteLedger:
    """A `Ledger` in one SQLite file (SPEC §10); `path` must be a file, several processes may share it."""

    def __init__(
        self,
        path: str,
        store_text: bool = False,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        batch_size: int = BATCH_SIZE,
        linger_s: float = LINGER_S,
        retry_s: float = RETRY_S,
    ) -> None:
        self.path = path
        self.store_text = store_text
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.retry_s = retry_s
        self._queue: queue.SimpleQueue[CallRecord | _Marker] = queue.SimpleQueue()
        self._urgent = threading.Event()  # a flush is waiting: stop lingering
        self._thread: threading.Thread | None = None
        self._opened: Future[None] = Future()
        self._closed = False
        self._dead = False  # the writer thread has ended
        # Each counter has one writer thread, so none needs a lock.
        self._recorded = self._refused = 0  # event loop
        self._written = self._lost = self._errors = 0  # writer thread
        self._failing = False

    @property
    def stats(self) -> dict[str, int]:
        """Counters: recorded, written, dropped, errors (failed transactions, retried), pending."""
        return {
            "recorded": self._recorded,
            "written": self._written,
            "dropped": self._refused + self._lost,
            "errors": self._errors,
            "pending": self._recorded - self._written - self._lost,
        }

    def record(self, rec: CallRecord) -> None:
        """Queue `rec` for the writer thread; drop it (counted) when closed or `max_pending` are held."""
        try:
            if self._closed or self._recorded - self._written - self._lost >= self.max_pending:
                self._refused += 1
                return
            self._queue.put(rec)
            self._recorded += 1
        except Exception:  # never let the ledger fail a call
            self._refused += 1

    async def start(self) -> None:
        """Start the writer thread; it opens the file and creates the schema (a failure is logged, then retried)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sluice-ledger-writer", daemon=True)
            self._thread.start()
        await asyncio.wrap_future(self._opened)

    async def flush(self) -> None:
        """Wait until the writer has tried to write every record taken so far (nothing to do before `start`)."""
        if self._thread is not None:
            await self._send(_Marker())

    async def aclose(self) -> None:
        """Write what is queued (a few attempts if the file fails), stop the writer, close the file; never raises."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            await self.start()  # records taken before start are written too
        self._closed = True
        if self._thread is not None:
            await self._send(_Marker(stop=True))
            await asyncio.to_thread(self._thread.join)

    def state(self) -> str:
        """ "down" while writes fail (records are held and retried), else "up"."""
        return "down" if self._failing or self._closed else "up"

    async def calls(
        self,
        *,
        limit: int = DEFAULT_LIMIT,
        before: str | None = None,
        request_id: str | None = None,
        key_id: str | None = None,
        provider: str | None = None,
        status: int | None = None,
    ) -> tuple[list[CallRecord], str | None]:
        """Recent calls, newest `ts` first, with their tries; the cursor is "<ts>:<id>" of the last one."""
        check_limit(limit)
        if before is not None:
            store.parse_cursor(before)  # a ValueError here, not inside the thread
        filters = {"request_id": request_id, "key_id": key_id, "provider": provider, "status": status}
        return await self._read(lambda conn: store.select_calls(conn, limit, before, filters))

    async def usage(self, *, since: float, by: Sequence[str]) -> list[UsageRow]:
        """Usage rows since `since`, grouped and counted in SQL, money summed exactly by `decimal_sum`."""
        dims = check_dimensions(by)
        return await self._read(lambda conn: store.select_usage(conn, since, dims))

    async def experiments(self, *, since: float) -> list[ExperimentRow]:
        """The A/B report since `since`: the rows selected in SQL, counted in Python (percentiles are exact)."""
        return await self._read(lambda conn: experiment_rows(store.select_experiment_samples(conn, since)))

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn = store.connect_reader(self.path)
            try:
                return query(conn)
            finally:
                conn.close()

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"ledger {self.path}: {exc}") from exc

    async def _send(self, marker: _Marker) -> None:
        self._queue.put(marker)
        self._urgent.set()
        if self._dead:  # checked after the put: a writer dying meanwhile resolves it while emptying the queue
            _resolve(marker.done)
        await asyncio.wrap_future(marker.done)

    # --- the writer thread -------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            logger.exception("ledger %s: the writer thread died; records are no longer written", self.path)
        finally:
            self._dead = True
            _resolve(self._opened)
            with contextlib.suppress(queue.Empty):
                while True:  # release every waiter; what they wait for will not happen
                    item = self._queue.get_nowait()
                    if isinstance(item, _Marker):
                        _resolve(item.done)

    def _loop(self) -> None:
        conn = self._connect()
        _resolve(self._opened)
        held: list[CallRecord] = []  # taken from the queue, not yet written
        while True:
            markers = self._take(held, wait=self.retry_s if self._failing else None)
            conn = self._write(conn or self._connect(), held)
            stop = next((m for m in markers if m.stop), None)
            if stop is not None:
                self._finish(conn, held)
                for marker in markers:
                    _resolve(marker.done)
                return
            for marker in markers:
                _resolve(marker.done)
            if self._failing and not markers:
                self._urgent.wait(self.retry_s)  # a flush or aclose cuts the wait short

    def _take(self, held: list[CallRecord], wait: float | None) -> list[_Marker]:
        """Move what is queued into `held`; wait for work when nothing is held. The markers met on the way."""
        markers: list[_Marker] = []
        if not held:
            try:
                first = self._queue.get(timeout=wait)
            except queue.Empty:
                return markers
            if isinstance(first, _Marker):
                markers.append(first)
            else:
                held.append(first)
                self._urgent.wait(self.linger_s)  # let a batch gather, unless a flush waits
        self._urgent.clear()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return markers
            if isinstance(item, _Marker):
                markers.append(item)
            else:
                held.append(item)

    def _connect(self) -> sqlite3.Connection | None:
        try:
            conn = store.connect_writer(self.path)
        except (sqlite3.Error, OSError, RuntimeError) as exc:
            self._fail(exc)
            return None
        return conn

    def _write(self, conn: sqlite3.Connection | None, held: list[CallRecord]) -> sqlite3.Connection | None:
        """Commit `held` in batches, removing what landed; on a file failure keep the rest for a retry.

        The connection to go on with: None after a failure, so the next try
        opens the file afresh (it may have been replaced, or its directory
        made again).
        """
        if conn is None:
            return None
        while held:
            batch = held[: self.batch_size]
            try:
                store.insert(conn, batch, self.store_text)
            except _VALUE_ERRORS:
                self._write_one_by_one(conn, batch)
            except sqlite3.Error as exc:
                self._fail(exc)
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
                return None
            else:
                self._written += len(batch)
            del held[: len(batch)]
        if self._failing:
            logger.info("ledger %s: writing again", self.path)
        self._failing = False
        return conn

    def _write_one_by_one(self, conn: sqlite3.Connection, batch: list[CallRecord]) -> None:
        for rec in batch:
            try:
                store.insert(conn, [rec], self.store_text)
            except _VALUE_ERRORS as exc:
                self._lost += 1
                logger.error("ledger %s: record of request %s not stored: %s", self.path, rec.request_id, exc)
            else:
                self._written += 1

    def _fail(self, exc: BaseException) -> None:
        self._errors += 1
        if not self._failing:
            logger.error("ledger %s: cannot write (%s); records are held and retried", self.path, exc)
        self._failing = True

    def _finish(self, conn: sqlite3.Connection | None, held: list[CallRecord]) -> None:
        """At shutdown: a few more tries for what is held, then count the rest as dropped, and close."""
        for _ in range(STOP_ATTEMPTS):
            if not held:
                break
            self._urgent.wait(min(self.retry_s, 0.2))
            conn = self._write(conn or self._connect(), held)
        if held:
            self._lost += len(held)
            logger.error("ledger %s: %d records lost at shutdown", self.path, len(held))
            held.clear()
        if conn is not None:
            conn.close()


def _resolve(future: Future[None]) -> None:
    # The awaiting task may have been cancelled, which cancels this future too.
    with contextlib.suppress(InvalidStateError):
        future.set_result(None)
