"""AuthMiddleware: gateway keys to tenants, or pass-through identity when no keys are configured (SPEC §4, §5)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
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


def session_token(admin_key: str, expires: int) -> str:
    """A dashboard session that ends at `expires` (Unix seconds): `<expires>.<HMAC-SHA256 of it under the admin key>`.

    The browser holds this, never the admin key: a leaked cookie opens the
    admin views until it expires and cannot be turned back into the key.
    Stateless, so every replica checks it alike; changing the admin key ends
    every session.
    """
    mac = hmac.new(admin_key.encode("utf-8", "surrogateescape"), f"sluice-dashboard:{expires}".encode(), "sha256")
    return f"{expires}.{mac.hexdigest()}"


def valid_session(admin_key: str, token: str, now: float | None = None) -> bool:
    """Whether `token` is a `session_token` of `admin_key` that has not expired."""
    expires, _, _ = token.partition(".")
    if not expires.isdigit() or int(expires) <= (time.time() if now is None else now):
        return False
    return hmac.compare_digest(
        token.encode("utf-8", "surrogateescape"), session_token(admin_key, int(expires)).encode()
    )


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
            session = admin_cookie(scope) if presented is None and admin_only else None
            if session is not None:
                # Navigating to /dashboard, a browser sends no bearer header: the dashboard's login left a
                # session in an HttpOnly, SameSite=Strict cookie, read here for admin paths only.
                call.tenant = self._session_tenant(session)
            else:
                call.tenant = self._tenant(presented, admin_only=admin_only)
        await self.app(scope, receive, send)

    def _session_tenant(self, session: str) -> str:
        admin = self.options.admin_key
        if admin is None or not valid_session(admin, session):
            raise Unauthorized("the dashboard session is not valid or has ended: log in again at /dashboard/login")
        return ADMIN_TENANT

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
