"""AuthMiddleware: gateway keys to tenants, or pass-through identity when no keys are configured (SPEC §4, §5)."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from middleware.call import Call
from middleware.errors import Forbidden, Unauthorized
from middleware.headers import admin_cookie, bearer_or_api_key
from middleware.types import ASGIApp, Receive, Scope, Send

ADMIN_TENANT = "admin"


@dataclass(frozen=True, slots=True)
class AuthOptions:
    """Options for AuthMiddleware.

    `keys` maps each gateway key to its id. With no keys and no admin key the
    middleware runs in pass-through mode: every caller is let in, and the
    credential it presented is kept on the Call for providers that have no
    key of their own.
    """

    keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    admin_key: str | None = field(default=None, repr=False)
    # The dashboard's login form and what it shows before anyone has logged in (static, no data).
    public_paths: frozenset[str] = frozenset(
        {"/healthz", "/readyz", "/dashboard/login", "/dashboard/style.css", "/dashboard/favicon.svg"}
    )
    admin_prefixes: tuple[str, ...] = ("/sluice/", "/metrics", "/dashboard")


@functools.lru_cache(maxsize=1024)  # hashing the presented key cost ~1% of a call
def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def anonymous_tenant(presented: str | None) -> str:
    """The pass-through tenant of a presented credential: `anon:` + a SHA-256 prefix, or `anon` for none.

    Cryptographic, because the name is stored (cache keys) and must not reveal the key.
    """
    return _anon_tenant(presented) if presented else "anon"


@functools.lru_cache(maxsize=4096)
def _anon_tenant(presented: str) -> str:
    # Cached: a SHA-256 per request cost ~3% of its CPU.
    return "anon:" + _digest(presented).hex()[:32]


class AuthMiddleware:
    """Sets `call.tenant` from the presented key, or answers 401/403."""

    def __init__(self, app: ASGIApp, options: AuthOptions | None = None) -> None:
        self.app = app
        self.options = options or AuthOptions()
        # Looked up by digest, then compared in constant time, so neither the
        # lookup nor the comparison times the secret itself.
        self._ids_by_digest = {_digest(key): (key, key_id) for key, key_id in self.options.keys.items()}
        admin = self.options.admin_key
        self._admin_digest = _digest(admin) if admin is not None else None
        self._enabled = bool(self.options.keys) or admin is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in self.options.public_paths:
            await self.app(scope, receive, send)
            return
        call = Call.of(scope)
        if call.internal is not None and call.tenant is not None:  # made by the gateway itself, never by a client
            await self.app(scope, receive, send)
            return
        presented = bearer_or_api_key(scope)
        if not self._enabled:
            call.client_key = presented
            call.tenant = anonymous_tenant(presented)
        else:
            admin_only = path.startswith(self.options.admin_prefixes)
            if presented is None and admin_only:
                # Navigating to /dashboard, a browser sends no bearer header: the dashboard's login keeps
                # the admin key in an HttpOnly, SameSite=Strict cookie, read here for admin paths only.
                presented = admin_cookie(scope)
            call.tenant = self._tenant(presented, admin_only=admin_only)
        await self.app(scope, receive, send)

    def _tenant(self, presented: str | None, *, admin_only: bool) -> str:
        if presented is None:
            hint = "; in a browser, log in at /dashboard/login" if admin_only else ""
            raise Unauthorized(f"missing gateway key: send `Authorization: Bearer <key>` or `x-api-key: <key>`{hint}")
        digest = _digest(presented)
        if self._admin_digest is not None and hmac.compare_digest(digest, self._admin_digest):
            return ADMIN_TENANT
        found = self._ids_by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0].encode(), presented.encode("utf-8", "surrogateescape")):
            raise Unauthorized("invalid gateway key")
        if admin_only:
            raise Forbidden("this path needs the admin key")
        return found[1]
