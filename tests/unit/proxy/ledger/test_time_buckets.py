"""`usage(by=hour|minute)`: the time buckets the dashboard's spend-over-time chart reads, in both ledgers."""

from __future__ import annotations

import pytest

from proxy.ledger import SqliteLedger, aggregate
from proxy.ledger.aggregate import utc_bucket
from proxy.ledger.base import check_dimensions

from .test_sqlite_ledger import T0, make_record


def test_buckets_are_iso_utc_times_a_browser_parses():
    assert utc_bucket("hour", T0 + 3599.999) == "2026-01-01T00:00Z"
    assert utc_bucket("hour", T0 + 3600) == "2026-01-01T01:00Z"
    assert utc_bucket("minute", T0 + 65) == "2026-01-01T00:01Z"
    assert utc_bucket("minute", T0 - 0.5) == "2025-12-31T23:59Z"


def test_hour_and_minute_are_usage_dimensions():
    assert check_dimensions(["minute", "provider", "hour"]) == ("minute", "provider", "hour")


@pytest.mark.anyio
async def test_sqlite_groups_by_time_bucket_as_the_aggregator_does(tmp_path):
    records = [make_record(i) for i in (0, 59, 60, 3599, 3600, 7300)]
    ledger = SqliteLedger(str(tmp_path / "sluice.db"))
    await ledger.start()
    try:
        for rec in records:
            ledger.record(rec)
        await ledger.flush()
        for by in (["hour"], ["minute", "provider"]):
            assert await ledger.usage(since=0, by=by) == aggregate(records, since=0, by=by)
        hours = await ledger.usage(since=0, by=["hour"])
    finally:
        await ledger.aclose()
    assert [(row.group["hour"], row.calls) for row in hours] == [
        ("2026-01-01T00:00Z", 4),
        ("2026-01-01T01:00Z", 1),
        ("2026-01-01T02:00Z", 1),
    ]
