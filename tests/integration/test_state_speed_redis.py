"""Speed statistics through a private redis-server: replicas share them, and a dead Redis costs nothing.

Each test starts its own `redis-server` on a free loopback port (the
`redis_server` fixture) and may kill or freeze it.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from middleware.stores import Breaker, RedisStateStore
from middleware.stores.state_base import TargetStats
from tests.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

OP_TIMEOUT_S = 0.05
BOUND_S = 0.2  # one deadline (plus at most one retry inside it) and a margin for a busy box


def store(url: str, **kwargs: object) -> RedisStateStore:
    kwargs.setdefault("breaker", Breaker(failures=3, open_s=0.3))
    return RedisStateStore.from_url(url, OP_TIMEOUT_S, **kwargs)  # type: ignore[arg-type]


async def known(store: RedisStateStore, *ids: str) -> list[TargetStats]:
    """`store.speeds(ids)`, each of which must have data."""
    found = await store.speeds(ids)
    assert None not in found, found
    return [stats for stats in found if stats is not None]


def flushers() -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if task.get_name() == "sluice-speed-flush"}


async def test_two_replicas_observing_different_latencies_converge_to_one_estimate(redis_server):
    # The default pacing: pushes every second, stats cached for a second.
    a, b = store(redis_server.url), store(redis_server.url)
    try:
        now = time.time()
        for _ in range(20):
            a.observe("openai/gpt-4o/k1", ttft_s=0.2, latency_s=None, ok=True, now=now)
            b.observe("openai/gpt-4o/k1", ttft_s=0.6, latency_s=None, ok=True, now=now)
        assert len(flushers()) == 2
        started = time.monotonic()
        while time.monotonic() - started < 5:
            (seen_by_a,), (seen_by_b,) = await known(a, "openai/gpt-4o/k1"), await known(b, "openai/gpt-4o/k1")
            if seen_by_a.samples == seen_by_b.samples == 40:
                break
            await asyncio.sleep(0.05)
        assert seen_by_a.samples == seen_by_b.samples == 40, (seen_by_a, seen_by_b)
        assert seen_by_a.ewma_ttft_s == pytest.approx(0.4)  # both replicas' observations count, equally
        assert seen_by_b.ewma_ttft_s == pytest.approx(0.4)
        assert time.monotonic() - started < 3  # a push (~1 s) then a refresh (~1 s)
        assert a.stats["errors"] == b.stats["errors"] == 0
    finally:
        await a.aclose()
        await b.aclose()
    assert flushers() == set()


async def test_concurrent_pushes_from_two_replicas_all_count(redis_server):
    a = store(redis_server.url, flush_interval_s=0.001, stats_ttl_s=0.0)
    b = store(redis_server.url, flush_interval_s=0.001, stats_ttl_s=0.0)
    try:
        now = time.time()
        for i in range(200):  # pushes interleave with observations on both
            (a if i % 2 else b).observe("t", ttft_s=None, latency_s=1.0 + i % 2, ok=i % 4 != 0, now=now)
            if i % 10 == 0:
                await asyncio.sleep(0.002)
        await a.flush_speeds()
        await b.flush_speeds()
        (t,) = await known(a, "t")
        assert t.samples == 200
        assert t.error_rate == pytest.approx(0.25)
        assert t.ewma_latency_s == pytest.approx((50 * 1.0 + 100 * 2.0) / 150)  # b's were 1 s, a's 2 s; 1/4 failed
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_target_that_only_fails_has_an_error_rate_near_one_for_every_replica(redis_server):
    a, b = store(redis_server.url), store(redis_server.url, stats_ttl_s=0.0)
    try:
        now = time.time()
        for i in range(10):
            a.observe("broken", ttft_s=None, latency_s=0.01, ok=False, now=now + i / 100)
        await a.flush_speeds()
        (broken,) = await known(b, "broken")
        assert broken.error_rate == pytest.approx(1.0)
        assert broken.ewma_latency_s is None
        assert broken.samples == 10
    finally:
        await a.aclose()
        await b.aclose()


async def test_killed_redis_observe_and_stats_answer_from_memory_at_once_and_the_batch_waits(redis_server):
    a, b = store(redis_server.url, stats_ttl_s=0.0), store(redis_server.url, stats_ttl_s=0.0)
    try:
        now = time.time()
        a.observe("before", ttft_s=None, latency_s=1.0, ok=True, now=now)
        await a.flush_speeds()
        assert (await known(a, "before"))[0].samples == 1
        redis_server.kill()

        started = time.monotonic()
        for i in range(1000):
            a.observe("during", ttft_s=0.5, latency_s=None, ok=i % 10 != 0, now=now)
        assert time.monotonic() - started < 0.3  # no I/O on the hot path: ~6 µs each when the box is quiet
        for _ in range(5):
            started = time.monotonic()
            before, during = await known(a, "before", "during")
            assert time.monotonic() - started < BOUND_S
        assert before.ewma_latency_s == pytest.approx(1.0)  # last seen in Redis
        assert during.samples == 1000
        assert during.error_rate == pytest.approx(0.1)
        started = time.monotonic()
        await a.flush_speeds()
        assert time.monotonic() - started < BOUND_S
        assert a.speed_pushes.pending == 1
        assert a.state() == "down"
        assert a.stats["fallbacks"] >= 5

        redis_server.start()  # the same port
        await asyncio.sleep(0.35)  # the breaker's open_s
        for _ in range(20):
            await a.flush_speeds()
            if a.speed_pushes.pending == 0:
                break
            await asyncio.sleep(0.05)
        (during,) = await known(b, "during")
        assert during.samples == 1000  # what was observed in the outage reached the other replica
    finally:
        await a.aclose()
        await b.aclose()
    assert flushers() == set()


async def test_aclose_with_redis_frozen_is_bounded_and_leaves_no_task(redis_server):
    a = store(redis_server.url, flush_interval_s=0.01)
    now = time.time()
    a.observe("t", ttft_s=None, latency_s=1.0, ok=True, now=now)
    await a.flush_speeds()
    redis_server.signal(signal.SIGSTOP)  # accepts connections, never answers
    try:
        a.observe("t", ttft_s=None, latency_s=1.0, ok=True, now=now)
        await asyncio.sleep(0.03)  # the flusher is now stuck in a push, until its deadline
        started = time.monotonic()
        await a.aclose()
        assert time.monotonic() - started < 2 * BOUND_S  # the push in progress, then the last one
        assert flushers() == set()
    finally:
        redis_server.signal(signal.SIGCONT)


async def test_aclose_pushes_pending_observations(redis_server):
    a, b = store(redis_server.url, flush_interval_s=60.0), store(redis_server.url, stats_ttl_s=0.0)
    try:
        now = time.time()
        a.observe("t", ttft_s=0.25, latency_s=None, ok=True, now=now)
        assert a.speed_pushes.flusher is not None
        await a.aclose()
        assert flushers() == {b.speed_pushes.flusher} - {None}
        (t,) = await known(b, "t")
        assert t.ewma_ttft_s == pytest.approx(0.25)
        assert t.updated_at == now
    finally:
        await a.aclose()  # twice is fine
        await b.aclose()
    assert flushers() == set()


async def test_a_store_created_while_redis_is_down_still_observes_and_reads():
    server = RedisServer(free_port())
    a = store(server.url)
    try:
        a.observe("t", ttft_s=None, latency_s=0.7, ok=True, now=time.time())
        started = time.monotonic()
        (t,) = await known(a, "t")
        assert time.monotonic() - started < BOUND_S
        assert t.ewma_latency_s == pytest.approx(0.7)  # a weighted mean: exact only up to rounding
    finally:
        started = time.monotonic()
        await a.aclose()
        assert time.monotonic() - started < BOUND_S
    assert flushers() == set()
