"""RedisCacheStore against a private, abused redis-server (RELIABILITY scenarios 8, 9 and 10).

Each test starts its own `redis-server` on a free loopback port and kills,
freezes or restarts it. The store must answer every call within about one
operation deadline, never raise, skip Redis while its breaker is open, and
recover by itself on the same port.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Awaitable

import pytest

from middleware.stores import Breaker, RedisCacheStore
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration

OP_TIMEOUT_S = 0.05
BOUND_S = 0.2  # one deadline (plus at most one retry inside it) and a margin for a busy box
OPEN_S = 0.3


def fast_store(url: str) -> RedisCacheStore:
    return RedisCacheStore.from_url(url, OP_TIMEOUT_S, breaker=Breaker(failures=3, open_s=OPEN_S))


async def timed(op: Awaitable[object]) -> tuple[object, float]:
    started = time.monotonic()
    result = await op
    return result, time.monotonic() - started


async def assert_fails_fast(store: RedisCacheStore, rounds: int = 6) -> None:
    """Every get/set is a miss / not stored, each within BOUND_S; until the breaker opens, then at once."""
    for i in range(rounds):
        got, get_s = await timed(store.get(b"k"))
        stored, set_s = await timed(store.set(b"k%d" % i, b"v", 60))
        assert got is None
        assert stored is False
        assert get_s < BOUND_S
        assert set_s < BOUND_S
    assert store.breaker.opened >= 1
    assert store.state() == "down"
    skipped_before = store.stats["skipped"]
    _, skipped_s = await timed(store.get(b"k"))
    assert store.stats["skipped"] == skipped_before + 1
    assert skipped_s < 0.005


async def eventually_works(store: RedisCacheStore, within_s: float = 3.0) -> float:
    """Poll set/get until they work again, without recreating the store; how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if await store.set(b"back", b"again", 60) and await store.get(b"back") == b"again":
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    pytest.fail(f"the store did not recover within {within_s} s: {store.stats}")


@pytest.mark.anyio
async def test_killed_redis_fails_fast_opens_the_breaker_and_recovers_on_restart(redis_server):
    store = fast_store(redis_server.url)
    try:
        assert await store.set(b"k", b"v", 60)
        assert await store.get(b"k") == b"v"
        redis_server.kill()
        await assert_fails_fast(store)
        redis_server.start()  # the same port; the store's pooled connections are now stale
        await eventually_works(store)
        assert store.state() == "up"
        assert await store.get(b"k") is None  # a fresh server: the old entry went with the old process
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_when_the_breaker_opens_idle_sockets_to_the_dead_redis_are_closed(redis_server):
    # Left in the pool, a socket to a killed Redis sits in CLOSE_WAIT until it is handed out again.
    store = fast_store(redis_server.url)
    try:
        await asyncio.gather(*(store.set(b"k%d" % i, b"v", 60) for i in range(8)))  # several pooled sockets
        pool = store.client.connection_pool
        assert sum(c.is_connected for c in pool._available_connections) >= 2
        redis_server.kill()
        await assert_fails_fast(store)
        assert not any(c.is_connected for c in pool._available_connections)
        redis_server.start()
        await eventually_works(store)  # they reconnect on their next use
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_frozen_redis_is_bounded_by_the_deadline_and_recovers_on_sigcont(redis_server):
    store = fast_store(redis_server.url)
    try:
        assert await store.set(b"k", b"v", 60)
        redis_server.signal(signal.SIGSTOP)  # accepts connections, never answers
        await assert_fails_fast(store)
        async with asyncio.timeout(1.0):  # single-flight too: no lock, but no hang either
            async with store.single_flight(b"k", 5.0) as leader:
                assert leader
        redis_server.signal(signal.SIGCONT)
        await eventually_works(store)
        assert await store.get(b"k") == b"v"
        assert store.state() == "up"
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_a_store_created_while_redis_is_down_serves_misses_then_recovers():
    server = RedisServer(free_port())
    store = fast_store(server.url)
    try:
        await assert_fails_fast(store)
        server.start()
        await eventually_works(store)
    finally:
        await store.aclose()
        server.kill()


@pytest.mark.anyio
async def test_entries_and_locks_are_namespaced_and_the_ttl_is_set_with_the_value(redis_server):
    store = RedisCacheStore.from_url(redis_server.url, 0.5, prefix="sluice:v1:")
    try:
        assert await store.set(b"\x00key", b"v", 2.0001)
        ttl_ms = await store.client.pttl(b"sluice:v1:cache:\x00key")
        assert 1900 < ttl_ms <= 2001
        async with store.single_flight(b"\x00key", 3.0) as leader:
            assert leader
            lock_ttl_ms = await store.client.pttl(b"sluice:v1:lock:\x00key")
            assert 2900 < lock_ttl_ms <= 3000
        assert await store.client.exists(b"sluice:v1:lock:\x00key") == 0
        assert await store.set(b"tiny", b"v", 0.0001)  # rounded up to 1 ms, not 0 (an error in Redis)
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_a_follower_on_another_replica_is_freed_by_the_lock_expiring_when_the_leader_crashed(redis_server):
    crashed = RedisCacheStore.from_url(redis_server.url, 0.5)
    survivor = RedisCacheStore.from_url(redis_server.url, 0.5)
    try:
        flight = crashed.single_flight(b"k", 0.3)
        assert await flight.__aenter__()  # and never leaves: the replica died holding the lock
        started = time.monotonic()
        async with survivor.single_flight(b"k", 5.0) as leader:
            assert not leader
        assert 0.2 < time.monotonic() - started < 0.8  # the lock's TTL, not the follower's 5 s
        await flight.__aexit__(None, None, None)  # too late: the lock is not its own any more
        assert await survivor.set(b"k", b"v", 60)
    finally:
        await crashed.aclose()
        await survivor.aclose()


@pytest.mark.anyio
async def test_a_cancellation_storm_leaves_no_desynced_or_leaked_connection(redis_server):
    # Deadline and breaker generous: this is about replies reaching the right
    # caller, not latency. Values up to 32 KB so that cancels land mid-read.
    store = RedisCacheStore.from_url(redis_server.url, 2.0, breaker=Breaker(failures=10_000))
    rng = random.Random(1234)
    values = {b"k%d" % i: (b"%d:" % i) * rng.randint(1, 8_000) for i in range(200)}
    try:
        for k, v in values.items():
            assert await store.set(k, v, 60)

        loop = asyncio.get_running_loop()

        async def churn(k: bytes, v: bytes) -> None:
            task = asyncio.current_task()
            assert task is not None
            while not stopped:
                got = await store.get(k)
                assert got in (v, None), f"{k!r} answered with another key's reply"
                await store.set(k, v, 60)
                if k not in cancel_at:
                    # After one full round trip, so that every task is cut in
                    # the middle of real traffic however slow the box is.
                    cancel_at[k] = loop.call_later(rng.uniform(0.0, 0.02), task.cancel)

        cancel_at: dict[bytes, asyncio.TimerHandle] = {}
        stopped = False
        tasks = [asyncio.create_task(churn(k, v)) for k, v in values.items()]
        _, looping = await asyncio.wait(tasks, timeout=5)
        stopped = True  # the tasks that lost their cancel stop by themselves
        await asyncio.wait(tasks)
        assert not looping, f"{len(looping)} tasks ignored their cancel"
        # Every task was cancelled; none failed an assertion.
        assert all(task.cancelled() for task in tasks), [task.exception() for task in tasks if not task.cancelled()][:3]
        assert store.stats["hits"] >= len(values)

        answers = await asyncio.gather(*(store.get(k) for k in values))
        assert answers == list(values.values())
        # redis-py keeps no public gauge of connections in use.
        assert len(store.client.connection_pool._in_use_connections) == 0
        assert store.stats["errors"] == 0
    finally:
        await store.aclose()
