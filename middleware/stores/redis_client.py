"""What every Redis-backed store shares: a fail-fast client, and `RedisOps.call`, the one way to reach Redis.

`RedisOps.call` bounds each operation by `op_timeout_s`, turns any backend
failure into the `FAILED` sentinel and feeds the breaker; so a Redis that is
down, refusing or frozen costs each call at most one deadline, then nothing
while the breaker is open, and the store recovers by itself
(RELIABILITY scenarios 8 to 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from middleware.stores.breaker import Breaker

T = TypeVar("T")

DEFAULT_PREFIX = "sluice:v1:"


class Failed(enum.Enum):
    """The type of `FAILED`: what `RedisOps.call` returns instead of raising."""

    FAILED = enum.auto()


FAILED = Failed.FAILED


def make_client(
    url: str,
    op_timeout_s: float,
    max_connections: int = 64,
    health_check_interval_s: int = 5,
) -> Redis:
    """A client built for failing fast; it connects lazily, so Redis may be down now.

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
        # No per-read socket timeout: `RedisOps.call` bounds every operation
        # with asyncio.timeout(op_timeout_s) already, and redis-py wraps each
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
    return Redis.from_pool(pool)


class RedisOps:
    """One Redis client behind a deadline and a breaker; never raises because Redis failed.

    `stats` is the owning store's dict: `call` counts "errors" (failed or
    timed-out operations) and "skipped" (operations not made because the
    breaker was open) in it.
    """

    def __init__(self, client: Redis, *, op_timeout_s: float, breaker: Breaker, stats: dict[str, int]) -> None:
        self.client = client
        self.op_timeout_s = op_timeout_s
        self.breaker = breaker
        self.stats = stats
        stats.setdefault("errors", 0)
        stats.setdefault("skipped", 0)
        self.failed_at: float | None = None  # when the last operation failed; None after a success

    async def call(self, op: Callable[[], Awaitable[T]]) -> T | Failed:
        """Run one Redis operation within `op_timeout_s`; `FAILED` on any failure, never raising.

        `op` is a factory, so no coroutine is even created while the breaker
        is open. Cancellation propagates: redis-py (>= 5) disconnects a
        connection whose command was interrupted, so it cannot be reused
        with an unread reply in it.
        """
        if not self.breaker.allow():
            self.stats["skipped"] += 1
            return FAILED
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        result: T | Failed
        try:
            async with asyncio.timeout(self.op_timeout_s):
                result = await op()
        except (RedisError, OSError, TimeoutError):
            # RedisError covers redis-py's ConnectionError/TimeoutError;
            # TimeoutError is our own deadline; OSError a socket failure that
            # redis-py did not wrap.
            result = FAILED
            self.stats["errors"] += 1
            self.failed_at = self.breaker.clock()
            was_open = self.breaker.state == "open"
            self.breaker.failure()
            if not was_open and self.breaker.state == "open":
                await self._drop_idle_connections()
        else:
            self.failed_at = None
            self.breaker.success()
        if task is not None and task.cancelling() > cancels:
            # A cancel was requested but never delivered: redis-py sends under
            # `asyncio.wait_for`, which on Python 3.11 swallows a cancel that
            # lands as the send completes (CPython gh-86296, fixed in 3.12).
            # The operation did finish cleanly; deliver the cancel now.
            raise asyncio.CancelledError
        return result

    async def _drop_idle_connections(self) -> None:
        """Close the pool's idle sockets as the breaker opens: Redis failed, so they are likely dead too.

        Left alone, a socket to a Redis that was killed sits in CLOSE_WAIT
        until the pool happens to hand it out again, which at low traffic
        can be a long time (the soak, bench/soak.py, counted 19 of 59). They
        reconnect lazily on their next use.
        """
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.op_timeout_s):
                await self.client.connection_pool.disconnect(inuse_connections=False)

    def state(self) -> str:
        """For /readyz: "down" while the breaker refuses calls or within `open_s` of a failed call, else "up".

        A failure only counts as "down" for one cool-down: a caller that skips
        Redis while it is "down" must not keep it down for ever.
        """
        if self.breaker.state == "open":
            return "down"
        failed_at = self.failed_at
        if failed_at is not None and self.breaker.clock() - failed_at < self.breaker.open_s:
            return "down"
        return "up"

    async def aclose(self) -> None:
        """Close the client and its connection pool; never raises."""
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose(close_connection_pool=True)


class OnRedis:
    """What a Redis-backed store shows of its `RedisOps`: the client, the deadline and the breaker."""

    _ops: RedisOps

    @property
    def client(self) -> Redis:
        """The redis-py client (for tests and inspection; the store's calls go through `RedisOps`)."""
        return self._ops.client

    @property
    def op_timeout_s(self) -> float:
        """The deadline of each Redis operation (and so of each store method)."""
        return self._ops.op_timeout_s

    @property
    def breaker(self) -> Breaker:
        """The breaker that skips Redis after repeated failures."""
        return self._ops.breaker
