"""Sluice's reusable pure-ASGI middlewares; each works in any Starlette/FastAPI app."""

from middleware.auth import AuthMiddleware, AuthOptions
from middleware.boundary import ErrorMiddleware
from middleware.cache import CacheMiddleware, CacheOptions
from middleware.call import CALL_KEY, Call, Route, Target
from middleware.stores import CacheStore, MemoryCacheStore, RedisCacheStore

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
