"""Every header name the gateway reads or writes, in one table, and their parsing (SPEC §5)."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from urllib.parse import unquote

from middleware.errors import InvalidRequest
from middleware.types import Headers, Scope

# Request headers (lower-case, as ASGI delivers them).
AUTHORIZATION = b"authorization"
X_API_KEY = b"x-api-key"
COOKIE = b"cookie"
REQUEST_ID = b"x-request-id"
SLUICE_CACHE = b"x-sluice-cache"
SLUICE_CACHE_TTL = b"x-sluice-cache-ttl"
SLUICE_ROUTE = b"x-sluice-route"
SLUICE_FALLBACK = b"x-sluice-fallback"
SLUICE_RACE = b"x-sluice-race"
SLUICE_SUBJECT = b"x-sluice-subject"

# The cookie the dashboard's login form sets (proxy/dashboard): a session token (middleware.auth.session_token).
ADMIN_COOKIE = "sluice_admin"

# Response headers.
SLUICE_PROVIDER = b"x-sluice-provider"
SLUICE_MODEL = b"x-sluice-model"
SLUICE_ATTEMPTS = b"x-sluice-attempts"
SLUICE_COST = b"x-sluice-cost-usd"
SLUICE_VARIANT = b"x-sluice-variant"

# Hop-by-hop headers (RFC 9110 §7.6.1) never cross the gateway in either direction.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# A request id is echoed into headers and logs, so it must be short and inert.
_REQUEST_ID_SHAPE = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header `name` (lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def request_id(scope: Scope) -> str:
    """The client's X-Request-Id when it is well formed, else a new one.

    A malformed id (over 128 characters, or characters other than letters,
    digits and ._:-) is refused with a 400 rather than silently replaced, so a
    client never loses its correlation without being told.
    """
    given = header(scope, REQUEST_ID)
    if given is None:
        return new_request_id()
    if _REQUEST_ID_SHAPE.fullmatch(given) is None:
        raise InvalidRequest("X-Request-Id must be 1-128 characters of letters, digits and ._:-", param="X-Request-Id")
    return given.decode()


def new_request_id() -> str:
    """32 random hex digits.

    A correlation id, not a secret: `random` (reseeded after fork) instead of
    uuid4, whose getrandom() system call cost ~4% of a request's CPU here.
    """
    return f"{random.getrandbits(128):032x}"


def bearer_or_api_key(scope: Scope) -> str | None:
    """The credential a client presented: `Authorization: Bearer K`, else `x-api-key: K`."""
    value = header(scope, AUTHORIZATION)
    if value is not None:
        scheme, _, token = value.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    api_key = header(scope, X_API_KEY)
    if api_key:
        return api_key.decode("latin-1").strip() or None
    return None


def admin_cookie(scope: Scope) -> str | None:
    """The credential in the `sluice_admin` cookie (the dashboard's login), or None.

    Only AuthMiddleware reads it, and only on admin paths: a browser cannot
    send a bearer header when it navigates to /dashboard.
    """
    for key, value in scope["headers"]:
        if key != COOKIE:
            continue
        for part in value.decode("latin-1").split(";"):
            name, equals, text = part.strip().partition("=")
            if equals and name == ADMIN_COOKIE:
                return unquote(text.strip()) or None
    return None


def content_type_is(headers: Iterable[tuple[bytes, bytes]], prefix: bytes) -> bool:
    """Whether the response `headers` say a content type starting with `prefix` (e.g. b"text/event-stream")."""
    return any(k == b"content-type" and v.startswith(prefix) for k, v in headers)


def with_header(headers: Headers, name: bytes, value: bytes) -> Headers:
    """A new header list with `name` set to `value` (replacing any value it had)."""
    return [(k, v) for k, v in headers if k != name] + [(name, value)]
