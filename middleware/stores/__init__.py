"""Storage for the response cache: bytes by key with a TTL, in memory or in Redis (SPEC §7).

`RedisCacheStore` is imported on first use: redis-py costs ~7 MiB and a fifth
of a second of start-up, which a gateway without [redis] should not pay.
"""

from typing import TYPE_CHECKING, Any

from middleware.stores.base import DEFAULT_MAX_ENTRY_BYTES, MIB, CacheStore
from middleware.stores.breaker import Breaker
from middleware.stores.memory import DEFAULT_MAX_BYTES, LocalFlights, MemoryCacheStore

if TYPE_CHECKING:
    from middleware.stores.redis import DEFAULT_PREFIX, RedisCacheStore

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRY_BYTES",
    "DEFAULT_PREFIX",
    "MIB",
    "Breaker",
    "CacheStore",
    "LocalFlights",
    "MemoryCacheStore",
    "RedisCacheStore",
]


def __getattr__(name: str) -> Any:
    if name in ("RedisCacheStore", "DEFAULT_PREFIX"):
        from middleware.stores import redis

        return getattr(redis, name)
    raise AttributeError(f"module 'middleware.stores' has no attribute {name!r}")
