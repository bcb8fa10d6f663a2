"""Usage totals: what counts as an error, unpriced, a cache hit or judge spend; exact Decimal sums; the JSON form."""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.ledger import AttemptRow, CallRecord, SqliteLedger, UsageRow, aggregate
from proxy.ledger.aggregate import Aggregator, is_unpriced, utc_day
from proxy.ledger.base import DIMENSIONS
from proxy.ledger.codec import decode, encode, encode_all

from .test_sqlite_ledger import T0, make_record


def test_each_call_counts_where_it_belongs():
    row = UsageRow()
    row.add_record(make_record(0, cost_usd=Decimal("0.25"), cached_tokens=7, reasoning_tokens=3))
    row.add_record(make_record(1, status=503, cost_usd=None, input_tokens=None, output_tokens=None))
    row.add_record(make_record(2, cache_status="HIT", cost_usd=Decimal(0), saved_usd=Decimal("0.25")))
    row.add_record(make_record(3, cost_usd=None))
    row.add_record(make_record(4, cost_usd=Decimal("0.01"), judge=True))
    assert row == UsageRow(
        calls=5,
        errors=1,
        input_tokens=400,
        output_tokens=80,
        cached_tokens=7,
        reasoning_tokens=3,
        cost_usd=Decimal("0.26"),
        saved_usd=Decimal("0.25"),
        judge_usd=Decimal("0.01"),
        unpriced=1,
        cache_hits=1,
    )


def test_unpriced_means_paid_for_at_an_unknown_price():
    assert is_unpriced(make_record(0, cost_usd=None))
    assert not is_unpriced(make_record(0, cost_usd=Decimal(0)))  # priced at zero is priced
    assert not is_unpriced(make_record(0, cost_usd=None, status=429))  # failed: counted as an error
    assert not is_unpriced(make_record(0, cost_usd=None, cache_status="HIT"))  # served from the cache
    assert not is_unpriced(make_record(0, cost_usd=None, provider=None))  # nobody served it
    assert is_unpriced(make_record(0, cost_usd=None, status=304))


def test_sums_of_many_small_costs_are_exact():
    rows = aggregate([make_record(i, cost_usd=Decimal("0.0000001")) for i in range(100_000)], since=0, by=[])
    assert rows[0].cost_usd == Decimal("0.0100000")  # a float sum would be 0.009999999999999...
    assert str(rows[0].cost_usd) == "0.0100000"


def test_rows_group_sort_and_total():
    records = [
        make_record(0, provider="openai", model="gpt-4o-mini"),
        make_record(1, provider="cerebras"),
        make_record(2, provider=None, model=None, status=400, cost_usd=None),
        make_record(3, provider="openai", model="gpt-4o"),
    ]
    rows = aggregate(records, since=0, by=["provider", "model"])
    assert [tuple(r.group.values()) for r in rows] == [
        (None, None),
        ("cerebras", "llama3.1-8b"),
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
    ]
    total = UsageRow.total(rows)
    assert total.group == {}
    assert (total.calls, total.errors, total.cost_usd) == (4, 1, Decimal("0.0000360"))
    assert aggregate(records, since=T0 + 2, by=["provider"]) == [
        UsageRow(group={"provider": None}, calls=1, errors=1, input_tokens=100, output_tokens=20),
        UsageRow(
            group={"provider": "openai"}, calls=1, input_tokens=100, output_tokens=20, cost_usd=Decimal("0.0000120")
        ),
    ]


def test_as_dict_keeps_money_as_exact_strings():
    row = UsageRow(group={"key": "team-a"}, calls=1, cost_usd=Decimal("0.000000123"), saved_usd=Decimal("1E-12"))
    data = json.loads(json.dumps(row.as_dict()))
    assert data["cost_usd"] == "1.23E-7"
    assert Decimal(data["cost_usd"]) == Decimal("0.000000123")
    assert Decimal(data["saved_usd"]) == Decimal("1E-12")
    assert data["group"] == {"key": "team-a"}


def test_day_is_the_utc_date():
    assert utc_day(T0) == "2026-01-01"
    assert utc_day(T0 - 0.5) == "2025-12-31"
    assert utc_day(T0 + 86_399.999) == "2026-01-01"


def test_an_aggregator_ignores_calls_before_since():
    aggregator = Aggregator(["route"], since=T0 + 1)
    for i in range(3):
        aggregator.add(make_record(i))
    assert [(r.group, r.calls) for r in aggregator.rows()] == [({"route": "fast"}, 2)]


# --- records as JSON (the Redis ledger's stream entries and spool) ---------


def test_a_record_round_trips_through_json_with_money_as_strings():
    rec = make_record(
        1,
        cost_usd=Decimal("0.000012345678901234567890"),
        saved_usd=Decimal("0"),
        variant="b",
        prompt_text="hi",
        answer_text="yo\nthere",
        tries=[
            AttemptRow(1, "groq", "llama", 429, "failed", "rate limited", None, 5.5, False),
            AttemptRow(2, "cerebras", "llama3.1-8b", 200, "ok", None, 3.0, 12.0, True),
        ],
    )
    raw = encode(rec, store_text=True)
    assert b"\n" not in raw  # one line per record
    assert json.loads(raw)["cost_usd"] == "0.000012345678901234567890"
    assert decode(raw) == rec
    stripped = decode(encode(rec, store_text=False))
    assert (stripped.prompt_text, stripped.answer_text) == (None, None)
    assert b"hi" not in encode(rec, store_text=False)


def test_a_record_json_cannot_hold_is_left_out_alone():
    bad = make_record(1, variant=object())
    payloads = encode_all([make_record(0), bad, make_record(2)], store_text=False)
    assert [decode(p).request_id for p in payloads] == ["r0", "r2"]


# --- the SQLite ledger's SQL totals agree with the Python ones ---------------

_names = st.sampled_from(["a", "b", "c"]) | st.none()
_money = st.none() | st.decimals(min_value=0, max_value=10, places=12, allow_nan=False, allow_infinity=False)
_tokens = st.none() | st.integers(min_value=0, max_value=10**9)
_records = st.builds(
    CallRecord,
    ts=st.floats(min_value=T0 - 3 * 86_400, max_value=T0 + 3 * 86_400),
    request_id=st.text(min_size=1, max_size=8),
    key_id=_names,
    route=_names,
    provider=_names,
    model=_names,
    status=st.sampled_from([200, 201, 304, 400, 429, 500, 502]),
    cache_status=st.sampled_from(["HIT", "MISS", "REFRESH", "BYPASS"]),
    attempts=st.integers(0, 5),
    latency_ms=st.floats(0, 1e6),
    ttft_ms=st.none() | st.floats(0, 1e6),
    input_tokens=_tokens,
    output_tokens=_tokens,
    cached_tokens=_tokens,
    reasoning_tokens=_tokens,
    cost_usd=_money,
    saved_usd=_money,
    judge=st.booleans(),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(_records, max_size=40), since=st.floats(min_value=T0 - 4 * 86_400, max_value=T0 + 4 * 86_400))
def test_sqlite_usage_equals_the_python_aggregate(records, since):
    async def check() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            ledger = SqliteLedger(str(Path(tmp) / "sluice.db"))
            await ledger.start()
            try:
                for rec in records:
                    ledger.record(rec)
                await ledger.flush()
                for by in itertools.chain.from_iterable(
                    itertools.combinations(DIMENSIONS, n) for n in (0, 1, 2, len(DIMENSIONS))
                ):
                    assert await ledger.usage(since=since, by=by) == aggregate(records, since=since, by=by)
            finally:
                await ledger.aclose()

    asyncio.run(check())
