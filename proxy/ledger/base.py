"""The `Ledger` protocol: what the gateway calls to keep one record per call, and what the views read.

Two implementations: `SqliteLedger` (one host, the default) and `RedisLedger`
(replicas writing one shared ledger). Both take records on the hot path
without waiting for any I/O and write them in batches in the background.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from proxy.experiments.report import ExperimentRow
from proxy.ledger.aggregate import UsageRow
from proxy.ledger.record import CallRecord

DIMENSIONS = ("provider", "model", "key", "route", "day", "hour", "minute")  # what `usage(by=...)` may group by
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000  # a page of `calls()`; views should cap what clients ask for to this
DEFAULT_MAX_PENDING = 100_000  # records held in memory while the store cannot take them; then dropped and counted


class LedgerUnavailable(Exception):
    """A query could not be answered because the ledger's store is unreachable or unreadable."""


def check_dimensions(by: Sequence[str]) -> tuple[str, ...]:
    """`by` without repeats, in the order given; ValueError naming any unknown dimension."""
    unknown = [dim for dim in by if dim not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown usage dimension {unknown[0]!r}; expected some of {', '.join(DIMENSIONS)}")
    return tuple(dict.fromkeys(by))


def check_limit(limit: int) -> int:
    """`limit` when it is a page size this ledger serves; ValueError otherwise."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


class Ledger(Protocol):
    """Where call records go (SPEC §10): written off the hot path, read by the /sluice/* views.

    `stats` counts at least "recorded" (taken by `record`), "written"
    (durable in the store), "dropped" (lost: the in-memory buffer or the
    spool was full, or a shutdown could not write them), "errors" (failed
    writes, each retried or spooled) and "pending" (taken, not yet written).
    """

    @property
    def stats(self) -> dict[str, int]:
        """The counters (a snapshot)."""
        ...

    def record(self, rec: CallRecord) -> None:
        """Queue one record and return at once: never waits on I/O, never raises.

        The record is handed over: the caller must not change it afterwards.
        """
        ...

    async def start(self) -> None:
        """Open the store (creating its schema) and start the background writer."""
        ...

    async def flush(self) -> None:
        """Return once every record taken so far was written (or, failing that, retried or spooled)."""
        ...

    async def aclose(self) -> None:
        """Write everything queued, then stop the writer and close the store; never raises."""
        ...

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
        """Recent calls, newest first, with their tries, and the cursor of the next page (None at the end).

        `before` is a cursor this method returned. ValueError for a bad
        cursor or limit; `LedgerUnavailable` when the store cannot be read.
        """
        ...

    async def usage(self, *, since: float, by: Sequence[str]) -> list[UsageRow]:
        """Totals of the calls made at or after `since` (wall-clock seconds), one row per group.

        `by` is a subset of `DIMENSIONS`; "day" is the UTC date of the call.
        Rows are sorted by their group values. ValueError for an unknown
        dimension; `LedgerUnavailable` when the store cannot be read.
        """
        ...

    async def experiments(self, *, since: float) -> list[ExperimentRow]:
        """The A/B report of the calls made at or after `since`: one row per route, in name order.

        Reads the records with a variant and the judge's records, and counts
        them with `proxy.experiments.report` (the same code for every
        ledger). `LedgerUnavailable` when the store cannot be read.
        """
        ...

    def state(self) -> str:
        """For /readyz: "up" while records are being written, "down" while they cannot be."""
        ...
