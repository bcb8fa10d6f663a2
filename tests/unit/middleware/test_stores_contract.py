"""One contract for every CacheStore: memory, Redis on fakeredis, and Redis on the real server (db 15)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio
import fakeredis
import fakeredis.aioredis
import pytest
import redis.asyncio

from middleware.stores import Breaker, CacheStore, MemoryCacheStore, RedisCacheStore

REAL_REDIS_URL = "redis://127.0.0.1:6379/15"
MAX_ENTRY = 1024


@dataclass
class Backend:
    """Stores sharing one backend: `make(prefix)` is another replica's view of the same data."""

    name: str
    make: Callable[[str], CacheStore]
    advance: Callable[[float], Awaitable[None]]  # let `s` seconds pass for TTLs
    made: list[CacheStore] = field(default_factory=list)
    unavailable: str | None = None  # set when the backend does not answer: each test fails, none skips

    def store(self, prefix: str = "p1:") -> CacheStore:
        if self.unavailable is not None:
            pytest.fail(self.unavailable)
        store = self.make(prefix)
        self.made.append(store)
        return store


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        self.now += seconds


def memory_backend() -> Backend:
    clock = FakeClock()
    # One process has one memory store per prefix: "another replica" of
    # memory is the same instance.
    stores: dict[str, MemoryCacheStore] = {}

    def make(prefix: str) -> CacheStore:
        return stores.setdefault(prefix, MemoryCacheStore(max_entry_bytes=MAX_ENTRY, clock=clock))

    return Backend("memory", make, clock.advance)


def fakeredis_backend() -> Backend:
    server = fakeredis.FakeServer()

    def make(prefix: str) -> CacheStore:
        client = fakeredis.aioredis.FakeRedis(server=server)
        return RedisCacheStore(client, op_timeout_s=1.0, prefix=prefix, max_entry_bytes=MAX_ENTRY)

    return Backend("fakeredis", make, anyio.sleep)


async def real_redis_backend(run: str) -> Backend:
    probe = redis.asyncio.Redis.from_url(REAL_REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        await probe.ping()
        unavailable = None
    except (redis.RedisError, OSError):
        unavailable = "Redis is not running on 127.0.0.1:6379"
    finally:
        await probe.aclose()

    def make(prefix: str) -> CacheStore:
        # A generous deadline: these tests check semantics, not latency.
        return RedisCacheStore.from_url(
            REAL_REDIS_URL, 0.5, prefix=run + prefix, breaker=Breaker(failures=100), max_entry_bytes=MAX_ENTRY
        )

    return Backend("redis", make, anyio.sleep, unavailable=unavailable)


async def flush_run(run: str) -> None:
    client = redis.asyncio.Redis.from_url(REAL_REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=run + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "fakeredis", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    run = f"sluice-test:{uuid.uuid4().hex}:"
    if request.param == "memory":
        made = memory_backend()
    elif request.param == "fakeredis":
        made = fakeredis_backend()
    else:
        made = await real_redis_backend(run)
    yield made
    for store in made.made:
        await store.aclose()
    if request.param == "redis" and made.unavailable is None:
        await flush_run(run)


async def concurrently(*jobs: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(job)


@pytest.mark.anyio
async def test_get_of_an_unknown_key_is_a_miss(backend):
    assert await backend.store().get(b"nothing-here") is None


@pytest.mark.anyio
async def test_set_then_get_returns_the_same_bytes(backend):
    store = backend.store()
    value = bytes(range(256)) * 3
    assert await store.set(b"k", value, 60) is True
    assert await store.get(b"k") == value


@pytest.mark.anyio
async def test_entry_expires_after_its_ttl(backend):
    store = backend.store()
    assert await store.set(b"short", b"v", 0.05)
    assert await store.set(b"long", b"v", 60)
    await backend.advance(0.12)
    assert await store.get(b"short") is None
    assert await store.get(b"long") == b"v"


@pytest.mark.anyio
async def test_a_non_positive_ttl_stores_nothing(backend):
    store = backend.store()
    assert await store.set(b"k", b"v", 0) is False
    assert await store.set(b"k", b"v", -1) is False
    assert await store.get(b"k") is None


@pytest.mark.anyio
async def test_set_overwrites_value_and_ttl(backend):
    store = backend.store()
    assert await store.set(b"k", b"first", 0.05)
    assert await store.set(b"k", b"second", 60)
    await backend.advance(0.12)
    assert await store.get(b"k") == b"second"


@pytest.mark.anyio
async def test_an_entry_over_max_entry_bytes_is_not_stored(backend):
    store = backend.store()
    assert await store.set(b"big", b"x" * (MAX_ENTRY + 1), 60) is False
    assert await store.get(b"big") is None
    assert await store.set(b"fits", b"x" * (MAX_ENTRY // 2), 60) is True


@pytest.mark.anyio
async def test_keys_that_prefix_each_other_never_collide(backend):
    store = backend.store()
    keys = [b"a", b"ab", b"a\x00", b"a:b", b"lock:a", b"cache:a"]
    for key in keys:
        assert await store.set(key, b"value of " + key, 60)
    for key in keys:
        assert await store.get(key) == b"value of " + key


@pytest.mark.anyio
async def test_stores_with_different_prefixes_never_share_entries(backend):
    first, second = backend.store("tenant-a:"), backend.store("tenant-b:")
    assert await first.set(b"k", b"from a", 60)
    assert await second.get(b"k") is None
    assert await second.set(b"k", b"from b", 60)
    assert await first.get(b"k") == b"from a"


@pytest.mark.anyio
async def test_replicas_with_the_same_prefix_share_entries(backend):
    first, second = backend.store(), backend.store()
    assert await first.set(b"k", b"v", 60)
    assert await second.get(b"k") == b"v"


async def enter_all(
    stores: list[CacheStore], n: int, wait_s: float, hold_s: float
) -> tuple[list[bool], list[float], float]:
    """`n` concurrent entrants over `stores`; the leader holds for `hold_s`. Roles, exit times, leader's exit."""
    roles: list[bool] = []
    exits: list[float] = []
    leader_left = [0.0]

    def entrant(store: CacheStore) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            async with store.single_flight(b"same", wait_s) as leader:
                roles.append(leader)
                if leader:
                    await anyio.sleep(hold_s)
                    leader_left[0] = time.monotonic()
            exits.append(time.monotonic())

        return run

    await concurrently(*(entrant(stores[i % len(stores)]) for i in range(n)))
    return roles, exits, leader_left[0]


@pytest.mark.anyio
async def test_single_flight_elects_exactly_one_leader_and_frees_followers_when_it_leaves(backend):
    stores = [backend.store(), backend.store()]  # two replicas where the backend is shared
    started = time.monotonic()
    roles, exits, leader_left = await enter_all(stores, 20, wait_s=5.0, hold_s=0.2)
    assert roles.count(True) == 1
    assert roles.count(False) == 19
    # Promptly after the leader leaves, not after wait_s.
    assert max(exits) - leader_left < 0.5
    assert time.monotonic() - started < 1.5


@pytest.mark.anyio
async def test_a_leader_that_raises_still_releases(backend):
    store = backend.store()

    async def lead_and_fail() -> None:
        async with store.single_flight(b"k", 5.0) as leader:
            assert leader
            raise RuntimeError("upstream failed")

    with pytest.raises(RuntimeError):
        await lead_and_fail()
    started = time.monotonic()
    async with backend.store().single_flight(b"k", 5.0) as leader:
        assert leader  # the lock was released, not left to expire
    assert time.monotonic() - started < 0.5


@pytest.mark.anyio
async def test_a_cancelled_leader_still_releases(backend):
    store = backend.store()
    entered = anyio.Event()

    async def leader() -> None:
        async with store.single_flight(b"k", 5.0) as leads:
            assert leads
            entered.set()
            await anyio.sleep(10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await entered.wait()
        tg.cancel_scope.cancel()
    started = time.monotonic()
    # The release runs in a task of its own, shielded from the cancellation; aclose() waits
    # for it, so a busy box cannot make the next caller look at the lock first.
    await store.aclose()
    async with backend.store().single_flight(b"k", 5.0) as leads:
        assert leads
    assert time.monotonic() - started < 0.5  # released promptly, not left to the lock's 5 s TTL


@pytest.mark.anyio
async def test_followers_stop_waiting_after_wait_s_when_the_leader_holds_on(backend):
    stores = [backend.store(), backend.store()]
    started = time.monotonic()
    roles, exits, _ = await enter_all(stores, 6, wait_s=0.2, hold_s=1.0)
    assert roles.count(True) == 1
    follower_exits = sorted(exits)[:-1]  # the leader leaves last
    assert all(0.15 < t - started < 0.7 for t in follower_exits)


@pytest.mark.anyio
async def test_a_new_leader_is_elected_after_the_last_one_left(backend):
    store = backend.store()
    for _ in range(3):
        async with store.single_flight(b"k", 1.0) as leader:
            assert leader


@pytest.mark.anyio
async def test_different_keys_have_independent_leaders(backend):
    store = backend.store()
    async with store.single_flight(b"a", 1.0) as first, store.single_flight(b"b", 1.0) as second:
        assert first
        assert second


@pytest.mark.anyio
async def test_state_reports_the_backend(backend):
    state = backend.store().state()
    assert state == ("memory" if backend.name == "memory" else "up")
