"""Usage totals: `UsageRow`, and `Aggregator`, which sums records into rows in Python (SPEC §10).

Money is summed as `Decimal`, so totals are exact whatever the number of
calls. What counts where:

- errors: calls answered with a status >= 400;
- unpriced: calls that succeeded (status < 400), were served by a provider,
  were not cache hits, and have no cost (unknown price or no usage);
  never counted as free;
- cost_usd: the sum of the priced calls, judge calls included; judge_usd is
  the part of it that A/B judges spent (issue 8).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from proxy.ledger.record import CallRecord

ZERO = Decimal(0)


def utc_day(ts: float) -> str:
    """The UTC date of a wall-clock time, "YYYY-MM-DD" (what SQLite's `strftime('%Y-%m-%d', ts, 'unixepoch')` gives)."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


# The finer time buckets `usage(by=...)` may group by, as ISO UTC times (the dashboard's spend over time).
TIME_BUCKETS = {"hour": "%Y-%m-%dT%H:00Z", "minute": "%Y-%m-%dT%H:%MZ"}


def utc_bucket(dim: str, ts: float) -> str:
    """The UTC hour ("2026-01-31T14:00Z") or minute ("2026-01-31T14:05Z") of a wall-clock time."""
    return time.strftime(TIME_BUCKETS[dim], time.gmtime(ts))


def group_values(rec: CallRecord, by: Sequence[str]) -> tuple[str | None, ...]:
    """The values of `rec` for the dimensions `by`, in that order."""
    values: list[str | None] = []
    for dim in by:
        if dim == "key":
            values.append(rec.key_id)
        elif dim == "day":
            values.append(utc_day(rec.ts))
        elif dim in TIME_BUCKETS:
            values.append(utc_bucket(dim, rec.ts))
        else:
            values.append(getattr(rec, dim))
    return tuple(values)


def is_unpriced(rec: CallRecord) -> bool:
    """Whether `rec` is a call someone paid for at a price the gateway does not know."""
    return rec.status < 400 and rec.provider is not None and rec.cache_status != "HIT" and rec.cost_usd is None


@dataclass(slots=True)
class UsageRow:
    """The totals of one group of calls; `group` maps each dimension asked for to its value."""

    group: dict[str, str | None] = field(default_factory=dict)
    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = ZERO
    saved_usd: Decimal = ZERO
    judge_usd: Decimal = ZERO
    unpriced: int = 0
    cache_hits: int = 0

    def add_record(self, rec: CallRecord) -> None:
        """Count one call in this row."""
        self.calls += 1
        self.errors += rec.status >= 400
        self.input_tokens += rec.input_tokens or 0
        self.output_tokens += rec.output_tokens or 0
        self.cached_tokens += rec.cached_tokens or 0
        self.reasoning_tokens += rec.reasoning_tokens or 0
        if rec.cost_usd is not None:
            self.cost_usd += rec.cost_usd
            if rec.judge:
                self.judge_usd += rec.cost_usd
        if rec.saved_usd is not None:
            self.saved_usd += rec.saved_usd
        self.unpriced += is_unpriced(rec)
        self.cache_hits += rec.cache_status == "HIT"

    def add_row(self, other: UsageRow) -> None:
        """Add another row's totals to this one (its group is ignored)."""
        self.calls += other.calls
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.cost_usd += other.cost_usd
        self.saved_usd += other.saved_usd
        self.judge_usd += other.judge_usd
        self.unpriced += other.unpriced
        self.cache_hits += other.cache_hits

    @classmethod
    def total(cls, rows: Iterable[UsageRow]) -> UsageRow:
        """One row with the totals of `rows` and an empty group: the "total" line of a usage table."""
        total = cls()
        for row in rows:
            total.add_row(row)
        return total

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data: money as strings, so no float ever rounds it."""
        return {
            "group": dict(self.group),
            "calls": self.calls,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": str(self.cost_usd),
            "saved_usd": str(self.saved_usd),
            "judge_usd": str(self.judge_usd),
            "unpriced": self.unpriced,
            "cache_hits": self.cache_hits,
        }


def sort_key(row: UsageRow) -> tuple[tuple[bool, str], ...]:
    """Rows in order of their group values, a missing value (None) first."""
    return tuple((value is not None, value or "") for value in row.group.values())


class Aggregator:
    """Sums records into one `UsageRow` per group of `by`, in Python (the Redis ledger's `usage`)."""

    def __init__(self, by: Sequence[str], since: float) -> None:
        self.by = tuple(by)
        self.since = since
        self._rows: dict[tuple[str | None, ...], UsageRow] = {}

    def add(self, rec: CallRecord) -> None:
        """Count `rec` in its group, unless it is older than `since`."""
        if rec.ts < self.since:
            return
        values = group_values(rec, self.by)
        row = self._rows.get(values)
        if row is None:
            row = self._rows[values] = UsageRow(group=dict(zip(self.by, values, strict=True)))
        row.add_record(rec)

    def rows(self) -> list[UsageRow]:
        """The rows so far, sorted by their group values."""
        return sorted(self._rows.values(), key=sort_key)


def aggregate(records: Iterable[CallRecord], *, since: float, by: Sequence[str]) -> list[UsageRow]:
    """The usage rows of `records` at or after `since`, grouped by `by`."""
    aggregator = Aggregator(by, since)
    for rec in records:
        aggregator.add(rec)
    return aggregator.rows()
