"""RedisBudgetStore: budget spend shared by every replica, falling back to memory (SPEC §10, DESIGN "Stores").

Layout: one integer per key and period, nano-dollars spent plus reserved, at
`prefix + "budget:" + key id + ":" + period id` (`sluice:v1:budget:team-a:2026-11`),
expiring `EXPIRY_MARGIN_S` after the period ends. A reservation is one Lua script
(check-and-add, atomic in Redis), a settlement another (add, never below zero).

Redis failure: the budget fails over to this process's memory, not closed (a
budget must not take the gateway down) and not wide open. Every total Redis
returns is copied into a `MemoryBudgetStore`; while Redis fails (or the breaker
skips it), reservations and settlements go to that copy, so each replica keeps
enforcing from the last shared total it saw, plus its own spend. With N
replicas an outage can overshoot by at most N-1 times what was left. What a
replica spends meanwhile is carried into Redis by its next operation on that
key that succeeds, so the outage's spend is not forgotten. When unsure whether
Redis applied an operation (a timeout), the store errs towards counting:
reservations and increases are carried again, decreases only when the breaker
kept the operation from being sent at all. A warning is
logged when the fallback starts, and when Redis is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from decimal import Decimal

from redis.asyncio import Redis

from middleware.stores.breaker import Breaker
from middleware.stores.redis_client import DEFAULT_PREFIX, FAILED, OnRedis, RedisOps, make_client
from proxy.budget_store import EXPIRY_MARGIN_S, MemoryBudgetStore, from_nanos, period_end, to_nanos

logger = logging.getLogger("sluice")

# Lua numbers are doubles: integers are exact up to 2**53 nano-dollars (~$9M per key and period).
MAX_EXACT_NANOS = 2**53 - 1

# KEYS[1] the total; ARGV amount, limit, expire-at (unix s), carry (unsynced spend of this replica).
# Returns {1 if added else 0, the total}. '%d' keeps big totals out of exponent notation.
RESERVE = """
local total = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[4])
if total < 0 then total = 0 end
local added = 0
if total + tonumber(ARGV[1]) <= tonumber(ARGV[2]) then
  total = total + tonumber(ARGV[1])
  added = 1
end
if added == 1 or tonumber(ARGV[4]) ~= 0 then
  redis.call('SET', KEYS[1], string.format('%d', total))
  redis.call('EXPIREAT', KEYS[1], ARGV[3])
end
return {added, total}
"""

# KEYS[1] the total; ARGV delta, expire-at. Returns the new total, never below zero.
SETTLE = """
local total = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[1])
if total < 0 then total = 0 end
redis.call('SET', KEYS[1], string.format('%d', total))
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return total
"""


class RedisBudgetStore(OnRedis):
    """A `BudgetStore` on Redis, shared by replicas; `memory` is its fallback copy.

    `stats` counts errors and skipped operations (see `RedisOps`) and fallbacks
    (operations served by the memory copy instead of Redis).
    """

    def __init__(
        self,
        client: Redis,
        *,
        op_timeout_s: float = 0.05,
        prefix: str = DEFAULT_PREFIX,
        breaker: Breaker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stats: dict[str, int] = {"errors": 0, "skipped": 0, "fallbacks": 0}
        self._ops = RedisOps(client, op_timeout_s=op_timeout_s, breaker=breaker or Breaker(), stats=self.stats)
        self.memory = MemoryBudgetStore(clock=clock)
        self._clock = clock
        self._prefix = prefix + "budget:"
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)
        # Spend of this replica that Redis has not seen yet, per (key id, period id).
        self._unsynced: dict[tuple[str, str], int] = {}
        self._degraded = False

    @classmethod
    def from_url(
        cls, url: str, op_timeout_s: float = 0.05, *, prefix: str = DEFAULT_PREFIX, breaker: Breaker | None = None
    ) -> RedisBudgetStore:
        """A store on a client built for failing fast (`redis_client.make_client`); Redis may be down now."""
        return cls(make_client(url, op_timeout_s), op_timeout_s=op_timeout_s, prefix=prefix, breaker=breaker)

    def key(self, key_id: str, period_id: str) -> str:
        """The Redis key of a key id's spend in a period."""
        return f"{self._prefix}{key_id}:{period_id}"

    async def reserve(self, key_id: str, period_id: str, amount: Decimal, limit: Decimal) -> bool:
        """Atomic check-and-add in Redis; in the memory copy while Redis fails."""
        nanos, cap = to_nanos(amount), min(to_nanos(limit, up=False), MAX_EXACT_NANOS)
        entry = (key_id, period_id)
        carry = self._unsynced.pop(entry, 0)
        args = (nanos, cap, _expire_at(period_id), carry)
        result = await self._ops.call(lambda: self._reserve(keys=[self.key(*entry)], args=args))
        if result is FAILED:
            self._carry(entry, carry)
            self._fell_back()
            added = self.memory.reserve_nanos(key_id, period_id, nanos, cap)
            if added:
                self._carry(entry, nanos)
            return added
        self._recovered()
        added, total = result
        self.memory.remember(key_id, period_id, int(total))
        return bool(added)

    async def settle(self, key_id: str, period_id: str, reserved: Decimal, actual: Decimal | None) -> None:
        """Add `actual - reserved` in Redis; `actual` None keeps the reservation as spent (unpriced is not free)."""
        if actual is None:
            return
        delta = to_nanos(actual) - to_nanos(reserved)
        entry = (key_id, period_id)
        carry = self._unsynced.pop(entry, 0)
        args = (delta + carry, _expire_at(period_id))
        unsent = self._ops.breaker.state == "open"  # then `call` skips Redis for sure
        result = await self._ops.call(lambda: self._settle(keys=[self.key(*entry)], args=args))
        if result is FAILED:
            # A decrease that may have reached Redis (a timeout) is not carried, lest it count twice.
            self._carry(entry, carry + (delta if unsent else max(delta, 0)))
            self._fell_back()
            self.memory.adjust(key_id, period_id, delta)
            return
        self._recovered()
        self.memory.remember(key_id, period_id, int(result))

    async def spent(self, key_id: str, period_id: str) -> Decimal:
        """The shared total plus this replica's unsynced spend; the memory copy's while Redis fails."""
        raw = await self._ops.call(lambda: self._ops.client.get(self.key(key_id, period_id)))
        if raw is FAILED or not (raw or b"0").isdigit():  # an unreadable total: trust the copy
            self._fell_back()
            return await self.memory.spent(key_id, period_id)
        return from_nanos(int(raw or 0) + self._unsynced.get((key_id, period_id), 0))

    async def aclose(self) -> None:
        """Close the client and its connection pool; never raises."""
        await self._ops.aclose()

    def _carry(self, entry: tuple[str, str], nanos: int) -> None:
        if nanos:
            self._unsynced[entry] = self._unsynced.get(entry, 0) + nanos
        # Carries of periods long over are dropped: Redis lets their totals expire anyway.
        cutoff = self._clock() - EXPIRY_MARGIN_S
        for old in [e for e in self._unsynced if period_end(e[1]).timestamp() < cutoff]:
            del self._unsynced[old]

    def _fell_back(self) -> None:
        self.stats["fallbacks"] += 1
        if not self._degraded:
            self._degraded = True
            logger.warning("budgets: Redis unavailable; each replica enforces budgets from the last shared totals")

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            logger.warning("budgets: Redis is back; spend made meanwhile is added as keys are next used")


def _expire_at(period_id: str) -> int:
    return int(period_end(period_id).timestamp()) + EXPIRY_MARGIN_S
