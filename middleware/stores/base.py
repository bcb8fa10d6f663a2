"""The response cache's storage contract: opaque bytes by key, with a TTL (SPEC §7).

Implementations: `MemoryCacheStore` (the default) and `RedisCacheStore`. Both
fail open: a backend failure is a miss, "not stored" or "no lock", never an
exception, so the cache can only ever make a call uncached, not failed.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

MIB = 1024 * 1024
DEFAULT_MAX_ENTRY_BYTES = 4 * MIB


class CacheStore(Protocol):
    """Opaque bytes by key, with TTL. Encoding lives in middleware/cache/entry.py, never here."""

    async def get(self, key: bytes) -> bytes | None:
        """The stored value, or None on a miss AND on any store failure (fail open)."""
        ...

    async def set(self, key: bytes, value: bytes, ttl_s: float) -> bool:
        """Store `value` for `ttl_s` seconds; False when not stored (too big, failure, breaker open)."""
        ...

    def single_flight(self, key: bytes, wait_s: float) -> AbstractAsyncContextManager[bool]:
        """Coalesce concurrent misses of one key.

        Entering yields True to exactly one caller per key at a time (the
        leader, who should fetch and set), and False to the others (followers)
        once the leader has left the context OR `wait_s` has passed, whichever
        is first; the follower then calls get() itself. Leaving the context as
        leader (normally or by exception/cancellation) always releases. Never
        raises because the backend failed: on failure it yields True
        (everyone is their own leader, no lock).
        """
        ...

    def state(self) -> str:
        """For /readyz: "memory", or for Redis "up" / "down" (breaker open or last op failed)."""
        ...

    async def aclose(self) -> None:
        """Release the backend's resources (connections); the store is unusable afterwards."""
        ...
