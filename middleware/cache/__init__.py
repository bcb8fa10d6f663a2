"""The opt-in response cache: key, entry encoding, request policy, completeness, and the middleware."""

from middleware.cache.middleware import CacheMiddleware, CacheOptions

__all__ = ["CacheMiddleware", "CacheOptions"]
