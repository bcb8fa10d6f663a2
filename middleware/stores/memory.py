"""MemoryCacheStore: a per-process LRU bounded by bytes, and per-key single-flight (SPEC §7)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from middleware.stores.base import DEFAULT_MAX_ENTRY_BYTES, MIB

DEFAULT_MAX_BYTES = 256 * MIB


class LocalFlights:
    """Per-key leader election among the tasks of one event loop.

    The first task to enter a key leads; the others wait on the leader's
    Event, so they wake the moment it leaves, or after `wait_s`.
    """

    def __init__(self) -> None:
        self._leaders: dict[bytes, asyncio.Event] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: bytes, wait_s: float) -> AsyncIterator[bool]:
        """True for the leader, False for a follower once the leader left or `wait_s` passed."""
        done = self._leaders.get(key)
        if done is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait_s, 0.0)):
                    await done.wait()
            yield False
            return
        done = self._leaders[key] = asyncio.Event()
        try:
            yield True
        finally:
            # Released on any exit, cancellation included, or followers would
            # wait out `wait_s` for nothing.
            if self._leaders.get(key) is done:
                del self._leaders[key]
            done.set()


class MemoryCacheStore:
    """An LRU of bytes bounded by `max_bytes` (the sum of key and value lengths), with TTLs.

    An entry bigger than `max_entry_bytes` or than the whole budget is not
    stored. TTLs are checked on read with the injected `clock`, so tests
    never sleep. `stats` counts hits, misses, sets, evictions and too_big.
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.stats: dict[str, int] = {"hits": 0, "misses": 0, "sets": 0, "evictions": 0, "too_big": 0}
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()  # key -> (value, expires_at)
        self._bytes = 0
        self._flights = LocalFlights()

    @property
    def bytes_used(self) -> int:
        """The sum of the stored keys' and values' lengths; never above `max_bytes`."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: bytes) -> bytes | None:
        """The value, or None when absent or expired (an expired entry is dropped)."""
        found = self._entries.get(key)
        if found is None:
            self.stats["misses"] += 1
            return None
        value, expires_at = found
        if self._clock() >= expires_at:
            self._drop(key)
            self.stats["misses"] += 1
            return None
        self._entries.move_to_end(key)
        self.stats["hits"] += 1
        return value

    async def set(self, key: bytes, value: bytes, ttl_s: float) -> bool:
        """Store `value` for `ttl_s` seconds, evicting least-recently-used entries to fit."""
        size = len(key) + len(value)
        if size > self.max_entry_bytes or size > self.max_bytes:
            self.stats["too_big"] += 1
            return False
        if not (math.isfinite(ttl_s) and ttl_s > 0):
            return False  # already expired, or a TTL no backend can honour
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (value, self._clock() + ttl_s)
        self._bytes += size
        self.stats["sets"] += 1
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.stats["evictions"] += 1
        return True

    def single_flight(self, key: bytes, wait_s: float) -> contextlib.AbstractAsyncContextManager[bool]:
        """One leader per key in this process; see `CacheStore.single_flight`."""
        return self._flights.hold(key, wait_s)

    def state(self) -> str:
        """Always "memory": there is no backend to be down."""
        return "memory"

    async def aclose(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: bytes) -> None:
        value, _ = self._entries.pop(key)
        self._bytes -= len(key) + len(value)
