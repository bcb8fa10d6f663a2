"""Speed statistics in the state stores (`observe`, `stats(ids)`): memory, and Redis over fakeredis.

The rule itself is in test_latency.py; a real, killed redis-server is in
tests/integration/test_state_speed_redis.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import fakeredis
import pytest
import redis.asyncio.connection

from middleware.stores import Breaker, MemoryStateStore, RedisStateStore, StateStore, latency_redis
from middleware.stores.latency import SpeedPolicy

pytestmark = pytest.mark.anyio

T0 = 600.0 * 1700 + 10.0  # 10 s into an epoch
EPOCH = 1700


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "fakeredis"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[tuple[StateStore, FakeClock]]:
    clock = FakeClock()
    store: StateStore
    if request.param == "memory":
        store = MemoryStateStore(clock=clock)
    else:
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        store = RedisStateStore(client, op_timeout_s=1.0, clock=clock, stats_ttl_s=0.0)
    yield store, clock
    await store.aclose()


@pytest.fixture
async def replicas() -> AsyncIterator[Callable[..., RedisStateStore]]:
    """`make(**kwargs)` is another replica on the same fake Redis server, on a clock stopped at T0."""
    server = fakeredis.FakeServer()
    made: list[RedisStateStore] = []

    def make(**kwargs: object) -> RedisStateStore:
        kwargs.setdefault("op_timeout_s", 1.0)
        kwargs.setdefault("clock", lambda: T0)
        kwargs.setdefault("flush_interval_s", 3600.0)  # pushes only when a test says so
        store = RedisStateStore(fakeredis.FakeAsyncRedis(server=server), **kwargs)  # type: ignore[arg-type]
        made.append(store)
        return store

    make.server = server  # type: ignore[attr-defined]
    yield make
    for store in made:
        await store.aclose()


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """How many packets were sent to Redis so far (one per round trip)."""
    count = 0
    send = redis.asyncio.connection.AbstractConnection.send_packed_command

    async def counting_send(self, *args, **kwargs):
        nonlocal count
        count += 1
        return await send(self, *args, **kwargs)

    monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", counting_send)
    return lambda: count


def flushers() -> set[asyncio.Task[object]]:
    """The speed flushers still running (the test runner has tasks of its own)."""
    return {task for task in asyncio.all_tasks() if task.get_name() == "sluice-speed-flush"}


# Both stores.


async def test_unknown_targets_have_no_stats_in_the_order_asked(subject):
    store, _ = subject
    store.observe("b", ttft_s=0.2, latency_s=None, ok=True, now=T0)
    assert await store.speeds([]) == []
    a, b, c = await store.speeds(["a", "b", "c"])
    assert a is None
    assert c is None
    assert b is not None
    assert (b.ewma_ttft_s, b.ewma_latency_s, b.error_rate, b.samples, b.updated_at) == (0.2, None, 0.0, 1, T0)


async def test_streams_and_non_streams_and_failures(subject):
    store, _ = subject
    for i in range(4):
        store.observe("t", ttft_s=0.1 * (i + 1), latency_s=None, ok=True, now=T0)
        store.observe("t", ttft_s=None, latency_s=2.0, ok=True, now=T0)
    store.observe("t", ttft_s=None, latency_s=0.001, ok=False, now=T0)
    for _ in range(5):
        store.observe("broken", ttft_s=None, latency_s=0.01, ok=False, now=T0)
    t, broken = await store.speeds(["t", "broken"])
    assert t.ewma_ttft_s == pytest.approx(0.25)
    assert t.ewma_latency_s == pytest.approx(2.0)  # the failure's 1 ms is not a latency
    assert t.error_rate == pytest.approx(1 / 9)
    assert t.samples == 9
    assert broken.error_rate == pytest.approx(1.0)
    assert broken.ewma_latency_s is None


async def test_stats_are_forgotten_once_older_than_the_previous_epoch(subject):
    store, clock = subject
    store.observe("t", ttft_s=None, latency_s=1.0, ok=True, now=T0)
    clock.now = T0 + 600
    assert (await store.speeds(["t"]))[0] is not None
    clock.now = T0 + 1200
    assert await store.speeds(["t"]) == [None]


# MemoryStateStore only.


async def test_memory_keeps_at_most_max_entries_targets_most_recent_first():
    store = MemoryStateStore(clock=lambda: T0, max_entries=10)
    for i in range(25):
        store.observe(f"t{i}", ttft_s=None, latency_s=1.0, ok=True, now=T0)
    assert len(store._speeds) <= 10
    assert (await store.speeds(["t24"]))[0] is not None
    assert (await store.speeds(["t0"]))[0] is None


# RedisStateStore only.


async def test_two_replicas_share_one_estimate_after_a_push(replicas):
    a, b = replicas(stats_ttl_s=0.0), replicas(stats_ttl_s=0.0)
    for _ in range(10):
        a.observe("t", ttft_s=None, latency_s=1.0, ok=True, now=T0)
        b.observe("t", ttft_s=None, latency_s=3.0, ok=_ >= 2, now=T0)
    (only_a,) = await a.speeds(["t"])
    assert only_a.ewma_latency_s == pytest.approx(1.0)  # its own, not pushed yet
    await a.flush_speeds()
    await b.flush_speeds()
    (seen_by_a,) = await a.speeds(["t"])
    (seen_by_b,) = await b.speeds(["t"])
    assert seen_by_a == seen_by_b
    assert seen_by_a.samples == 20
    assert seen_by_a.ewma_latency_s == pytest.approx((10 * 1.0 + 8 * 3.0) / 18)
    assert seen_by_a.error_rate == pytest.approx(0.1)
    assert a.speed_pushes.pending == b.speed_pushes.pending == 0


async def test_speed_lives_in_one_expiring_hash_per_target_and_epoch(replicas):
    store = replicas(prefix="gw:")
    store.observe("openai/gpt\x00k", ttft_s=0.5, latency_s=None, ok=True, now=T0)
    store.observe("openai/gpt\x00k", ttft_s=None, latency_s=None, ok=False, now=T0)
    await store.flush_speeds()
    key = b"gw:speed:1700:openai/gpt\x00k"
    fields = await store.client.hgetall(key)
    assert set(fields) == {b"n", b"w", b"wf", b"wt", b"st", b"at"}  # no latency observed: no latency fields
    assert fields[b"n"] == b"2"
    assert float(fields[b"at"]) == T0
    assert 1800_000 - 5000 < await store.client.pttl(key) <= 1800_000  # three epochs
    assert await store.client.keys(b"sluice:*") == []


async def test_observe_never_touches_redis_and_stats_reads_once_per_ttl_in_one_round_trip(replicas, sends):
    store = replicas(stats_ttl_s=60.0)
    await store.read(["warm"])  # opens the connection: its handshake is not counted
    before = sends()
    for i in range(100):
        store.observe(f"t{i % 5}", ttft_s=None, latency_s=1.0, ok=True, now=T0)
    assert sends() == before
    for _ in range(20):
        stats = await store.speeds(["t0", "t1", "t2", "t3", "t4", "none"])
    assert sends() == before + 1
    assert [s is not None for s in stats] == [True] * 5 + [False]


async def test_a_target_first_asked_while_the_cache_is_fresh_is_answered_locally_then_refreshed(replicas):
    a, b = replicas(), replicas(stats_ttl_s=0.05)
    a.observe("late", ttft_s=None, latency_s=2.0, ok=True, now=T0)
    await a.flush_speeds()
    await b.speeds(["early"])
    assert await b.speeds(["late"]) == [None]  # nothing local, and the cache is fresh
    await asyncio.sleep(0.06)
    (late,) = await b.speeds(["late"])
    assert late.ewma_latency_s == pytest.approx(2.0)


async def test_the_flusher_starts_on_the_first_observe_pushes_in_the_background_and_stops_on_aclose(replicas):
    a, b = replicas(flush_interval_s=0.02), replicas(stats_ttl_s=0.0)
    assert a.speed_pushes.flusher is None
    assert flushers() == set()
    a.observe("t", ttft_s=0.3, latency_s=None, ok=True, now=T0)
    flusher = a.speed_pushes.flusher
    assert flusher is not None
    assert flushers() == {flusher}
    for _ in range(100):
        if (await b.speeds(["t"]))[0] is not None:
            break
        await asyncio.sleep(0.01)
    (t,) = await b.speeds(["t"])
    assert t.ewma_ttft_s == pytest.approx(0.3)
    await a.aclose()
    assert a.speed_pushes.flusher is None
    assert flusher.done()
    assert flushers() == set()
    a.observe("t", ttft_s=0.3, latency_s=None, ok=True, now=T0)  # after aclose: counted here, no new task
    assert flushers() == set()


async def test_aclose_pushes_what_is_pending(replicas):
    a, b = replicas(), replicas(stats_ttl_s=0.0)
    a.observe("t", ttft_s=None, latency_s=1.5, ok=True, now=T0)
    assert a.speed_pushes.flusher is not None
    await a.aclose()
    assert a.speed_pushes.pending == 0
    (t,) = await b.speeds(["t"])
    assert t.ewma_latency_s == pytest.approx(1.5)
    assert flushers() == set()


def test_observe_without_a_running_loop_starts_no_task_and_the_batch_waits():
    store = RedisStateStore(fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()), op_timeout_s=1.0)
    store.observe("t", ttft_s=None, latency_s=1.0, ok=True, now=T0)
    assert store.speed_pushes.flusher is None
    assert store.speed_pushes.pending == 1

    async def close() -> None:
        await store.aclose()

    asyncio.run(close())
    assert store.speed_pushes.pending == 0  # aclose pushed it


async def test_with_redis_down_observe_and_stats_answer_from_memory_and_the_batch_is_kept(replicas):
    a, b = replicas(breaker=Breaker(failures=1000), stats_ttl_s=0.0), replicas(stats_ttl_s=0.0)
    a.observe("before", ttft_s=None, latency_s=1.0, ok=True, now=T0)
    await a.flush_speeds()
    await a.speeds(["before"])
    replicas.server.connected = False

    a.observe("during", ttft_s=None, latency_s=2.0, ok=True, now=T0)
    before, during = await a.speeds(["before", "during"])
    assert before.ewma_latency_s == pytest.approx(1.0)  # last seen in Redis, kept
    assert during.ewma_latency_s == pytest.approx(2.0)
    assert a.stats["fallbacks"] == 1
    await a.flush_speeds()
    assert a.speed_pushes.pending == 1  # kept for the next push
    assert a.stats["errors"] == 2

    replicas.server.connected = True
    await a.flush_speeds()
    (during,) = await b.speeds(["during"])
    assert during.ewma_latency_s == pytest.approx(2.0)
    assert during.samples == 1


async def test_too_many_pending_targets_are_dropped_and_counted(replicas, monkeypatch):
    monkeypatch.setattr(latency_redis, "MAX_PENDING", 3)
    store = replicas()
    for i in range(5):
        store.observe(f"t{i}", ttft_s=None, latency_s=1.0, ok=True, now=T0)
    store.observe("t0", ttft_s=None, latency_s=1.0, ok=True, now=T0)  # an existing entry still grows
    assert store.speed_pushes.pending == 3
    assert store.stats["speed_dropped"] == 2
    assert (await store.memory.speeds(["t4"]))[0] is not None  # still counted locally


async def test_sums_not_written_by_sluice_neither_raise_nor_block_the_rest_of_a_push(replicas):
    store = replicas(stats_ttl_s=0.0)
    await store.client.hset(b"sluice:v1:speed:1700:bad", mapping={"n": "many", "w": "heavy"})
    store.observe("bad", ttft_s=None, latency_s=1.0, ok=True, now=T0)
    store.observe("good", ttft_s=None, latency_s=1.0, ok=True, now=T0)
    await store.flush_speeds()
    assert store.speed_pushes.pending == 0
    bad, good = await store.speeds(["bad", "good"])
    assert bad is None
    assert good.samples == 1
    assert store.stats["errors"] == 0


async def test_replicas_must_share_a_policy_and_it_is_used(replicas):
    policy = SpeedPolicy(half_life_s=10.0, epoch_s=60.0)
    store = replicas(speed_policy=policy)
    store.observe("t", ttft_s=None, latency_s=1.0, ok=True, now=T0)
    await store.flush_speeds()
    assert await store.client.keys(b"sluice:v1:speed:*") == [f"sluice:v1:speed:{int(T0 // 60)}:t".encode()]
    assert store.memory.speed_policy is policy
