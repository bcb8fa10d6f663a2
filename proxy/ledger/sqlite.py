"""SqliteLedger: the default ledger, one SQLite file in WAL mode, written by one background thread.

`record` puts the record on the writer thread's queue (see
`proxy.ledger.sqlite_writer`, which also says how batches are formed and
failures retried) and returns; the event loop never waits on the disk. Past
`max_pending` records held, new ones are dropped and counted (RELIABILITY
scenario 28): the calls go on. Queries run in worker threads on their own
connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

from proxy.experiments.report import ExperimentRow, experiment_rows
from proxy.ledger import sqlite_store as store
from proxy.ledger.aggregate import UsageRow
from proxy.ledger.base import DEFAULT_LIMIT, DEFAULT_MAX_PENDING, LedgerUnavailable, check_dimensions, check_limit
from proxy.ledger.record import CallRecord
from proxy.ledger.sqlite_writer import SqliteWriter

T = TypeVar("T")

BATCH_SIZE = 500
LINGER_S = 0.05
RETRY_S = 1.0


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
        self._writer = SqliteWriter(path, store_text, batch_size=batch_size, linger_s=linger_s, retry_s=retry_s)
        self._closed = False
        self._recorded = self._refused = 0  # counted on the event loop; the writer thread counts the rest

    @property
    def stats(self) -> dict[str, int]:
        """Counters: recorded, written, dropped, errors (failed transactions, retried), pending."""
        return {
            "recorded": self._recorded,
            "written": self._writer.written,
            "dropped": self._refused + self._writer.lost,
            "errors": self._writer.errors,
            "pending": self._recorded - self._writer.written - self._writer.lost,
        }

    def record(self, rec: CallRecord) -> None:
        """Queue `rec` for the writer thread; drop it (counted) when closed or `max_pending` are held."""
        try:
            if self._closed or self._recorded - self._writer.written - self._writer.lost >= self.max_pending:
                self._refused += 1
                return
            self._writer.put(rec)
            self._recorded += 1
        except Exception:  # never let the ledger fail a call
            self._refused += 1

    async def start(self) -> None:
        """Start the writer thread; it opens the file and creates the schema (a failure is logged, then retried)."""
        await self._writer.start()

    async def flush(self) -> None:
        """Wait until the writer has tried to write every record taken so far (nothing to do before `start`)."""
        await self._writer.flush()

    async def aclose(self) -> None:
        """Write what is queued (a few attempts if the file fails), stop the writer, close the file; never raises."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            await self.start()  # records taken before start are written too
        self._closed = True
        await self._writer.stop()

    def state(self) -> str:
        """ "down" while writes fail (records are held and retried), else "up"."""
        return "down" if self._writer.failing or self._closed else "up"

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
