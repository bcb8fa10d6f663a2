"""RedisStateStore: cooldowns and circuits shared by replicas, falling back to memory (SPEC §8, DESIGN "Stores").

Layout: one hash per target at `prefix + "state:" + id`, with the fields
cool_until, open_until (wall-clock seconds, as text), failures and ejections
(integers); every write refreshes a 2-hour expiry on it, so no state lives
for ever (the longest cooldown is `retry_after.MAX_RESET_S`, one hour). The
one probe of a half-open circuit is a `SET NX PX` on `prefix + "probe:" + id`.
Speed statistics (`observe`, `speeds(ids)`) live in hashes of their own,
batched and cached in process: see `latency_redis`.

Every write goes to a `MemoryStateStore` copy first, then to Redis, through
`RedisOps.call` (one deadline, a breaker, never raising). When Redis fails
or the breaker is open, the answer comes from that copy: an outage makes the
state local to this process, never an error, never slower than one deadline.
While Redis answers, what it says replaces the copy, so an outage starts
from the last shared state seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from redis.asyncio import Redis
from redis.exceptions import WatchError

from middleware.stores.breaker import Breaker
from middleware.stores.latency import DEFAULT_POLICY, SpeedPolicy
from middleware.stores.latency_redis import RedisSpeeds
from middleware.stores.redis_client import DEFAULT_PREFIX, FAILED, OnRedis, RedisOps, make_client
from middleware.stores.state_base import CircuitPolicy, TargetState, TargetStats
from middleware.stores.state_memory import MemoryStateStore

STATE_TTL_S = 2 * 3600
FIELDS = ("cool_until", "open_until", "failures", "ejections")
OPEN_ATTEMPTS = 5  # WATCH rounds to open a circuit before leaving it to the next failure


def parse_state(row: Sequence[bytes | str | None]) -> TargetState:
    """A `TargetState` from the HMGET of `FIELDS`; missing or unreadable fields are zero."""
    cool_until, open_until, failures, ejections = row
    try:
        return TargetState(
            cool_until=float(cool_until or 0),
            open_until=float(open_until or 0),
            failures=int(failures or 0),
            ejections=int(ejections or 0),
        )
    except ValueError:
        return TargetState()  # not written by this code: treat as unknown rather than raise


class RedisStateStore(OnRedis):
    """A `StateStore` on Redis, shared by replicas; `memory` is its fallback copy.

    `stats` counts errors (failed or timed-out Redis operations), skipped
    (operations not made because the breaker was open), fallbacks (answers
    that came from the memory copy instead of Redis) and speed_dropped
    (observations not pushed: too many targets pending).
    `flush_interval_s` and `stats_ttl_s` pace the speed pushes and reads.
    """

    def __init__(
        self,
        client: Redis,
        *,
        op_timeout_s: float = 0.05,
        prefix: str = DEFAULT_PREFIX,
        breaker: Breaker | None = None,
        clock: Callable[[], float] = time.time,
        speed_policy: SpeedPolicy = DEFAULT_POLICY,
        flush_interval_s: float = 1.0,
        stats_ttl_s: float = 1.0,
    ) -> None:
        self.stats: dict[str, int] = {"errors": 0, "skipped": 0, "fallbacks": 0}
        self._ops = RedisOps(client, op_timeout_s=op_timeout_s, breaker=breaker or Breaker(), stats=self.stats)
        self.memory = MemoryStateStore(clock=clock, speed_policy=speed_policy)
        raw = prefix.encode()
        self._state_prefix = raw + b"state:"
        self._probe_prefix = raw + b"probe:"
        self._speeds = RedisSpeeds(
            self._ops, self.memory, prefix=raw, flush_interval_s=flush_interval_s, cache_ttl_s=stats_ttl_s
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        op_timeout_s: float = 0.05,
        *,
        prefix: str = DEFAULT_PREFIX,
        breaker: Breaker | None = None,
        clock: Callable[[], float] = time.time,
        max_connections: int = 64,
        health_check_interval_s: int = 5,
        speed_policy: SpeedPolicy = DEFAULT_POLICY,
        flush_interval_s: float = 1.0,
        stats_ttl_s: float = 1.0,
    ) -> RedisStateStore:
        """A store on a client built for failing fast (`redis_client.make_client`); Redis may be down now."""
        return cls(
            make_client(url, op_timeout_s, max_connections, health_check_interval_s),
            op_timeout_s=op_timeout_s,
            prefix=prefix,
            breaker=breaker,
            clock=clock,
            speed_policy=speed_policy,
            flush_interval_s=flush_interval_s,
            stats_ttl_s=stats_ttl_s,
        )

    @property
    def speed_pushes(self) -> RedisSpeeds:
        """The speed statistics' batching, flusher and cache (for tests and inspection)."""
        return self._speeds

    async def speeds(self, ids: Sequence[str]) -> list[TargetStats | None]:
        """Each id's speed estimate (None: no recent data), from a cache read at most once a second."""
        return await self._speeds.speeds(ids)

    async def read(self, ids: Sequence[str]) -> list[TargetState]:
        """The state of each id, in order, in one round trip; from the memory copy when Redis fails."""
        if not ids:
            return []
        keys = [self._key(self._state_prefix, target_id) for target_id in ids]
        rows = await self._ops.call(lambda: self._read_rows(keys))
        if rows is FAILED:
            self.stats["fallbacks"] += 1
            return await self.memory.read(ids)
        states = [parse_state(row) for row in rows]
        for target_id, state in zip(ids, states, strict=True):
            self.memory.remember(target_id, state)
        return states

    async def cool_down(self, target_id: str, until: float) -> None:
        """Rate-limited until `until`, for every replica; the newest value wins, even if shorter."""
        await self.memory.cool_down(target_id, until)
        key = self._key(self._state_prefix, target_id)
        await self._ops.call(lambda: self._write(key, {"cool_until": repr(float(until))}))

    async def failed(self, target_id: str, now: float, policy: CircuitPolicy) -> TargetState:
        """Count one failure across replicas (HINCRBY); open the circuit once, under WATCH, at the threshold."""
        local = await self.memory.failed(target_id, now, policy)
        key = self._key(self._state_prefix, target_id)
        shared = await self._ops.call(lambda: self._count_failure(key, now, policy))
        if shared is FAILED:
            self.stats["fallbacks"] += 1
            return local
        self.memory.remember(target_id, shared)
        return shared

    async def succeeded(self, target_id: str) -> None:
        """Forget failures and ejections for every replica (the circuit closes); a cooldown stays."""
        await self.memory.succeeded(target_id)
        key = self._key(self._state_prefix, target_id)
        await self._ops.call(lambda: self._close_circuit(key))

    async def claim_probe(self, target_id: str, ttl_s: float) -> bool:
        """True for one caller per `ttl_s` across replicas; per process only while Redis fails."""
        local = await self.memory.claim_probe(target_id, ttl_s)
        key = self._key(self._probe_prefix, target_id)
        ttl_ms = max(1, math.ceil(min(ttl_s, STATE_TTL_S) * 1000)) if ttl_s > 0 else 1  # NaN too
        claimed = await self._ops.call(lambda: self._ops.client.set(key, b"1", nx=True, px=ttl_ms))
        if claimed is FAILED:
            self.stats["fallbacks"] += 1
            return local
        return bool(claimed)

    def observe(self, target_id: str, *, ttft_s: float | None, latency_s: float | None, ok: bool, now: float) -> None:
        """Count one try of `target_id`, here at once and for every replica at the next push (~1 s); no I/O."""
        self._speeds.observe(target_id, ttft_s=ttft_s, latency_s=latency_s, ok=ok, now=now)

    async def flush_speeds(self) -> None:
        """Push the pending speed observations now (the flusher does it every `flush_interval_s`); never raises."""
        await self._speeds.flush()

    def state(self) -> str:
        """For /readyz: "down" while the breaker refuses calls or just after a failed call, else "up"."""
        return self._ops.state()

    async def aclose(self) -> None:
        """Stop the speed flusher and push what it still holds, then close the client and its pool; never raises."""
        await self._speeds.aclose()
        await self._ops.aclose()

    @staticmethod
    def _key(prefix: bytes, target_id: str) -> bytes:
        return prefix + target_id.encode("utf-8", "surrogatepass")

    async def _read_rows(self, keys: list[bytes]) -> list[list[bytes | None]]:
        async with self._ops.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, FIELDS)
            rows: list[list[bytes | None]] = await pipe.execute()
        return rows

    async def _write(self, key: bytes, fields: dict[str, str]) -> None:
        async with self._ops.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]  # redis-py's mapping type is invariant
            pipe.pexpire(key, STATE_TTL_S * 1000)
            await pipe.execute()

    async def _close_circuit(self, key: bytes) -> None:
        # HDEL rather than zeroes: a hash left with no cooldown disappears.
        async with self._ops.client.pipeline(transaction=True) as pipe:
            pipe.hdel(key, "open_until", "failures", "ejections")
            pipe.pexpire(key, STATE_TTL_S * 1000)
            await pipe.execute()

    async def _count_failure(self, key: bytes, now: float, policy: CircuitPolicy) -> TargetState:
        async with self._ops.client.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "failures", 1)
            pipe.pexpire(key, STATE_TTL_S * 1000)
            pipe.hmget(key, FIELDS)
            *_, row = await pipe.execute()
        state = parse_state(row)
        if state.failures < policy.threshold or state.open_until > now:
            return state  # below the threshold, or already open: a late failure does not extend it
        return await self._open_circuit(key, now, policy)

    async def _open_circuit(self, key: bytes, now: float, policy: CircuitPolicy) -> TargetState:
        """Eject the target unless another caller did first; the one that wins the WATCH opens it."""
        state = TargetState()
        for _ in range(OPEN_ATTEMPTS):
            async with self._ops.client.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                state = parse_state(await pipe.hmget(key, FIELDS))
                if state.failures < policy.threshold or state.open_until > now:
                    return state  # opened by another caller, or closed by a success meanwhile
                ejections = state.ejections + 1
                opened = replace(state, ejections=ejections, open_until=now + policy.ejection_s(ejections))
                pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1
                pipe.hset(key, mapping={"open_until": repr(opened.open_until), "ejections": ejections})
                pipe.pexpire(key, STATE_TTL_S * 1000)
                try:
                    await pipe.execute()
                except WatchError:
                    continue  # the hash changed under us (often just another failure): look again
                return opened
        # Still contended: the failure is counted; a later one opens the circuit.
        return state
