"""RedisCacheStore: the cache shared by replicas, failing open (SPEC §7, RELIABILITY scenarios 5, 8 to 10).

Every Redis call goes through `RedisOps.call` (`middleware.stores.redis_client`),
which bounds it by `op_timeout_s`, turns any backend failure into a sentinel,
and feeds the breaker; so a Redis that is down, refusing or frozen costs each
call at most one deadline, then nothing while the breaker is open, and the
store recovers by itself.

Keys: entries at `prefix + b"cache:" + key`, locks at `prefix + b"lock:" + key`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import WatchError

from middleware.stores.base import DEFAULT_MAX_ENTRY_BYTES
from middleware.stores.breaker import Breaker
from middleware.stores.memory import LocalFlights
from middleware.stores.redis_client import DEFAULT_PREFIX as DEFAULT_PREFIX
from middleware.stores.redis_client import (  # public here since before redis_client
    FAILED,
    Failed,
    OnRedis,
    RedisOps,
    make_client,
)

POLL_S = 0.025  # how often a follower on another replica checks whether the leader is done


class RedisCacheStore(OnRedis):
    """A `CacheStore` on Redis: TTLs set atomically, single-flight across replicas, never raising.

    `stats` counts hits, misses, sets, too_big, errors (failed or timed-out
    calls) and skipped (calls not made because the breaker was open).
    """

    def __init__(
        self,
        client: Redis,
        *,
        op_timeout_s: float = 0.05,
        prefix: str = DEFAULT_PREFIX,
        breaker: Breaker | None = None,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    ) -> None:
        self.max_entry_bytes = max_entry_bytes
        self.stats: dict[str, int] = {"hits": 0, "misses": 0, "sets": 0, "too_big": 0, "errors": 0, "skipped": 0}
        self._ops = RedisOps(client, op_timeout_s=op_timeout_s, breaker=breaker or Breaker(), stats=self.stats)
        raw = prefix.encode()
        self._entry_prefix = raw + b"cache:"
        self._lock_prefix = raw + b"lock:"
        self._flights = LocalFlights()
        self._releasing: set[asyncio.Future[Failed | None]] = set()  # lock releases still running

    @classmethod
    def from_url(
        cls,
        url: str,
        op_timeout_s: float = 0.05,
        *,
        prefix: str = DEFAULT_PREFIX,
        breaker: Breaker | None = None,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        max_connections: int = 64,
        health_check_interval_s: int = 5,
    ) -> RedisCacheStore:
        """A store on a client built for failing fast (`redis_client.make_client`); Redis may be down now."""
        return cls(
            make_client(url, op_timeout_s, max_connections, health_check_interval_s),
            op_timeout_s=op_timeout_s,
            prefix=prefix,
            breaker=breaker,
            max_entry_bytes=max_entry_bytes,
        )

    async def get(self, key: bytes) -> bytes | None:
        """The stored value, or None on a miss or any failure."""
        entry_key = self._entry_prefix + key
        value = await self._ops.call(lambda: self._ops.client.get(entry_key))
        if value is FAILED or value is None:
            self.stats["misses"] += 1
            return None
        self.stats["hits"] += 1
        return value if isinstance(value, bytes) else value.encode()  # a client with decode_responses

    async def set(self, key: bytes, value: bytes, ttl_s: float) -> bool:
        """`SET key value PX ttl_ms`, so the entry and its TTL land together; False when not stored."""
        if len(key) + len(value) > self.max_entry_bytes:
            self.stats["too_big"] += 1
            return False
        if not (math.isfinite(ttl_s) and ttl_s > 0):
            return False  # already expired, or a TTL Redis cannot take
        entry_key = self._entry_prefix + key
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        stored = await self._ops.call(lambda: self._ops.client.set(entry_key, value, px=ttl_ms))
        if stored is FAILED or not stored:
            return False
        self.stats["sets"] += 1
        return True

    @contextlib.asynccontextmanager
    async def single_flight(self, key: bytes, wait_s: float) -> AsyncIterator[bool]:
        """One leader per key across every replica sharing this Redis; see `CacheStore.single_flight`.

        Callers in this process coalesce locally first, so a stampede costs one
        lock attempt (and one poller) per replica, not one per caller.
        """
        async with self._flights.hold(key, wait_s) as local_leader:
            if not local_leader:
                yield False
                return
            async with self._shared_flight(key, wait_s) as leader:
                yield leader

    def state(self) -> str:
        """For /readyz: "down" while the breaker refuses calls or just after a failed call, else "up"."""
        return self._ops.state()

    async def aclose(self) -> None:
        """Finish pending lock releases, then close the client and its connection pool; never raises."""
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        await self._ops.aclose()

    @contextlib.asynccontextmanager
    async def _shared_flight(self, key: bytes, wait_s: float) -> AsyncIterator[bool]:
        lock_key = self._lock_prefix + key
        token = secrets.token_bytes(16)
        # The lock expires after `wait_s`, when followers stop waiting anyway,
        # so a crashed replica cannot hold it.
        lock_ms = max(1, math.ceil(wait_s * 1000))
        acquired = await self._ops.call(lambda: self._ops.client.set(lock_key, token, nx=True, px=lock_ms))
        if acquired is FAILED:
            yield True  # no Redis, no lock: lead without one
            return
        if acquired:
            try:
                yield True
            finally:
                await self._release_soon(lock_key, token)
            return
        yield await self._wait_for_leader(lock_key, self._entry_prefix + key, wait_s)

    async def _wait_for_leader(self, lock_key: bytes, entry_key: bytes, wait_s: float) -> bool:
        """Poll until the leader's lock is gone or its entry exists, or `wait_s` passes.

        False (a follower) in those cases; True when Redis failed meanwhile, so
        this caller leads on its own.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while (remaining := deadline - loop.time()) > 0:
            await asyncio.sleep(min(POLL_S, remaining))
            done = await self._ops.call(lambda: self._leader_done(lock_key, entry_key))
            if done is FAILED:
                return True
            if done:
                return False
        return False

    async def _leader_done(self, lock_key: bytes, entry_key: bytes) -> bool:
        async with self._ops.client.pipeline(transaction=False) as pipe:
            pipe.exists(lock_key)
            pipe.exists(entry_key)
            lock_count, entry_count = await pipe.execute()
        return bool(lock_count == 0 or entry_count > 0)

    async def _release_soon(self, lock_key: bytes, token: bytes) -> None:
        # In a task of its own, shielded: a leader leaving by cancellation
        # (under anyio, every await in a cancelled scope is cancelled again)
        # still releases promptly instead of leaving followers to wait out
        # the lock's TTL. The task is bounded by `op_timeout_s`.
        release = asyncio.ensure_future(self._ops.call(lambda: self._release(lock_key, token)))
        self._releasing.add(release)
        release.add_done_callback(self._releasing.discard)
        await asyncio.shield(release)

    async def _release(self, lock_key: bytes, token: bytes) -> None:
        # Delete the lock only while it still holds our token: if it expired,
        # another leader may own it now. WATCH rather than a Lua script,
        # because fakeredis without `lupa` has no EVAL.
        async with self._ops.client.pipeline(transaction=True) as pipe:
            await pipe.watch(lock_key)
            if await pipe.get(lock_key) != token:
                return
            pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1
            pipe.delete(lock_key)
            with contextlib.suppress(WatchError):  # changed under us: not ours any more
                await pipe.execute()
