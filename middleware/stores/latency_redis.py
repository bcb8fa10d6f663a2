"""RedisSpeeds: the speed half of `RedisStateStore` — summed in memory, pushed every second, read back cached.

Layout: one hash per target and epoch at `prefix + "speed:" + epoch + ":" + id`
holding the `latency.SpeedSums` of every replica, in the fields of `FIELDS`.
A push adds this process's sums with HINCRBY / HINCRBYFLOAT, which Redis
applies whatever the order, so the observations of every replica count, with
no read and no retry. The newest observation time (`at`) is a plain HSET: it
is the newest of the last push to land, within a flush interval of the true
newest. Each hash expires three epochs after its last push, by when no
reader looks at it (readers use the previous, current and next epoch).

The hot path. `observe` adds to two dicts (the pending batch, the memory
copy): no I/O. A background task, started by the first `observe` on a running
loop, pushes the batch every `flush_interval_s` in one MULTI/EXEC pipeline
for all the targets touched. `stats` answers from a cache refreshed at most
every `cache_ttl_s`, by one pipeline of HMGETs for every target asked about
in the last minute: at most one stats read per `cache_ttl_s` per process,
whatever the traffic. A target first asked about while the cache is fresh is
answered from the memory copy until the next refresh.

Failures, as in the rest of the state store: each Redis call goes through
`RedisOps.call` (one deadline, the breaker, never raising). A read adds this
process's pending (not yet pushed) sums to the shared ones, so a replica sees
its own observations at the next refresh, and keeps the result as the memory
copy. A failed read answers from that copy (the last shared sums read, plus
this process's observations since), counted in stats["fallbacks"]. A failed push puts its
batch back to go with the next one, so what is observed during an outage
reaches Redis after it, weighted by when it happened. A push that timed out
after Redis applied it is then counted twice; that is accepted, as it only
doubles the weight of one second's observations, without changing their
values, whereas dropping failed pushes would lose every outage.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from middleware.stores.latency import SpeedSums, observation, summarize
from middleware.stores.redis_client import FAILED, RedisOps
from middleware.stores.state_base import TargetStats
from middleware.stores.state_memory import MemoryStateStore

FIELDS = ("n", "w", "wf", "wt", "st", "wl", "sl", "at")  # count, weight, failed, ttft w/sum, latency w/sum, newest
ASKED_KEEP_S = 60.0  # a target not asked about for this long is no longer refreshed
MAX_ASKED = 1024  # targets refreshed at most (a route has a handful; pass-through keys may have many)
MAX_PENDING = 10_000  # (target, epoch) pairs awaiting a push; beyond, observations are dropped and counted

logger = logging.getLogger("sluice")


def parse_sums(row: Sequence[bytes | str | None]) -> SpeedSums | None:
    """A `SpeedSums` from the HMGET of `FIELDS`; None when absent or not written by this code."""
    if row[0] is None:
        return None
    try:
        count = int(row[0])
        values = [float(value or 0) for value in row[1:]]
    except ValueError:
        return None
    if not all(math.isfinite(value) for value in values):
        return None
    weight, failed, ttft_weight, ttft_sum, latency_weight, latency_sum, last = values
    return SpeedSums(count, weight, failed, ttft_weight, ttft_sum, latency_weight, latency_sum, last)


class RedisSpeeds:
    """Speed observations shared through Redis, failing open to `memory` (see the module)."""

    def __init__(
        self,
        ops: RedisOps,
        memory: MemoryStateStore,
        *,
        prefix: bytes,
        flush_interval_s: float = 1.0,
        cache_ttl_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ops = ops
        self.memory = memory
        self.policy = memory.speed_policy
        self.flush_interval_s = flush_interval_s
        self.cache_ttl_s = cache_ttl_s
        self._monotonic = monotonic
        self._prefix = prefix + b"speed:"
        self._ttl_ms = math.ceil(3 * self.policy.epoch_s * 1000)
        ops.stats.setdefault("fallbacks", 0)
        ops.stats.setdefault("speed_dropped", 0)
        self._pending: dict[tuple[str, int], SpeedSums] = {}
        self._cache: dict[str, TargetStats | None] = {}
        self._asked: OrderedDict[str, float] = OrderedDict()  # target id -> when last asked; oldest first
        self._read_at = -math.inf
        self._failed = False  # the last refresh failed: answers come from the memory copy
        self._task: asyncio.Task[None] | None = None
        self._sleeping = False  # the flusher waits between pushes (cancelling it then loses nothing)
        self._closed = False

    @property
    def pending(self) -> int:
        """How many (target, epoch) sums await a push."""
        return len(self._pending)

    @property
    def flusher(self) -> asyncio.Task[None] | None:
        """The background push task, once started (for tests and inspection)."""
        return self._task

    def observe(self, target_id: str, *, ttft_s: float | None, latency_s: float | None, ok: bool, now: float) -> None:
        """Count one try here and in the next push; no I/O. Starts the flusher on the first call on a loop."""
        found = observation(self.policy, ttft_s=ttft_s, latency_s=latency_s, ok=ok, now=now)
        if found is None:
            return
        epoch, sums = found
        self.memory.add_speed(target_id, epoch, sums)
        key = (target_id, epoch)
        pending = self._pending.get(key)
        if pending is not None:
            self._pending[key] = pending + sums
        elif len(self._pending) < MAX_PENDING:
            self._pending[key] = sums
        else:
            self._ops.stats["speed_dropped"] += 1
        task = self._task
        if task is None or task.done():
            self._start()

    async def speeds(self, ids: Sequence[str]) -> list[TargetStats | None]:
        """The shared speed of each id, in order, from the cache (refreshed here when stale); never raises."""
        if not ids:
            return []
        now = self._monotonic()
        asked = self._asked
        for target_id in ids:
            asked[target_id] = now
            asked.move_to_end(target_id)
        while len(asked) > MAX_ASKED:
            asked.popitem(last=False)
        if now - self._read_at >= self.cache_ttl_s:
            # Set before the read: callers meanwhile use the cache, so there is one read at a time.
            self._read_at = now
            await self._refresh(now)
        if self._failed:
            self._ops.stats["fallbacks"] += 1
        cache = self._cache
        missing = [target_id for target_id in ids if target_id not in cache]
        if not missing:
            return [cache[target_id] for target_id in ids]
        local = dict(zip(missing, await self.memory.speeds(missing), strict=True))
        return [cache[target_id] if target_id in cache else local[target_id] for target_id in ids]

    async def flush(self) -> None:
        """Push the pending sums in one pipeline; on failure keep them for the next push. Never raises."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        oldest = self.policy.epoch(self.memory.clock()) - 1
        batch = {key: sums for key, sums in batch.items() if key[1] >= oldest}  # no reader looks further back
        if not batch:
            return
        try:
            pushed = await self._ops.call(lambda: self._push(batch))
        except asyncio.CancelledError:
            self._put_back(batch)
            raise
        if pushed is FAILED:
            self._put_back(batch)

    async def aclose(self) -> None:
        """Stop the flusher (letting a push in progress end), then push what is pending; never raises."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            if self._sleeping:
                task.cancel()
            await asyncio.wait([task])  # not `await task`: that would raise the cancel we sent
        await self.flush()

    def _start(self) -> None:
        if self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet (a synchronous caller): a later observe on a loop, or aclose, pushes the batch
        self._task = loop.create_task(self._run(), name="sluice-speed-flush")

    async def _run(self) -> None:
        while not self._closed:
            self._sleeping = True
            try:
                await asyncio.sleep(self.flush_interval_s)
            finally:
                self._sleeping = False
            try:
                await self.flush()
            except Exception:  # a bug, not Redis (flush never raises for Redis): keep the flusher alive
                logger.exception("pushing speed statistics failed")

    def _put_back(self, batch: dict[tuple[str, int], SpeedSums]) -> None:
        pending = self._pending
        for key, sums in batch.items():
            found = pending.get(key)
            pending[key] = sums if found is None else sums + found

    def _key(self, epoch: int, target_id: str) -> bytes:
        return self._prefix + str(epoch).encode() + b":" + target_id.encode("utf-8", "surrogatepass")

    async def _push(self, batch: dict[tuple[str, int], SpeedSums]) -> None:
        async with self._ops.client.pipeline(transaction=True) as pipe:
            for (target_id, epoch), sums in batch.items():
                key = self._key(epoch, target_id)
                pipe.hincrby(key, "n", sums.count)
                for name, value in zip(FIELDS[1:7], _weights(sums), strict=True):
                    if value:
                        pipe.hincrbyfloat(key, name, value)
                pipe.hset(key, "at", repr(sums.last))
                pipe.pexpire(key, self._ttl_ms)
            # A field left unparseable by another writer fails its own command only: the rest still counts.
            await pipe.execute(raise_on_error=False)

    async def _refresh(self, now: float) -> None:
        asked = self._asked
        while asked and next(iter(asked.values())) < now - ASKED_KEEP_S:
            asked.popitem(last=False)
        ids = list(asked)
        wall = self.memory.clock()
        current = self.policy.epoch(wall)
        epochs = (current - 1, current, current + 1)
        rows = await self._ops.call(lambda: self._read(ids, epochs))
        if rows is FAILED:
            self._cache = {}  # answer from the memory copy until the next refresh
            self._failed = True
            return
        self._failed = False
        cache: dict[str, TargetStats | None] = {}
        pending = self._pending
        for index, target_id in enumerate(ids):
            buckets: dict[int, SpeedSums] = {}
            for offset, epoch in enumerate(epochs):
                shared = parse_sums(rows[index * len(epochs) + offset])
                # What this process has not pushed yet is in no replica's view: add it to its own.
                local = pending.get((target_id, epoch))
                sums = shared if local is None else local if shared is None else shared + local
                if sums is not None:
                    buckets[epoch] = sums
            self.memory.remember_speed(target_id, buckets)  # Redis is the truth while it answers
            cache[target_id] = summarize(buckets, wall, self.policy)
        self._cache = cache

    async def _read(self, ids: list[str], epochs: tuple[int, ...]) -> list[list[bytes | None]]:
        async with self._ops.client.pipeline(transaction=False) as pipe:
            for target_id in ids:
                for epoch in epochs:
                    pipe.hmget(self._key(epoch, target_id), FIELDS)
            rows: list[list[bytes | None]] = await pipe.execute()
        return rows


def _weights(sums: SpeedSums) -> tuple[float, float, float, float, float, float]:
    # In the order of FIELDS[1:7].
    return (sums.weight, sums.failed, sums.ttft_weight, sums.ttft_sum, sums.latency_weight, sums.latency_sum)
