"""What a request asks of the cache: X-Sluice-Cache, X-Sluice-Cache-TTL and Cache-Control (SPEC §5).

Caching is off unless asked for. The TTL, when the cache is on:
- `X-Sluice-Cache-TTL: N`, else `Cache-Control: max-age=N`, else the configured default;
- N is seconds, fractions allowed; over `max_ttl_s` (30 days) it is clamped down to it;
- zero, negative, NaN/infinite or non-numeric is a 400 naming the header, never a 500.
`Cache-Control: no-store` turns the cache off for the call whatever else is said.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from middleware.errors import InvalidRequest
from middleware.headers import SLUICE_CACHE, SLUICE_CACHE_TTL, header
from middleware.types import Scope

OFF, ON, REFRESH = "off", "on", "refresh"
_MODES = {b"on": ON, b"off": OFF, b"refresh": REFRESH}
CACHE_CONTROL = b"cache-control"


@dataclass(frozen=True, slots=True)
class CacheRequest:
    """The cache mode a call asked for, and the lifetime of what it stores."""

    mode: str
    ttl_s: float


_NOT_ASKED = CacheRequest(OFF, 0.0)


def cache_request(scope: Scope, default_ttl_s: float, max_ttl_s: float) -> CacheRequest:
    """Parse the request's cache headers; InvalidRequest when one is malformed."""
    raw_mode = header(scope, SLUICE_CACHE)
    if raw_mode is None:
        return _NOT_ASKED
    mode = _MODES.get(raw_mode.strip().lower())
    if mode is None:
        raise InvalidRequest("X-Sluice-Cache must be one of on, off, refresh", param="X-Sluice-Cache")
    directives = _cache_control(header(scope, CACHE_CONTROL))
    if mode == OFF or "no-store" in directives:
        return _NOT_ASKED
    given = header(scope, SLUICE_CACHE_TTL)
    if given is not None:
        return CacheRequest(mode, _ttl(given, "X-Sluice-Cache-TTL", max_ttl_s))
    max_age = directives.get("max-age")
    if max_age is not None:
        return CacheRequest(mode, _ttl(max_age.encode(), "Cache-Control max-age", max_ttl_s))
    return CacheRequest(mode, default_ttl_s)


def _cache_control(value: bytes | None) -> dict[str, str]:
    if not value:
        return {}
    directives = {}
    for part in value.decode("latin-1").split(","):
        name, _, argument = part.strip().partition("=")
        directives[name.strip().lower()] = argument.strip().strip('"')
    return directives


def _ttl(raw: bytes, name: str, max_ttl_s: float) -> float:
    try:
        seconds = float(raw.decode("latin-1").strip())
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidRequest(f"{name} must be a positive number of seconds", param=name.split()[0])
    return min(seconds, max_ttl_s)
