"""The Redis ledger's queries: pages of the stream, read through `RedisOps` and decoded in a worker thread.

`calls` walks the stream backwards (XREVRANGE) from a cursor, which is the
id of the last entry returned; `usage` and `experiments` walk it forwards
(XRANGE) from `since`, counting in Python (money as Decimals). Stream ids are
Redis's clock at write time, which comes after the call's `ts` (the record is
written when the call ends), so both start `CLOCK_SKEW_S` early to allow for
a replica whose clock runs ahead of Redis's, and filter on `ts` itself.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from middleware.stores.redis_client import FAILED, RedisOps
from proxy.experiments.report import ExperimentAggregator, ExperimentRow, Sample
from proxy.ledger import codec
from proxy.ledger.aggregate import Aggregator, UsageRow
from proxy.ledger.base import LedgerUnavailable
from proxy.ledger.record import CallRecord

PAGE = 500  # stream entries per XRANGE / XREVRANGE
MAX_SCAN = 50_000  # entries one filtered `calls` page may scan before it returns what it found, and a cursor
CLOCK_SKEW_S = 300
_STREAM_ID = re.compile(r"\d+-\d+")

Entry = tuple[str, CallRecord | None]  # (stream id, the record; None when it cannot be read)


class StreamReader:
    """Reads the ledger stream `stream` through `ops` (so a query is bounded, and never hangs on Redis)."""

    def __init__(self, ops: RedisOps, stream: str) -> None:
        self._ops = ops
        self._stream = stream

    async def calls(
        self, limit: int, before: str | None, wanted: dict[str, Any]
    ) -> tuple[list[CallRecord], str | None]:
        """Up to `limit` records, newest written first, whose fields equal the non-None values of `wanted`.

        A filtered page scans at most `MAX_SCAN` entries, so it may hold fewer
        than `limit` calls and still have a cursor. ValueError for a bad cursor.
        """
        if before is not None and not _STREAM_ID.fullmatch(before):
            raise ValueError(f"bad cursor {before!r}")
        filters = {name: value for name, value in wanted.items() if value is not None}
        count = PAGE if filters else limit + 1  # unfiltered: one more than asked says whether there is more
        top = "(" + before if before else "+"
        found: list[CallRecord] = []
        scanned = 0
        while True:
            entries, full = await self._page(top, count, reverse=True)
            for i, (entry_id, rec) in enumerate(entries):
                if rec is not None and all(getattr(rec, name) == value for name, value in filters.items()):
                    found.append(rec)
                    if len(found) == limit:
                        return found, entry_id if full or i + 1 < len(entries) else None
            scanned += len(entries)
            if not full:
                return found, None
            if scanned >= MAX_SCAN:
                return found, entries[-1][0]
            top = "(" + entries[-1][0]

    async def usage(self, since: float, by: Sequence[str]) -> list[UsageRow]:
        """Usage rows of the records with `ts >= since`, grouped by `by`."""
        aggregator = Aggregator(by, since)
        async for entries in self._pages_since(since):
            await asyncio.to_thread(_add_all, aggregator, entries)
        return aggregator.rows()

    async def experiments(self, since: float) -> list[ExperimentRow]:
        """The A/B report of the records with `ts >= since` (counted by `proxy.experiments.report`)."""
        aggregator = ExperimentAggregator()
        async for entries in self._pages_since(since):
            await asyncio.to_thread(_add_samples, aggregator, entries, since)
        return aggregator.rows()

    async def _pages_since(self, since: float) -> AsyncIterator[list[Entry]]:
        """The stream forwards, page by page, from `CLOCK_SKEW_S` before `since` (callers filter on `ts`)."""
        start = f"{max(0, int((since - CLOCK_SKEW_S) * 1000))}-0"
        while True:
            entries, full = await self._page(start, PAGE, reverse=False)
            yield entries
            if not full:
                return
            start = "(" + entries[-1][0]

    async def _page(self, start: str, count: int, *, reverse: bool) -> tuple[list[Entry], bool]:
        """Entries from `start` (newest first when `reverse`), decoded; and whether the page was full."""
        client = self._ops.client
        if reverse:
            page = await self._ops.call(lambda: client.xrevrange(self._stream, max=start, min="-", count=count))
        else:
            page = await self._ops.call(lambda: client.xrange(self._stream, min=start, max="+", count=count))
        if page is FAILED:
            raise LedgerUnavailable("Redis did not answer the ledger query")
        page = page or []
        return await asyncio.to_thread(_decode_entries, page), len(page) == count


def _decode_entries(page: list[Any]) -> list[Entry]:
    entries: list[Entry] = []
    for entry_id, fields in page:
        raw = fields.get(b"record", fields.get("record"))
        try:
            rec = codec.decode(raw) if raw is not None else None
        except (ValueError, KeyError, TypeError, ArithmeticError):
            rec = None  # not written by this code: skipped rather than failing the query
        entries.append((entry_id.decode() if isinstance(entry_id, bytes) else entry_id, rec))
    return entries


def _add_all(aggregator: Aggregator, entries: list[Entry]) -> None:
    for _, rec in entries:
        if rec is not None:
            aggregator.add(rec)


def _add_samples(aggregator: ExperimentAggregator, entries: list[Entry], since: float) -> None:
    for _, rec in entries:
        # The same records the SQLite ledger selects: A/B calls and judge calls since `since`.
        if rec is not None and rec.ts >= since and (rec.variant is not None or rec.judge):
            sample = Sample(
                rec.route,
                rec.variant,
                rec.status,
                rec.latency_ms,
                rec.ttft_ms,
                rec.stream,
                rec.cost_usd,
                rec.judge,
                rec.verdict,
                rec.opponent,
            )
            aggregator.add(sample)
