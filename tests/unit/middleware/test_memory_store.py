"""MemoryCacheStore beyond the contract: the byte budget and LRU eviction (RELIABILITY scenario 7)."""

from __future__ import annotations

import pytest

from middleware.stores import MemoryCacheStore


def key(i: int) -> bytes:
    return b"k%03d" % i  # 4 bytes


@pytest.mark.anyio
async def test_filling_past_the_budget_evicts_and_stays_within_it():
    store = MemoryCacheStore(max_bytes=1000, max_entry_bytes=1000)
    for i in range(50):
        assert await store.set(key(i), b"v" * 96, 60)  # 100 bytes each with the key
        assert store.bytes_used <= 1000
    assert len(store) == 10
    assert store.stats["evictions"] == 40
    assert await store.get(key(0)) is None
    assert await store.get(key(49)) == b"v" * 96


@pytest.mark.anyio
async def test_recently_read_entries_survive_eviction():
    store = MemoryCacheStore(max_bytes=1000, max_entry_bytes=1000)
    for i in range(10):
        await store.set(key(i), b"v" * 96, 60)
    assert await store.get(key(0)) is not None  # now the most recently used
    await store.set(key(10), b"v" * 96, 60)
    assert await store.get(key(0)) is not None
    assert await store.get(key(1)) is None  # the least recently used went instead
    assert store.stats["evictions"] == 1


@pytest.mark.anyio
async def test_a_big_entry_evicts_as_many_as_it_needs():
    store = MemoryCacheStore(max_bytes=1000, max_entry_bytes=1000)
    for i in range(10):
        await store.set(key(i), b"v" * 96, 60)
    assert await store.set(b"big", b"x" * 497, 60)  # 500 bytes: five entries must go
    assert store.bytes_used <= 1000
    assert store.stats["evictions"] == 5
    assert [await store.get(key(i)) is not None for i in range(10)] == [False] * 5 + [True] * 5


@pytest.mark.anyio
async def test_an_entry_larger_than_the_whole_budget_is_not_stored_and_evicts_nothing():
    store = MemoryCacheStore(max_bytes=1000, max_entry_bytes=10_000)
    await store.set(b"small", b"v", 60)
    assert await store.set(b"huge", b"x" * 2000, 60) is False
    assert store.stats["too_big"] == 1
    assert store.stats["evictions"] == 0
    assert await store.get(b"small") == b"v"


@pytest.mark.anyio
async def test_overwriting_counts_the_new_size_only():
    store = MemoryCacheStore(max_bytes=1000)
    await store.set(b"k", b"x" * 500, 60)
    await store.set(b"k", b"y" * 10, 60)
    assert store.bytes_used == 11
    assert len(store) == 1


@pytest.mark.anyio
async def test_an_expired_entry_is_dropped_on_read_and_frees_its_bytes():
    now = [0.0]
    store = MemoryCacheStore(clock=lambda: now[0])
    await store.set(b"k", b"v" * 10, 5)
    now[0] = 4.999
    assert await store.get(b"k") is not None
    now[0] = 5.0
    assert await store.get(b"k") is None
    assert store.bytes_used == 0
    assert store.stats == {"hits": 1, "misses": 1, "sets": 1, "evictions": 0, "too_big": 0}


@pytest.mark.anyio
async def test_aclose_empties_the_store():
    store = MemoryCacheStore()
    await store.set(b"k", b"v", 60)
    await store.aclose()
    assert store.bytes_used == 0
    assert await store.get(b"k") is None
