"""RedisCacheStore: the cache shared by replicas, failing open (SPEC §7, RELIABILITY scenarios 5, 8 to 10).

Every Redis call goes through `_call`, which bounds it by `op_timeout_s`,
turns any backend failure into a sentinel, and feeds the breaker; so a Redis
that is down, refusing or frozen costs each call at most one deadline, then
nothing while the breaker is open, and the store recovers by itself.

Keys: entries at `prefix + b"cache:" + key`, locks at `prefix + b"lock:" + key`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from middleware.stores.base import DEFAULT_MAX_ENTRY_BYTES
from middleware.stores.breaker import Breaker
from middleware.stores.memory import LocalFlights

T = TypeVar("T")

DEFAULT_PREFIX = "sluice:v1:"
POLL_S = 0.025  # how often a follower on another replica checks whether the leader is done


class _Failed(enum.Enum):
    FAILED = enum.auto()


_FAILED = _Failed.FAILED


class RedisCacheStore:
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
        self.client = client
        self.op_timeout_s = op_timeout_s
        self.breaker = breaker or Breaker()
        self.max_entry_bytes = max_entry_bytes
        self.stats: dict[str, int] = {"hits": 0, "misses": 0, "sets": 0, "too_big": 0, "errors": 0, "skipped": 0}
        raw = prefix.encode()
        self._entry_prefix = raw + b"cache:"
        self._lock_prefix = raw + b"lock:"
        self._failed_at: float | None = None  # when the last call failed; None after a success
        self._flights = LocalFlights()
        self._releasing: set[asyncio.Future[_Failed | None]] = set()  # lock releases still running

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
        """A store on a client built for failing fast; connects lazily, so Redis may be down now.

        The connect timeout is `op_timeout_s` and every call is bounded by it, with at most one
        immediate retry (redis-py 8's defaults cost 3.5 s per call on a closed
        port and ~58 s on a frozen server). The pool is bounded and waits at
        most `op_timeout_s` for a free connection. Idle connections are
        PINGed after `health_check_interval_s`, so ones left stale by a Redis
        restart are dropped rather than failing a call.
        """
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=op_timeout_s,
            # No per-read socket timeout: `_call` bounds every operation with
            # asyncio.timeout(op_timeout_s) already, and redis-py wraps each
            # send in wait_for when one is set (a Task per send on 3.11: -14%
            # CPU per Redis hit without it).
            socket_timeout=None,
            socket_connect_timeout=op_timeout_s,
            retry=Retry(NoBackoff(), 1, (RedisConnectionError, RedisTimeoutError)),
            health_check_interval=health_check_interval_s,
            # RESP2: with redis-py 8's default RESP3, maintenance notifications
            # are on ("auto") and the pool then skips its check that a pooled
            # connection holds no unread reply; that check is a second guard
            # against desync after a cancellation.
            protocol=2,
        )
        return cls(
            Redis.from_pool(pool),
            op_timeout_s=op_timeout_s,
            prefix=prefix,
            breaker=breaker,
            max_entry_bytes=max_entry_bytes,
        )

    async def get(self, key: bytes) -> bytes | None:
        """The stored value, or None on a miss or any failure."""
        entry_key = self._entry_prefix + key
        value = await self._call(lambda: self.client.get(entry_key))
        if value is _FAILED or value is None:
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
        stored = await self._call(lambda: self.client.set(entry_key, value, px=ttl_ms))
        if stored is _FAILED or not stored:
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
        """For /readyz: "down" while the breaker refuses calls or within `open_s` of a failed call, else "up".

        A failure only counts as "down" for one cool-down: a caller that skips
        the store while it is "down" must not keep it down for ever.
        """
        if self.breaker.state == "open":
            return "down"
        failed_at = self._failed_at
        if failed_at is not None and self.breaker.clock() - failed_at < self.breaker.open_s:
            return "down"
        return "up"

    async def aclose(self) -> None:
        """Finish pending lock releases, then close the client and its connection pool; never raises."""
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose(close_connection_pool=True)

    @contextlib.asynccontextmanager
    async def _shared_flight(self, key: bytes, wait_s: float) -> AsyncIterator[bool]:
        lock_key = self._lock_prefix + key
        token = secrets.token_bytes(16)
        # The lock expires after `wait_s`, when followers stop waiting anyway,
        # so a crashed replica cannot hold it.
        lock_ms = max(1, math.ceil(wait_s * 1000))
        acquired = await self._call(lambda: self.client.set(lock_key, token, nx=True, px=lock_ms))
        if acquired is _FAILED:
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
            done = await self._call(lambda: self._leader_done(lock_key, entry_key))
            if done is _FAILED:
                return True
            if done:
                return False
        return False

    async def _leader_done(self, lock_key: bytes, entry_key: bytes) -> bool:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.exists(lock_key)
            pipe.exists(entry_key)
            lock_count, entry_count = await pipe.execute()
        return bool(lock_count == 0 or entry_count > 0)

    async def _release_soon(self, lock_key: bytes, token: bytes) -> None:
        # In a task of its own, shielded: a leader leaving by cancellation
        # (under anyio, every await in a cancelled scope is cancelled again)
        # still releases promptly instead of leaving followers to wait out
        # the lock's TTL. The task is bounded by `op_timeout_s`.
        release = asyncio.ensure_future(self._call(lambda: self._release(lock_key, token)))
        self._releasing.add(release)
        release.add_done_callback(self._releasing.discard)
        await asyncio.shield(release)

    async def _release(self, lock_key: bytes, token: bytes) -> None:
        # Delete the lock only while it still holds our token: if it expired,
        # another leader may own it now. WATCH rather than a Lua script,
        # because fakeredis without `lupa` has no EVAL.
        async with self.client.pipeline(transaction=True) as pipe:
            await pipe.watch(lock_key)
            if await pipe.get(lock_key) != token:
                return
            pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1
            pipe.delete(lock_key)
            with contextlib.suppress(WatchError):  # changed under us: not ours any more
                await pipe.execute()

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T | _Failed:
        """Run one Redis operation within `op_timeout_s`; `_FAILED` on any failure, never raising.

        `op` is a factory, so no coroutine is even created while the breaker
        is open. Cancellation propagates: redis-py (>= 5) disconnects a
        connection whose command was interrupted, so it cannot be reused
        with an unread reply in it.
        """
        if not self.breaker.allow():
            self.stats["skipped"] += 1
            return _FAILED
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        result: T | _Failed
        try:
            async with asyncio.timeout(self.op_timeout_s):
                result = await op()
        except (RedisError, OSError, TimeoutError):
            # RedisError covers redis-py's ConnectionError/TimeoutError;
            # TimeoutError is our own deadline; OSError a socket failure that
            # redis-py did not wrap.
            result = _FAILED
            self.stats["errors"] += 1
            self._failed_at = self.breaker.clock()
            self.breaker.failure()
        else:
            self._failed_at = None
            self.breaker.success()
        if task is not None and task.cancelling() > cancels:
            # A cancel was requested but never delivered: redis-py sends under
            # `asyncio.wait_for`, which on Python 3.11 swallows a cancel that
            # lands as the send completes (CPython gh-86296, fixed in 3.12).
            # The operation did finish cleanly; deliver the cancel now.
            raise asyncio.CancelledError
        return result
