"""SqliteLedger: nothing lost, the event loop never waits on the disk, queries right, text kept only when asked."""

from __future__ import annotations

import asyncio
import gc
import itertools
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from proxy.experiments.report import Sample, experiment_rows
from proxy.ledger import AttemptRow, CallRecord, LedgerUnavailable, SqliteLedger, aggregate, open_ledger
from proxy.ledger.base import DIMENSIONS

pytestmark = pytest.mark.anyio

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
# The longest a 1 ms ticker may wait while 10,000 records are taken and written: measured
# 2-7 ms on an idle 2-core box, up to 15 ms with another process saturating one core (the
# writer thread holds the GIL at most one 5 ms switch interval at a time). Writing on the
# loop instead would stall it for the whole burst (~150 ms); `sum(record_s)` catches that too.
MAX_STALL_S = 0.025


def make_record(i: int, **fields: Any) -> CallRecord:
    """A priced call of request `r<i>`, `i` seconds after T0, with one try; `fields` override."""
    base = CallRecord(
        ts=T0 + i,
        request_id=f"r{i}",
        key_id="team-a",
        route="fast",
        provider="cerebras",
        model="llama3.1-8b",
        status=200,
        cache_status="MISS",
        attempts=1,
        latency_ms=12.5,
        ttft_ms=3.25,
        input_tokens=100,
        output_tokens=20,
        cost_usd=Decimal("0.0000120"),
        tries=[AttemptRow(1, "cerebras", "llama3.1-8b", 200, "ok", None, 3.0, 12.0, False)],
    )
    return replace(base, **fields)


@pytest.fixture
async def ledger(tmp_path):
    ledger = SqliteLedger(str(tmp_path / "sluice.db"))
    await ledger.start()
    yield ledger
    await ledger.aclose()


def rows(path: str, sql: str = "SELECT COUNT(*) FROM calls") -> list[Any]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def record_all(ledger: SqliteLedger, records: list[CallRecord]) -> None:
    for rec in records:
        ledger.record(rec)
    await ledger.flush()


async def test_a_burst_of_10000_records_leaves_10000_rows_and_never_stalls_the_event_loop(ledger):
    records = [make_record(i) for i in range(10_000)]
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    # The gateway freezes its start-up objects out of the collector (lifespan tune_gc);
    # without that, a full collection of these 10,000 test records would be measured.
    gc.collect()
    gc.freeze()
    try:
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        record_s = []
        for start in range(0, len(records), 100):  # 100 calls end per loop turn
            for rec in records[start : start + 100]:
                began = time.perf_counter()
                ledger.record(rec)
                record_s.append(time.perf_counter() - began)
            await asyncio.sleep(0)
        await ledger.flush()
        done.set()
        await tick
    finally:
        gc.unfreeze()
    assert rows(ledger.path) == [(10_000,)]
    assert rows(ledger.path, "SELECT COUNT(*) FROM attempts") == [(10_000,)]
    assert ledger.stats == {"recorded": 10_000, "written": 10_000, "dropped": 0, "errors": 0, "pending": 0}
    # record() does no I/O: microseconds each; the rare slow one waited for the GIL
    # (the writer thread holds it up to one 5 ms switch interval), never for the disk.
    assert sum(record_s) < 0.1
    assert max(record_s) < MAX_STALL_S
    assert max(gaps) < MAX_STALL_S, f"the event loop stalled {max(gaps) * 1000:.1f} ms"


async def test_aclose_writes_what_is_still_queued(tmp_path):
    ledger = SqliteLedger(str(tmp_path / "sluice.db"), linger_s=10)  # nothing would be written for 10 s
    await ledger.start()
    for i in range(1234):
        ledger.record(make_record(i))
    await ledger.aclose()
    assert rows(ledger.path) == [(1234,)]
    ledger.record(make_record(9999))  # after close: refused, counted, never raised
    assert ledger.stats["dropped"] == 1
    assert ledger.state() == "down"


async def test_records_taken_before_start_are_written_by_aclose(tmp_path):
    ledger = SqliteLedger(str(tmp_path / "sluice.db"))
    ledger.record(make_record(1))
    await ledger.aclose()
    assert rows(ledger.path) == [(1,)]


async def test_the_file_survives_a_restart(tmp_path):
    path = str(tmp_path / "sluice.db")
    first = SqliteLedger(path)
    await first.start()
    await record_all(first, [make_record(i) for i in range(10)])
    before = await first.calls(limit=50)
    await first.aclose()

    second = SqliteLedger(path)
    await second.start()
    try:
        assert await second.calls(limit=50) == before
        await record_all(second, [make_record(i) for i in range(10, 15)])
        calls, _ = await second.calls(limit=50)
        assert [c.request_id for c in calls] == [f"r{i}" for i in range(14, -1, -1)]
        (usage,) = await second.usage(since=0, by=[])
        assert usage.calls == 15
        assert usage.cost_usd == Decimal("0.0000120") * 15
        assert rows(path, "PRAGMA user_version") == [(2,)]
    finally:
        await second.aclose()


V1_SCHEMA = """
CREATE TABLE calls (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL, request_id TEXT NOT NULL, key_id TEXT, route TEXT, provider TEXT, model TEXT,
    status INTEGER NOT NULL, cache_status TEXT NOT NULL, attempts INTEGER NOT NULL,
    latency_ms REAL NOT NULL, ttft_ms REAL, stream INTEGER NOT NULL,
    input_tokens INTEGER, output_tokens INTEGER, cached_tokens INTEGER, reasoning_tokens INTEGER,
    cost_usd TEXT, saved_usd TEXT, variant TEXT, error TEXT,
    possibly_billed INTEGER NOT NULL, judge INTEGER NOT NULL, prompt_text TEXT, answer_text TEXT
);
CREATE TABLE attempts (
    call_id INTEGER NOT NULL, request_id TEXT NOT NULL, n INTEGER NOT NULL,
    provider TEXT NOT NULL, model TEXT NOT NULL, status INTEGER, outcome TEXT NOT NULL, error TEXT,
    first_byte_ms REAL, duration_ms REAL, possibly_billed INTEGER NOT NULL,
    PRIMARY KEY (call_id, n)
) WITHOUT ROWID;
INSERT INTO calls VALUES (1, 1767225600.0, 'old', 'team-a', 'trial', 'cerebras', 'llama3.1-8b', 200, 'MISS', 1,
    12.5, NULL, 0, 100, 20, NULL, NULL, '0.000012', NULL, 'a', NULL, 0, 0, NULL, NULL);
PRAGMA user_version = 1;
"""


async def test_a_ledger_file_of_the_previous_schema_is_migrated_in_place(tmp_path):
    path = str(tmp_path / "sluice.db")
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
    ledger = SqliteLedger(path)
    await ledger.start()
    try:
        [old], _ = await ledger.calls(limit=10)
        assert (old.request_id, old.variant, old.cost_usd, old.verdict, old.opponent) == (
            "old",
            "a",
            Decimal("0.000012"),
            None,
            None,
        )
        await record_all(ledger, [make_record(1, route="trial", judge=True, variant="a", opponent="b", verdict="win")])
        [trial] = [row.as_dict() for row in await ledger.experiments(since=0)]
        assert [(v["variant"], v["calls"], v["wins"], v["losses"]) for v in trial["variants"]] == [
            ("a", 1, 1, 0),
            ("b", 0, 0, 1),
        ]
    finally:
        await ledger.aclose()
    assert rows(path, "PRAGMA user_version") == [(2,)]


def experiment_records() -> list[CallRecord]:
    """A/B calls of route "trial" (variants a and b, one error, one unpriced, streams), judge calls, plain calls."""
    records = []
    for i in range(40):
        variant = "a" if i % 2 else "b"
        records.append(
            make_record(
                i,
                route="trial",
                variant=variant,
                status=503 if i == 7 else 200,
                latency_ms=10.0 + i,
                stream=i % 4 == 0,
                cost_usd=None if i == 9 else Decimal("0.0000010") * (i % 5 + 1),
            )
        )
    # Judge calls: the last of each judged pair carries the verdict (a beats b twice, one tie).
    judge = {"route": "trial", "judge": True}
    records.append(make_record(40, **judge, variant="a", opponent="b", verdict="win", cost_usd=Decimal("0.002")))
    records.append(make_record(41, **judge, cost_usd=Decimal("0.0005")))
    records.append(make_record(50, **judge, variant="b", opponent="a", verdict="loss", cost_usd=None))
    records.append(make_record(51, **judge, variant="a", opponent="b", verdict="tie", cost_usd=None))
    records += [make_record(i) for i in range(42, 50)]  # not A/B: no variant
    return records


def expected_experiments(records: list[CallRecord], since: float) -> list[dict[str, Any]]:
    """What `experiments(since=since)` should report for `records`, counted by the shared report code."""
    samples = [
        Sample(
            r.route, r.variant, r.status, r.latency_ms, r.ttft_ms, r.stream, r.cost_usd, r.judge, r.verdict, r.opponent
        )
        for r in records
        if r.ts >= since and (r.variant is not None or r.judge)
    ]
    return [row.as_dict() for row in experiment_rows(samples)]


async def test_experiments_report_ab_calls_and_judge_spend_and_survive_a_restart(tmp_path):
    path = str(tmp_path / "sluice.db")
    records = experiment_records()
    first = SqliteLedger(path)
    await first.start()
    await record_all(first, records)
    await first.aclose()

    second = SqliteLedger(path)
    await second.start()
    try:
        [trial] = [row.as_dict() for row in await second.experiments(since=0)]
        assert [trial] == expected_experiments(records, since=0)
        a, b = trial["variants"]
        assert (a["variant"], a["calls"], a["errors"], b["variant"], b["calls"]) == ("a", 20, 1, "b", 20)
        assert a["latency_ms"]["p50"] > 0
        assert b["ttft_ms"]["p50"] == 3.2  # 3.25 ms, to 0.1 ms (banker's rounding)
        assert (a["judged"], a["wins"], a["losses"], a["ties"]) == (3, 2, 0, 1)
        assert (b["judged"], b["wins"], b["losses"], b["ties"]) == (3, 0, 2, 1)
        assert a["win_rate"] == round(2.5 / 3, 4)
        assert b["win_rate_95"][0] < b["win_rate"] < a["win_rate"] < a["win_rate_95"][1]
        assert Decimal(trial["judge_usd"]) == Decimal("0.0025")
        later = [row.as_dict() for row in await second.experiments(since=T0 + 30)]
        assert later == expected_experiments(records, since=T0 + 30)
        assert await second.experiments(since=T0 + 1000) == []
    finally:
        await second.aclose()


async def test_calls_come_newest_first_with_their_tries_and_page_through_everything(ledger):
    # Calls end out of order, and several share a ts: the order is ts, then insertion.
    order = [3, 1, 2, 2, 5, 4, 4, 4, 0, 6]
    records = [make_record(i, ts=T0 + ts, request_id=f"c{i}") for i, ts in enumerate(order)]
    records[4].tries.append(AttemptRow(2, "groq", "llama", None, "cancelled", "race lost", None, 9.0, True))
    await record_all(ledger, records)
    expected = sorted(range(len(records)), key=lambda i: (order[i], i), reverse=True)

    seen, cursor = [], None
    while True:
        page, cursor = await ledger.calls(limit=3, before=cursor)
        seen += page
        if cursor is None:
            break
    assert [c.request_id for c in seen] == [f"c{i}" for i in expected]
    assert {c.request_id: c for c in seen}["c4"] == records[4]  # every field back, tries in order
    assert len(records[4].tries) == 2


async def test_calls_filter_by_request_id_key_provider_and_status(ledger):
    records = [
        make_record(0),
        make_record(1, key_id="team-b"),
        make_record(2, provider="groq", status=429, cost_usd=None),
        make_record(3, key_id="team-b", provider="groq"),
        make_record(4, request_id="r0"),  # a client may reuse its X-Request-Id
    ]
    await record_all(ledger, records)

    async def ids(**filters: Any) -> list[str]:
        calls, cursor = await ledger.calls(**filters)
        assert cursor is None
        return [f"{c.request_id}@{c.ts - T0:.0f}" for c in calls]

    assert await ids(request_id="r0") == ["r0@4", "r0@0"]
    assert await ids(key_id="team-b") == ["r3@3", "r1@1"]
    assert await ids(provider="groq") == ["r3@3", "r2@2"]
    assert await ids(status=429) == ["r2@2"]
    assert await ids(key_id="team-b", provider="groq") == ["r3@3"]
    assert await ids(provider="openai") == []


async def test_a_bad_cursor_or_limit_is_a_value_error(ledger):
    for before in ("nonsense", "1.5", "x:1"):
        with pytest.raises(ValueError, match="bad cursor"):
            await ledger.calls(before=before)
    for limit in (0, 1001):
        with pytest.raises(ValueError, match="limit"):
            await ledger.calls(limit=limit)
    with pytest.raises(ValueError, match="'tenant'"):
        await ledger.usage(since=0, by=["tenant"])


def mixed_records() -> list[CallRecord]:
    """Calls over two UTC days, two providers, three keys; priced, unpriced, cached, failed and judge calls."""
    day2 = 86_400
    return [
        make_record(0, cost_usd=Decimal("0.10"), cached_tokens=40, reasoning_tokens=5),
        make_record(1, cost_usd=Decimal("0.20"), key_id="team-b"),
        make_record(2, cost_usd=None),  # unpriced
        make_record(3, cost_usd=Decimal(0), saved_usd=Decimal("0.30"), cache_status="HIT"),
        make_record(4, cost_usd=None, cache_status="HIT"),  # a hit is never unpriced
        make_record(5, provider="groq", model="llama", status=502, cost_usd=None, error="upstream 502"),
        make_record(6, provider=None, model=None, status=400, cost_usd=None, input_tokens=None, output_tokens=None),
        make_record(day2 - 1, provider="groq", model="llama", cost_usd=Decimal("0.000000001")),
        make_record(day2, key_id=None, route=None, cost_usd=Decimal("1.000000001")),
        make_record(day2 + 1, cost_usd=Decimal("0.05"), judge=True, route="trial"),
        make_record(day2 + 2, provider="groq", model="llama", cost_usd=None, status=200),  # unpriced
    ]


async def test_usage_totals_are_exact_for_every_dimension_and_combination(ledger):
    records = mixed_records()
    await record_all(ledger, records)
    for n in range(len(DIMENSIONS) + 1):
        for by in itertools.combinations(DIMENSIONS, n):
            assert await ledger.usage(since=0, by=by) == aggregate(records, since=0, by=by), by

    by_provider = {row.group["provider"]: row for row in await ledger.usage(since=0, by=["provider"])}
    assert set(by_provider) == {None, "cerebras", "groq"}
    cerebras = by_provider["cerebras"]
    assert (cerebras.calls, cerebras.errors, cerebras.unpriced, cerebras.cache_hits) == (7, 0, 1, 2)
    assert cerebras.cost_usd == Decimal("1.350000001")
    assert cerebras.saved_usd == Decimal("0.30")
    assert cerebras.judge_usd == Decimal("0.05")
    assert (cerebras.input_tokens, cerebras.output_tokens, cerebras.cached_tokens) == (700, 140, 40)
    groq = by_provider["groq"]
    assert (groq.calls, groq.errors, groq.unpriced, groq.cost_usd) == (3, 1, 1, Decimal("0.000000001"))
    assert by_provider[None].errors == 1
    assert by_provider[None].unpriced == 0  # nobody served it: nothing was paid

    days = await ledger.usage(since=0, by=["day"])
    assert [(row.group["day"], row.calls) for row in days] == [("2026-01-01", 8), ("2026-01-02", 3)]
    keys = await ledger.usage(since=0, by=["key"])
    assert [row.group["key"] for row in keys] == [None, "team-a", "team-b"]  # sorted, a missing value first

    (recent,) = await ledger.usage(since=T0 + 86_400, by=[])
    assert (recent.calls, recent.cost_usd, recent.unpriced) == (3, Decimal("1.050000001"), 1)
    assert await ledger.usage(since=T0 + 10 * 86_400, by=["provider"]) == []


async def test_store_text_false_never_writes_the_prompt_or_the_answer(tmp_path):
    secret_prompt, secret_answer = "prompt-canary-5b1e9d", "answer-canary-77c2a0"
    texts = {"prompt_text": secret_prompt, "answer_text": secret_answer}
    for store_text in (False, True):
        path = tmp_path / f"text-{store_text}.db"
        ledger = SqliteLedger(str(path), store_text=store_text)
        await ledger.start()
        await record_all(ledger, [make_record(1, **texts)])
        (call,), _ = await ledger.calls()
        await ledger.aclose()
        on_disk = b"".join(p.read_bytes() for p in tmp_path.glob(f"text-{store_text}.db*"))
        if store_text:
            assert (call.prompt_text, call.answer_text) == (secret_prompt, secret_answer)
        else:
            assert (call.prompt_text, call.answer_text) == (None, None)
            assert secret_prompt.encode() not in on_disk
            assert secret_answer.encode() not in on_disk


async def test_an_unwritable_ledger_holds_records_bounded_then_writes_them_when_it_can(tmp_path):
    missing_dir = tmp_path / "not-yet"
    ledger = SqliteLedger(str(missing_dir / "sluice.db"), max_pending=50, retry_s=0.05)
    await ledger.start()  # does not raise: the calls must go on
    try:
        assert ledger.state() == "down"
        for i in range(60):
            ledger.record(make_record(i))
        await ledger.flush()  # returns although nothing could be written
        assert ledger.stats == {
            "recorded": 50,
            "written": 0,
            "dropped": 10,
            "errors": ledger.stats["errors"],
            "pending": 50,
        }
        with pytest.raises(LedgerUnavailable):
            await ledger.calls()
        missing_dir.mkdir()
        for _ in range(250):
            if ledger.stats["written"] == 50:
                break
            await asyncio.sleep(0.02)
        assert ledger.state() == "up"
        assert rows(ledger.path) == [(50,)]
    finally:
        await ledger.aclose()


async def test_a_file_locked_mid_run_holds_records_then_writes_them_all(tmp_path, monkeypatch):
    monkeypatch.setattr("proxy.ledger.sqlite_store.BUSY_TIMEOUT_S", 0.05)
    ledger = SqliteLedger(str(tmp_path / "sluice.db"), retry_s=0.05)
    await ledger.start()
    blocker = sqlite3.connect(ledger.path, isolation_level=None)
    try:
        await record_all(ledger, [make_record(i) for i in range(10)])
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the file longer than the busy timeout
        await record_all(ledger, [make_record(i) for i in range(10, 30)])
        assert ledger.state() == "down"
        assert ledger.stats["pending"] == 20
        assert ledger.stats["errors"] >= 1
        blocker.execute("COMMIT")
        for _ in range(250):
            if ledger.stats["written"] == 30:
                break
            await asyncio.sleep(0.02)
        assert ledger.state() == "up"
        calls, _ = await ledger.calls(limit=100)
        assert sorted(c.request_id for c in calls) == sorted(f"r{i}" for i in range(30))
    finally:
        blocker.close()
        await ledger.aclose()


async def test_a_record_sqlite_cannot_store_is_dropped_alone(ledger):
    records = [make_record(0), make_record(1, input_tokens=2**70), make_record(2)]
    await record_all(ledger, records)
    calls, _ = await ledger.calls()
    assert [c.request_id for c in calls] == ["r2", "r0"]
    assert ledger.stats["dropped"] == 1


async def test_two_ledgers_on_one_file_never_collide(tmp_path):
    # `serve --workers N`: every worker writes the same file.
    path = str(tmp_path / "sluice.db")
    a, b = SqliteLedger(path, linger_s=0.001), SqliteLedger(path, linger_s=0.001)
    await a.start()
    await b.start()
    for i in range(2000):
        (a if i % 2 else b).record(make_record(i))
        if i % 50 == 0:
            await asyncio.sleep(0)
    await asyncio.gather(a.flush(), b.flush())
    await a.aclose()
    await b.aclose()
    assert rows(path, "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM calls") == [(2000, 2000)]
    assert rows(
        path, "SELECT COUNT(*) FROM attempts a JOIN calls c ON c.id = a.call_id AND c.request_id = a.request_id"
    ) == [(2000,)]


async def test_open_ledger_without_redis_is_sqlite(tmp_path):
    ledger = open_ledger(str(tmp_path / "x.db"), None, op_timeout_s=0.05, store_text=True)
    assert isinstance(ledger, SqliteLedger)
    assert ledger.store_text is True


def test_the_sqlite_ledger_does_not_import_redis_py(tmp_path):
    code = (
        "import sys, asyncio\n"
        "from proxy.ledger import open_ledger\n"
        "async def main():\n"
        "    ledger = open_ledger(sys.argv[1], None, 0.05, False)\n"
        "    await ledger.start(); await ledger.usage(since=0, by=['day']); await ledger.aclose()\n"
        "asyncio.run(main())\n"
        "assert 'redis' not in sys.modules, 'redis-py imported'\n"
        "import proxy.ledger; proxy.ledger.RedisLedger\n"
        "assert 'redis' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.db")], check=True, timeout=60)
