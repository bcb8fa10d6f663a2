"""Sluice's reusable pure-ASGI middlewares; each works in any Starlette/FastAPI app."""

from typing import TYPE_CHECKING, Any

from middleware.auth import AuthMiddleware, AuthOptions
from middleware.boundary import ErrorMiddleware
from middleware.cache import CacheMiddleware, CacheOptions
from middleware.call import CALL_KEY, Call, Route, Target
from middleware.stores import CacheStore, MemoryCacheStore

if TYPE_CHECKING:
    from middleware.stores.redis import RedisCacheStore

__all__ = [
    "CALL_KEY",
    "AuthMiddleware",
    "AuthOptions",
    "CacheMiddleware",
    "CacheOptions",
    "CacheStore",
    "Call",
    "ErrorMiddleware",
    "MemoryCacheStore",
    "RedisCacheStore",
    "Route",
    "Target",
]


def __getattr__(name: str) -> Any:
    # Redis support is imported on first use (see middleware.stores).
    if name == "RedisCacheStore":
        from middleware.stores.redis import RedisCacheStore

        return RedisCacheStore
    raise AttributeError(f"module 'middleware' has no attribute {name!r}")
