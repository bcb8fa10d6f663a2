"""The SQLite ledger's writer thread: it commits queued records in batches, off the event loop.

The thread takes what is queued and commits it in transactions of `batch_size`
records. When the queue is quiet it lingers `linger_s` after the first record,
so a trickle of calls still lands as batches rather than one commit each.

Failures (disk full, file unwritable, locked too long) are retried every
`retry_s` with the records kept in memory (`SqliteLedger` bounds how many).
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
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from proxy.ledger import sqlite_store as store
from proxy.ledger.record import CallRecord

logger = logging.getLogger("sluice.ledger")

STOP_ATTEMPTS = 3  # writes tried at shutdown before what is still held is given up (and counted)
# Errors about one record's values, not about the file: the record is dropped alone.
_DATA_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.DataError)
_VALUE_ERRORS = (*_DATA_ERRORS, ValueError, TypeError, OverflowError)


@dataclass(slots=True)
class _Marker:
    """Put on the queue by `flush` (and by `stop`, with `stop` set): resolved once what precedes it was tried."""

    stop: bool = False
    done: Future[None] = field(default_factory=Future)


class SqliteWriter:
    """The thread that writes queued records to the SQLite file at `path`; started by `start`, ended by `stop`.

    `written`, `lost` (refused by the file, or still held at shutdown), `errors`
    (failed transactions, retried) and `failing` are set by the thread alone, so
    none needs a lock; the event loop only reads them.
    """

    def __init__(self, path: str, store_text: bool, *, batch_size: int, linger_s: float, retry_s: float) -> None:
        self.path = path
        self.store_text = store_text
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.retry_s = retry_s
        self._queue: queue.SimpleQueue[CallRecord | _Marker] = queue.SimpleQueue()
        self._urgent = threading.Event()  # a flush is waiting: stop lingering
        self._thread: threading.Thread | None = None
        self._opened: Future[None] = Future()
        self._dead = False  # the thread has ended
        self.written = self.lost = self.errors = 0
        self.failing = False

    def put(self, rec: CallRecord) -> None:
        """Queue `rec` for the thread: a C call, no lock held across I/O."""
        self._queue.put(rec)

    async def start(self) -> None:
        """Start the thread, once; return when it has opened the file (or failed to, logged and retried)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sluice-ledger-writer", daemon=True)
            self._thread.start()
        await asyncio.wrap_future(self._opened)

    async def flush(self) -> None:
        """Wait until the thread has tried to write every record queued so far (nothing to do before `start`)."""
        if self._thread is not None:
            await self._send(_Marker())

    async def stop(self) -> None:
        """Write what is queued (a few attempts if the file fails), end the thread and close the file."""
        if self._thread is not None:
            await self._send(_Marker(stop=True))
            await asyncio.to_thread(self._thread.join)

    async def _send(self, marker: _Marker) -> None:
        self._queue.put(marker)
        self._urgent.set()
        if self._dead:  # checked after the put: a writer dying meanwhile resolves it while emptying the queue
            _resolve(marker.done)
        await asyncio.wrap_future(marker.done)

    # --- on the thread -----------------------------------------------------

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
            markers = self._take(held, wait=self.retry_s if self.failing else None)
            conn = self._write(conn or self._connect(), held)
            stop = next((m for m in markers if m.stop), None)
            if stop is not None:
                self._finish(conn, held)
                for marker in markers:
                    _resolve(marker.done)
                return
            for marker in markers:
                _resolve(marker.done)
            if self.failing and not markers:
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
                self.written += len(batch)
            del held[: len(batch)]
        if self.failing:
            logger.info("ledger %s: writing again", self.path)
        self.failing = False
        return conn

    def _write_one_by_one(self, conn: sqlite3.Connection, batch: list[CallRecord]) -> None:
        for rec in batch:
            try:
                store.insert(conn, [rec], self.store_text)
            except _VALUE_ERRORS as exc:
                self.lost += 1
                logger.error("ledger %s: record of request %s not stored: %s", self.path, rec.request_id, exc)
            else:
                self.written += 1

    def _fail(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.failing:
            logger.error("ledger %s: cannot write (%s); records are held and retried", self.path, exc)
        self.failing = True

    def _finish(self, conn: sqlite3.Connection | None, held: list[CallRecord]) -> None:
        """At shutdown: a few more tries for what is held, then count the rest as dropped, and close."""
        for _ in range(STOP_ATTEMPTS):
            if not held:
                break
            self._urgent.wait(min(self.retry_s, 0.2))
            conn = self._write(conn or self._connect(), held)
        if held:
            self.lost += len(held)
            logger.error("ledger %s: %d records lost at shutdown", self.path, len(held))
            held.clear()
        if conn is not None:
            conn.close()


def _resolve(future: Future[None]) -> None:
    # The awaiting task may have been cancelled, which cancels this future too.
    with contextlib.suppress(InvalidStateError):
        future.set_result(None)
