"""Storage for the response cache: bytes by key with a TTL, in memory or in Redis (SPEC §7)."""

from middleware.stores.base import DEFAULT_MAX_ENTRY_BYTES, MIB, CacheStore
from middleware.stores.breaker import Breaker
from middleware.stores.memory import DEFAULT_MAX_BYTES, LocalFlights, MemoryCacheStore
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
