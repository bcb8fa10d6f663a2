"""RedisLedger against a private, abused redis-server: one shared ledger, nothing lost, nothing duplicated.

Redis runs with an append-only file (fsync always) so a SIGKILL keeps what it
acknowledged; then "every record ends up in Redis exactly once" is checkable
across a kill. Records that meet a dead or frozen Redis go to the spool and
are replayed when it answers again.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from middleware.stores import Breaker
from proxy.ledger import LedgerUnavailable, RedisLedger, UsageRow, aggregate, open_ledger
from proxy.ledger.codec import encode
from proxy.ledger.spool import Batch, Spool
from tests.redis_server import RedisServer, free_port
from tests.unit.proxy.ledger.test_sqlite_ledger import (
    MAX_STALL_S,
    expected_experiments,
    experiment_records,
    make_record,
)

pytestmark = pytest.mark.integration

OP_TIMEOUT_S = 0.2
STREAM = "sluice:v1:ledger"


class DurableRedisServer(RedisServer):
    """A `RedisServer` whose data survives SIGKILL: every write is in the append-only file before its reply."""

    def __init__(self, port: int, data_dir: Path) -> None:
        super().__init__(port)
        self.data_dir = data_dir

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while not self.answers_ping():
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[DurableRedisServer]:
    server = DurableRedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.kill()


def ledger_for(url: str, spool_path: Path, **options: Any) -> RedisLedger:
    options.setdefault("breaker", Breaker(failures=2, open_s=0.2))
    options.setdefault("retry_s", 0.1)
    return RedisLedger(url, OP_TIMEOUT_S, spool_path=str(spool_path), **options)


def stream_records(url: str) -> list[bytes]:
    """The JSON records in the ledger stream, oldest first."""
    client = redis.Redis.from_url(url)
    try:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(STREAM)  # type: ignore[assignment]
        return [fields[b"record"] for _, fields in entries]
    finally:
        client.close()


def stored_ids(url: str) -> list[str]:
    """The request ids in the ledger stream, oldest first (duplicates kept)."""
    return [json.loads(raw)["request_id"] for raw in stream_records(url)]


async def until_replayed(ledger: RedisLedger, within_s: float = 10.0) -> None:
    for _ in range(int(within_s / 0.05)):
        await ledger.flush()
        if ledger.stats["spool"] == 0 and ledger.stats["pending"] == 0:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"the spool was not replayed within {within_s} s: {ledger.stats}")


@pytest.mark.anyio
async def test_two_replicas_write_one_shared_ledger(redis_server, tmp_path):
    spool = tmp_path / "sluice.db.spool"
    a, b = ledger_for(redis_server.url, spool), ledger_for(redis_server.url, spool)  # one path: a lock decides
    await a.start()
    await b.start()
    try:
        assert a.spool.path != b.spool.path
        records = [make_record(i, cost_usd=Decimal("0.000001") * (i % 7)) for i in range(2000)]
        for i, rec in enumerate(records):
            (a if i % 2 else b).record(rec)
            if i % 100 == 99:
                await asyncio.sleep(0)
        await asyncio.gather(a.flush(), b.flush())
        assert sorted(stored_ids(redis_server.url)) == sorted(r.request_id for r in records)
        for ledger in (a, b):  # each replica reads what both wrote
            usage = await ledger.usage(since=0, by=["provider", "day"])
            assert usage == aggregate(records, since=0, by=["provider", "day"])
            assert UsageRow.total(usage).cost_usd == sum((r.cost_usd or 0 for r in records), Decimal(0))
            calls, cursor = await ledger.calls(limit=10)
            assert len(calls) == 10
            assert cursor is not None
    finally:
        await a.aclose()
        await b.aclose()
    assert list(tmp_path.iterdir()) == []  # empty spools are removed with their locks


@pytest.mark.anyio
async def test_experiments_count_the_stream_as_the_sqlite_ledger_counts_its_file(redis_server, tmp_path):
    records = experiment_records()
    writer = ledger_for(redis_server.url, tmp_path / "a.spool")
    await writer.start()
    for rec in records:
        writer.record(rec)
    await writer.aclose()
    reader = ledger_for(redis_server.url, tmp_path / "b.spool")  # another replica, or a restart
    await reader.start()
    try:
        for since in (0, make_record(30).ts):
            report = [row.as_dict() for row in await reader.experiments(since=since)]
            assert report == expected_experiments(records, since)
        assert [v["calls"] for v in report[0]["variants"]] == [5, 5]
    finally:
        await reader.aclose()


@pytest.mark.anyio
async def test_calls_pages_newest_first_filters_and_reads_tries(redis_server, tmp_path):
    ledger = ledger_for(redis_server.url, tmp_path / "spool")
    await ledger.start()
    try:
        records = [make_record(i, key_id="team-b" if i % 3 == 0 else "team-a") for i in range(25)]
        for rec in records:
            ledger.record(rec)
        await ledger.flush()
        seen, cursor = [], None
        while True:
            page, cursor = await ledger.calls(limit=10, before=cursor)
            seen += page
            if cursor is None:
                break
        assert seen == records[::-1]  # every field back, tries too, newest written first
        team_b, cursor = await ledger.calls(key_id="team-b", limit=3)
        assert [c.request_id for c in team_b] == ["r24", "r21", "r18"]
        rest, cursor = await ledger.calls(key_id="team-b", limit=50, before=cursor)
        assert [c.request_id for c in rest] == ["r15", "r12", "r9", "r6", "r3", "r0"]
        assert cursor is None
        assert (await ledger.calls(request_id="r7", status=200))[0] == [records[7]]
        with pytest.raises(ValueError, match="bad cursor"):
            await ledger.calls(before="12:34")
    finally:
        await ledger.aclose()


@pytest.mark.anyio
async def test_redis_killed_mid_burst_loses_nothing_and_duplicates_nothing(durable_redis, tmp_path):
    ledger = ledger_for(durable_redis.url, tmp_path / "spool", linger_s=0.005)
    await ledger.start()
    try:
        records = [make_record(i) for i in range(6000)]
        for i, rec in enumerate(records):
            ledger.record(rec)
            if i % 100 == 99:
                await asyncio.sleep(0.002)  # the burst spans the kill
            if i == 3000:
                durable_redis.kill()
        await ledger.flush()
        assert ledger.stats["written"] > 0
        assert ledger.stats["spool"] > 0
        durable_redis.start()  # the same port; the append-only file brings back what was acknowledged
        await until_replayed(ledger)
        ids = stored_ids(durable_redis.url)
        assert len(ids) == 6000
        assert sorted(ids) == sorted(r.request_id for r in records)
        assert ledger.stats["dropped"] == 0
    finally:
        await ledger.aclose()


@pytest.mark.anyio
async def test_frozen_redis_never_blocks_record_and_the_spool_is_replayed_after_sigcont(redis_server, tmp_path):
    ledger = ledger_for(redis_server.url, tmp_path / "spool", linger_s=0.005)
    await ledger.start()
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    records = [make_record(i) for i in range(3001)]
    try:
        ledger.record(records[0])
        await ledger.flush()
        redis_server.signal(signal.SIGSTOP)
        gc.collect()
        gc.freeze()  # as the gateway does at start-up: a full collection of the test's objects is not the ledger
        tick = asyncio.create_task(ticker())
        record_s = []
        for i in range(1, 3001):
            began = time.perf_counter()
            ledger.record(records[i])
            record_s.append(time.perf_counter() - began)
            if i % 100 == 0:
                await asyncio.sleep(0.005)
        await ledger.flush()  # returns: the batches went to the spool
        done.set()
        await tick
        gc.unfreeze()
        assert sum(record_s) < 0.03  # microseconds each: a deque append, never a wait for Redis
        assert max(record_s) < MAX_STALL_S
        assert max(gaps) < MAX_STALL_S, f"the event loop stalled {max(gaps) * 1000:.1f} ms"
        assert ledger.stats["spool"] > 0
        assert ledger.state() == "down"
        redis_server.signal(signal.SIGCONT)
        await until_replayed(ledger)
        ids = stored_ids(redis_server.url)
        # The batch sent as Redis froze ran when it woke (its reply long given up); the replay of
        # that batch found it applied (stats["duplicates"]) and did not add it twice.
        assert sorted(ids) == sorted(f"r{i}" for i in range(3001))
        assert ledger.state() == "up"
    finally:
        gc.unfreeze()
        redis_server.signal(signal.SIGCONT)
        await ledger.aclose()


@pytest.mark.anyio
async def test_the_spool_outlives_the_process_and_is_replayed_at_the_next_start(tmp_path):
    server = RedisServer(free_port())  # not started: Redis is down the whole first run
    spool = tmp_path / "sluice.db.spool"
    first = ledger_for(server.url, spool)
    await first.start()
    for i in range(500):
        first.record(make_record(i))
    await first.aclose()  # cannot reach Redis: what is queued goes to the spool, kept on disk
    assert first.stats["spooled"] == 500
    assert spool.exists()
    server.start()
    try:
        second = ledger_for(server.url, spool)
        await second.start()
        try:
            await until_replayed(second)
            assert sorted(stored_ids(server.url)) == sorted(f"r{i}" for i in range(500))
        finally:
            await second.aclose()
    finally:
        server.kill()


_DYING_WORKER = """
import os, sys
from proxy.ledger.codec import encode
from proxy.ledger.spool import Batch, Spool
from tests.unit.proxy.ledger.test_sqlite_ledger import (
    MAX_STALL_S,
    expected_experiments,
    experiment_records,
    make_record,
)
spool = Spool(sys.argv[1])
spool.open()
assert spool.path != sys.argv[1], "the base file is held by the test"
spool.append(Batch("dead-writer", 1, [encode(make_record(i), store_text=False) for i in range(3)]))
spool.append(Batch("dead-writer", 2, [encode(make_record(i), store_text=False) for i in range(3, 5)]))
print(spool.path)
os._exit(0)  # dies without closing anything
"""


def leave_orphan_spool(base: Path) -> str:
    """Run a worker that spools two batches beside `base` and dies; the path of the spool it left."""
    holder = Spool(str(base))  # a live worker holds the base file, so the dying one spools beside it
    holder.open()
    dying = subprocess.run(
        [sys.executable, "-c", _DYING_WORKER, str(base)],
        check=True,
        capture_output=True,
        cwd=Path(__file__).parents[2],
        timeout=60,
    )
    holder.close()
    orphan = dying.stdout.decode().strip()
    assert Path(orphan).exists()
    return orphan


@pytest.mark.anyio
async def test_a_dead_workers_spool_is_adopted_and_replayed_once(redis_server, tmp_path):
    base = tmp_path / "sluice.db.spool"
    orphan = leave_orphan_spool(base)
    ledger = ledger_for(redis_server.url, base)
    # Redis had applied batch 1 before the worker died; its reply was lost, so it stayed spooled.
    first = Batch("dead-writer", 1, [encode(make_record(i), store_text=False) for i in range(3)])
    assert await ledger._apply(first)
    await ledger.start()
    try:
        await until_replayed(ledger)
        assert sorted(stored_ids(redis_server.url)) == ["r0", "r1", "r2", "r3", "r4"]
        assert ledger.stats["replayed"] == 5  # batch 1 was skipped by Redis, not added again
        assert orphan not in {str(p) for p in tmp_path.iterdir()}
    finally:
        await ledger.aclose()


@pytest.mark.anyio
async def test_a_full_spool_drops_and_counts_what_does_not_fit(tmp_path):
    ledger = ledger_for(RedisServer(free_port()).url, tmp_path / "spool", spool_max_records=100, batch_size=50)
    await ledger.start()
    for i in range(300):
        ledger.record(make_record(i))
    await ledger.flush()
    await ledger.aclose()
    assert ledger.stats["spooled"] == 100
    assert ledger.stats["dropped"] == 200


@pytest.mark.anyio
async def test_queries_fail_fast_with_ledger_unavailable_while_redis_is_down(tmp_path):
    ledger = ledger_for(RedisServer(free_port()).url, tmp_path / "spool")
    await ledger.start()
    try:
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable):
            await ledger.calls()
        with pytest.raises(LedgerUnavailable):
            await ledger.usage(since=0, by=["provider"])
        assert time.monotonic() - started < 2 * OP_TIMEOUT_S + 0.3
    finally:
        await ledger.aclose()


@pytest.mark.anyio
async def test_the_stream_is_capped_and_text_is_kept_only_when_asked(redis_server, tmp_path):
    capped = ledger_for(redis_server.url, tmp_path / "spool", maxlen=100, batch_size=100)
    await capped.start()
    try:
        for i in range(1000):
            capped.record(make_record(i, prompt_text="prompt-canary", answer_text="answer-canary"))
        await capped.flush()
        stored = stream_records(redis_server.url)
        assert 100 <= len(stored) < 1000  # "MAXLEN ~": trimmed in whole nodes, never below 100
        assert b"canary" not in b"".join(stored)
    finally:
        await capped.aclose()


def test_open_ledger_with_a_redis_url_is_the_redis_ledger(tmp_path):
    ledger = open_ledger(str(tmp_path / "sluice.db"), "redis://127.0.0.1:1/0", op_timeout_s=0.05, store_text=False)
    assert isinstance(ledger, RedisLedger)
    assert ledger.spool.base_path == str(tmp_path / "sluice.db") + ".spool"
