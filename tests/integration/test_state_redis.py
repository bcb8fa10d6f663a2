"""RedisStateStore against a private redis-server: shared by replicas, atomic, and failing open to memory.

Each test starts its own `redis-server` on a free loopback port (the
`redis_server` fixture) and may kill, freeze or restart it. The store must
answer every call within about one operation deadline, never raise, keep
honouring what this process wrote meanwhile, and recover on the same port.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable

import pytest

from middleware.stores import Breaker, CircuitPolicy, RedisStateStore, TargetState
from tests.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

OP_TIMEOUT_S = 0.05
# One deadline (plus at most one retry inside it) and a margin for a busy box: CI shares two cores
# with everything else, and 0.2 s was once missed by 40 ms under load. A hung call takes seconds.
BOUND_S = 0.5
OPEN_S = 0.3
POLICY = CircuitPolicy(threshold=3, base_s=30.0, max_s=120.0)


def fast_store(url: str) -> RedisStateStore:
    return RedisStateStore.from_url(url, OP_TIMEOUT_S, breaker=Breaker(failures=3, open_s=OPEN_S))


async def timed(op: Awaitable[object]) -> tuple[object, float]:
    started = time.monotonic()
    result = await op
    return result, time.monotonic() - started


async def assert_answers_from_memory(store: RedisStateStore, now: float) -> None:
    """Every method answers within BOUND_S, from this process's memory, then at once while the breaker is open."""
    # Made one at a time, so a failed assertion leaves no coroutine un-awaited behind it.
    calls: list[tuple[Callable[[], Awaitable[object]], object]] = [
        (lambda: store.cool_down("cooled-in-outage", now + 60), None),
        (lambda: store.claim_probe("probe", 60), True),
        (lambda: store.claim_probe("probe", 60), False),
        (lambda: store.failed("failing", now, POLICY), TargetState(failures=1)),
        (lambda: store.succeeded("failing"), None),
    ]
    for make, expected in calls:
        got, took = await timed(make())
        assert got == expected
        assert took < BOUND_S
    cooled, took = await timed(store.read(["cooled-in-outage"]))
    assert cooled == [TargetState(cool_until=now + 60)]  # honoured by the store that set it
    assert took < BOUND_S
    for _ in range(POLICY.threshold):
        state, took = await timed(store.failed("ejected-in-outage", now, POLICY))
        assert took < BOUND_S
    assert state == TargetState(open_until=now + POLICY.base_s, failures=POLICY.threshold, ejections=1)
    assert store.breaker.opened >= 1
    assert store.state() == "down"
    skipped = store.stats["skipped"]
    _, took = await timed(store.read(["cooled-in-outage"]))
    assert store.stats["skipped"] == skipped + 1
    assert took < 0.05  # no Redis call at all (the counter above proves it); the bound only says "at once"


async def eventually_shared(store: RedisStateStore, other: RedisStateStore, within_s: float = 3.0) -> float:
    """Poll until a cooldown set on `store` reaches `other` through Redis again; how long that took."""
    started = time.monotonic()
    until = time.time() + 600
    while time.monotonic() - started < within_s:
        await store.cool_down("back", until)
        if (await other.read(["back"]))[0].cool_until == until and store.state() == "up":
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    pytest.fail(f"the store did not recover within {within_s} s: {store.stats}")


async def test_two_replicas_see_each_others_cooldowns_failures_and_probes(redis_server):
    a = RedisStateStore.from_url(redis_server.url, 0.5)
    b = RedisStateStore.from_url(redis_server.url, 0.5)
    now = time.time()
    try:
        await a.cool_down("openai/gpt-4o/k1", now + 42)
        assert (await b.read(["openai/gpt-4o/k1"]))[0].cool_until == now + 42
        await a.failed("t", now, POLICY)
        await b.failed("t", now, POLICY)
        (counted,) = await a.read(["t"])
        assert counted.failures == 2
        assert await b.claim_probe("t", 5) is True
        assert await a.claim_probe("t", 5) is False
        await b.succeeded("t")
        assert (await a.read(["t"]))[0].failures == 0
    finally:
        await a.aclose()
        await b.aclose()


async def test_fifty_concurrent_failures_from_two_replicas_open_the_circuit_exactly_once(redis_server):
    # A generous deadline: this is about atomicity, not latency.
    a = RedisStateStore.from_url(redis_server.url, 2.0)
    b = RedisStateStore.from_url(redis_server.url, 2.0)
    policy = CircuitPolicy(threshold=5, base_s=30.0, max_s=120.0)
    start = time.time()

    async def fail(i: int) -> bool:
        now = start + i / 1000  # distinct per caller: the circuit's end tells who opened it
        state = await (a if i % 2 else b).failed("t", now, policy)
        return state.open_until == now + policy.base_s

    try:
        opened = await asyncio.gather(*(fail(i) for i in range(50)))
        assert opened.count(True) == 1
        (state,) = await b.read(["t"])
        assert state.failures == 50
        assert state.ejections == 1
        assert a.stats["errors"] == b.stats["errors"] == 0
        ttl_ms = await a.client.pttl(b"sluice:v1:state:t")
        assert 2 * 3600 * 1000 - 10_000 < ttl_ms <= 2 * 3600 * 1000
    finally:
        await a.aclose()
        await b.aclose()


async def test_killed_redis_falls_back_to_memory_fast_and_recovers_on_restart(redis_server):
    store, other = fast_store(redis_server.url), fast_store(redis_server.url)
    now = time.time()
    try:
        await other.cool_down("before", now + 50)
        assert (await store.read(["before"]))[0].cool_until == now + 50
        redis_server.kill()
        await assert_answers_from_memory(store, now)
        assert (await store.read(["before"]))[0].cool_until == now + 50  # last seen in Redis, kept
        redis_server.start()  # the same port; pooled connections are now stale
        await eventually_shared(store, other)
        assert store.state() == "up"
        assert (await store.read(["before"]))[0].cool_until == 0.0  # a fresh server: Redis is the truth again
    finally:
        await store.aclose()
        await other.aclose()


async def test_frozen_redis_is_bounded_by_the_deadline_and_recovers_on_sigcont(redis_server):
    store, other = fast_store(redis_server.url), fast_store(redis_server.url)
    now = time.time()
    try:
        await other.cool_down("before", now + 50)
        redis_server.signal(signal.SIGSTOP)  # accepts connections, never answers
        await assert_answers_from_memory(store, now)
        redis_server.signal(signal.SIGCONT)
        await eventually_shared(store, other)
        assert (await store.read(["before"]))[0].cool_until == now + 50  # nothing was lost
    finally:
        await store.aclose()
        await other.aclose()


async def test_a_store_created_while_redis_is_down_answers_from_memory_then_recovers():
    server = RedisServer(free_port())
    store, other = fast_store(server.url), fast_store(server.url)
    try:
        await assert_answers_from_memory(store, time.time())
        server.start()
        await eventually_shared(store, other)
    finally:
        await store.aclose()
        await other.aclose()
        server.kill()
