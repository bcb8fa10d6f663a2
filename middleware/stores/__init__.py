"""Storage for the response cache (SPEC §7) and the resilience layer's state (SPEC §8), in memory or in Redis.

`RedisCacheStore` and `RedisStateStore` are imported on first use: redis-py
costs ~7 MiB and a fifth of a second of start-up, which a gateway without
[redis] should not pay.
"""

from typing import TYPE_CHECKING, Any

from middleware.stores.base import DEFAULT_MAX_ENTRY_BYTES, MIB, CacheStore
from middleware.stores.breaker import Breaker
from middleware.stores.memory import DEFAULT_MAX_BYTES, LocalFlights, MemoryCacheStore
from middleware.stores.state_base import HEALTHY, CircuitPolicy, StateStore, TargetState
from middleware.stores.state_memory import MemoryStateStore

if TYPE_CHECKING:
    from middleware.stores.redis import DEFAULT_PREFIX, RedisCacheStore
    from middleware.stores.state_redis import RedisStateStore

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRY_BYTES",
    "DEFAULT_PREFIX",
    "HEALTHY",
    "MIB",
    "Breaker",
    "CacheStore",
    "CircuitPolicy",
    "LocalFlights",
    "MemoryCacheStore",
    "MemoryStateStore",
    "RedisCacheStore",
    "RedisStateStore",
    "StateStore",
    "TargetState",
]


def __getattr__(name: str) -> Any:
    if name in ("RedisCacheStore", "DEFAULT_PREFIX"):
        from middleware.stores import redis

        return getattr(redis, name)
    if name == "RedisStateStore":
        from middleware.stores import state_redis

        return state_redis.RedisStateStore
    raise AttributeError(f"module 'middleware.stores' has no attribute {name!r}")
