"""RedisStateStore on fakeredis: shared by replicas, atomic counting, its key layout, and falling back to memory.

The rules it shares with MemoryStateStore are in test_state_memory.py; a real,
killed and frozen redis-server is in tests/integration/test_state_redis.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import anyio
import fakeredis
import pytest
import redis.asyncio.connection
from redis.asyncio import BlockingConnectionPool

from middleware.stores import HEALTHY, Breaker, CircuitPolicy, RedisStateStore, TargetState

pytestmark = pytest.mark.anyio

POLICY = CircuitPolicy(threshold=3, base_s=1.0, max_s=4.0)
T0 = 1_000_000.0
TWO_HOURS_MS = 2 * 3600 * 1000


@pytest.fixture
async def replicas() -> AsyncIterator[Callable[..., RedisStateStore]]:
    """`make(**kwargs)` is another replica on the same fake Redis server."""
    server = fakeredis.FakeServer()
    made: list[RedisStateStore] = []

    def make(**kwargs: object) -> RedisStateStore:
        kwargs.setdefault("op_timeout_s", 1.0)
        kwargs.setdefault("clock", lambda: T0)  # for the memory copy: T0's cooldowns are not over
        store = RedisStateStore(fakeredis.FakeAsyncRedis(server=server), **kwargs)  # type: ignore[arg-type]
        made.append(store)
        return store

    make.server = server  # type: ignore[attr-defined]
    yield make
    for store in made:
        await store.aclose()


async def test_replicas_share_cooldowns_failure_counts_ejections_and_successes(replicas):
    a, b = replicas(), replicas()
    await a.cool_down("t", T0 + 30)
    assert (await b.read(["t"]))[0].cool_until == T0 + 30

    await a.failed("t", T0, POLICY)
    await a.failed("t", T0, POLICY)
    opened = await b.failed("t", T0, POLICY)  # the third failure, counted across both
    assert opened.ejections == 1
    assert opened.open_until == T0 + POLICY.base_s
    assert await a.read(["t"]) == [opened]

    await a.succeeded("t")
    (state,) = await b.read(["t"])
    assert (state.failures, state.ejections, state.open_until) == (0, 0, 0.0)
    assert state.cool_until == T0 + 30


async def test_one_probe_across_replicas(replicas):
    a, b = replicas(), replicas()
    assert await a.claim_probe("t", 60) is True
    assert await b.claim_probe("t", 60) is False
    assert await a.claim_probe("t", 60) is False


async def test_fifty_concurrent_failures_on_two_replicas_count_exactly_and_open_once(replicas):
    a, b = replicas(), replicas()
    policy = CircuitPolicy(threshold=5, base_s=10.0, max_s=60.0)
    openers: list[int] = []

    async def fail(i: int) -> None:
        now = T0 + i / 1000  # each caller's own clock: the circuit's end says who opened it
        state = await (a if i % 2 else b).failed("t", now, policy)
        if state.open_until == now + policy.base_s:
            openers.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(fail, i)
    (state,) = await a.read(["t"])
    assert state.failures == 50
    assert state.ejections == 1
    assert len(openers) == 1, openers
    assert a.stats["errors"] == b.stats["errors"] == 0


async def test_state_lives_in_one_expiring_hash_per_target_and_probes_in_keys_with_a_ttl(replicas):
    store = replicas(prefix="gw:")
    client = store.client
    key = b"gw:state:openai/gpt\x00k"
    await store.cool_down("openai/gpt\x00k", T0 + 30)
    assert await client.hgetall(key) == {b"cool_until": b"1000030.0"}
    assert TWO_HOURS_MS - 5000 < await client.pttl(key) <= TWO_HOURS_MS

    await client.pexpire(key, 1000)  # every write refreshes the expiry
    for _ in range(POLICY.threshold):
        await store.failed("openai/gpt\x00k", T0, POLICY)
    fields = await client.hgetall(key)
    assert fields[b"failures"] == b"3"
    assert fields[b"ejections"] == b"1"
    assert float(fields[b"open_until"]) == T0 + POLICY.base_s
    assert await client.pttl(key) > TWO_HOURS_MS - 5000

    await store.succeeded("openai/gpt\x00k")
    assert await client.hgetall(key) == {b"cool_until": b"1000030.0"}
    await store.cool_down("openai/gpt\x00k", 0.0)
    await store.succeeded("openai/gpt\x00k")
    assert await client.hgetall(key) == {b"cool_until": b"0.0"}

    assert await store.claim_probe("x", 2.5)
    assert 2000 < await client.pttl(b"gw:probe:x") <= 2500
    assert await client.keys(b"sluice:*") == []  # nothing outside the prefix


async def test_a_success_of_a_target_without_cooldown_leaves_no_key(replicas):
    store = replicas()
    await store.failed("t", T0, POLICY)
    await store.succeeded("t")
    assert await store.client.keys(b"*") == []


async def test_reading_many_targets_is_one_round_trip(replicas, monkeypatch):
    store = replicas()
    await store.cool_down("b", T0 + 1)  # also opens the connection: its handshake is not counted
    sends = 0
    send = redis.asyncio.connection.AbstractConnection.send_packed_command

    async def counting_send(self, *args, **kwargs):
        nonlocal sends
        sends += 1
        return await send(self, *args, **kwargs)

    monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "send_packed_command", counting_send)
    states = await store.read(["a", "b", "c", "d", "e"])
    assert sends == 1
    assert [s.cool_until for s in states] == [0.0, T0 + 1, 0.0, 0.0, 0.0]


async def test_fields_not_written_by_sluice_read_as_healthy_rather_than_raise(replicas):
    store = replicas()
    await store.client.hset(b"sluice:v1:state:t", mapping={"failures": "many", "cool_until": "soon"})
    assert await store.read(["t"]) == [HEALTHY]


async def test_with_redis_down_every_method_answers_from_the_memory_copy(replicas):
    store = replicas(breaker=Breaker(failures=1000))
    await store.cool_down("before", T0 + 50)
    replicas.server.connected = False

    await store.cool_down("cooling", T0 + 60)
    for _ in range(POLICY.threshold):
        state = await store.failed("ejected", T0, POLICY)
    assert state.ejections == 1  # the circuit opens locally
    assert state.open_until == T0 + POLICY.base_s
    assert await store.claim_probe("p", 60) is True
    assert await store.claim_probe("p", 60) is False
    before, cooling, ejected = await store.read(["before", "cooling", "ejected"])
    assert before.cool_until == T0 + 50  # written before the outage: in the copy too
    assert cooling.cool_until == T0 + 60
    assert ejected.ejections == 1
    await store.succeeded("ejected")
    assert await store.read(["ejected"]) == [HEALTHY]

    assert store.state() == "down"
    assert store.stats["errors"] == 9
    assert store.stats["fallbacks"] == 7  # the answers that came from memory: not cool_down or succeeded


async def test_state_learned_from_redis_survives_an_outage(replicas):
    a, b = replicas(), replicas()
    for _ in range(POLICY.threshold):
        await b.failed("t", T0, POLICY)
    await b.cool_down("c", T0 + 60)
    await a.read(["t", "c"])  # replica a has only read them
    replicas.server.connected = False
    ejected, cooling = await a.read(["t", "c"])
    assert ejected.ejections == 1
    assert ejected.open_until == T0 + POLICY.base_s
    assert cooling.cool_until == T0 + 60
    half_open = await a.failed("t", T0 + 2, POLICY)  # counting goes on from the shared state
    assert half_open.ejections == 2


async def test_the_breaker_skips_redis_then_a_recovered_redis_is_used_again(replicas):
    a, b = replicas(breaker=Breaker(failures=2, open_s=0.05)), replicas()
    replicas.server.connected = False
    await a.read(["t"])
    await a.read(["t"])
    assert a.breaker.state == "open"
    errors = a.stats["errors"]
    await a.cool_down("t", T0 + 5)
    assert await a.read(["t"]) == [TargetState(cool_until=T0 + 5)]
    assert a.stats["errors"] == errors  # no call made while open
    assert a.stats["skipped"] == 2

    replicas.server.connected = True
    await b.cool_down("shared", T0 + 9)
    await anyio.sleep(0.06)
    assert (await a.read(["shared"]))[0].cool_until == T0 + 9
    assert a.state() == "up"


class FrozenClient:
    """Takes every command and never answers, like a SIGSTOPped redis-server."""

    def pipeline(self, transaction: bool = True) -> FrozenPipeline:
        return FrozenPipeline()

    async def set(self, *args: object, **kwargs: object) -> None:
        await anyio.sleep_forever()

    async def aclose(self, close_connection_pool: bool = False) -> None:
        pass


class FrozenPipeline:
    async def __aenter__(self) -> FrozenPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., FrozenPipeline]:
        return lambda *args, **kwargs: self  # queues hmget, hset, hincrby...

    async def execute(self) -> None:
        await anyio.sleep_forever()


async def test_a_frozen_redis_costs_each_call_one_deadline_and_answers_from_memory():
    store = RedisStateStore(
        FrozenClient(),  # type: ignore[arg-type]
        op_timeout_s=0.05,
        breaker=Breaker(failures=1000),
        clock=lambda: T0,
    )
    calls = [
        (store.cool_down("t", T0 + 60), None),
        (store.read(["t"]), [TargetState(cool_until=T0 + 60)]),
        (store.failed("t", T0, POLICY), TargetState(cool_until=T0 + 60, failures=1)),
        (store.claim_probe("t", 5), True),
        (store.succeeded("t"), None),
    ]
    for call, expected in calls:
        started = time.monotonic()
        assert await call == expected
        assert time.monotonic() - started < 0.2
    assert store.stats["errors"] == 5


async def test_from_url_builds_a_fail_fast_client_and_closing_never_raises():
    store = RedisStateStore.from_url("redis://127.0.0.1:1/0", 0.04, max_connections=7)
    pool = store.client.connection_pool
    assert isinstance(pool, BlockingConnectionPool)
    assert pool.max_connections == 7
    assert pool.timeout == 0.04
    assert pool.connection_kwargs["socket_timeout"] is None
    assert pool.connection_kwargs["socket_connect_timeout"] == 0.04
    assert pool.connection_kwargs["protocol"] == 2
    assert store.state() == "up"  # nothing has failed yet
    assert await store.read(["t"]) == [HEALTHY]  # port 1: refused, answered from memory
    assert store.state() == "down"
    await store.aclose()
    await store.aclose()
