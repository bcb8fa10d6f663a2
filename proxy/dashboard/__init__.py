"""GET /dashboard: the one-view web page (SPEC §4), and the login that lets a browser reach it.

The page is static: `index.html`, `app.js` and `style.css` beside this file,
read once at import and served as they are (no build step, no CDN, no
third-party code). It holds no data; `app.js` fetches the JSON views
(/sluice/usage, /sluice/calls, /sluice/experiments) and draws them.

Auth. A browser cannot send a bearer header when it navigates, so with
[auth] on, `/dashboard/login` (a public path) shows a form; a POST of the
admin key sets a 12-hour session (`middleware.auth.session_token`: signed with
the admin key, never the key itself) in the `sluice_admin` cookie (HttpOnly:
no script can read it; SameSite=Strict: no other site can make the browser
send it; Secure over https) and redirects to /dashboard. AuthMiddleware reads that cookie on admin
paths only (/dashboard, /sluice/, /metrics), so the page and the views it
fetches take the same credential, and the cookie never authorizes a /v1/
call. Without it, /dashboard is a 401 in the gateway's error shape, and a
tenant key a 403. The key never goes in a URL. Without [auth] (a sidecar on
loopback) the page is open, like the views.

Every response carries `Content-Security-Policy: default-src 'self'` (no
inline script or style anywhere, no other origin) and `nosniff`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from importlib.resources import files
from urllib.parse import parse_qs

from middleware.auth import session_token
from middleware.body import read_body
from middleware.headers import ADMIN_COOKIE
from middleware.types import ASGIApp, Headers, Receive, Scope, Send

PAGE = "/dashboard"
LOGIN = "/dashboard/login"
LOGOUT = "/dashboard/logout"
SESSION_S = 12 * 3600  # the cookie's lifetime: a working day, then log in again
MAX_FORM_BYTES = 4096  # a login form holds one key

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]

_HTML = b"text/html; charset=utf-8"
_ASSETS = {  # path -> (file beside this module, content type)
    PAGE: ("index.html", _HTML),
    "/dashboard/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "/dashboard/style.css": ("style.css", b"text/css; charset=utf-8"),
    LOGIN: ("login.html", _HTML),
    "/dashboard/favicon.svg": ("favicon.svg", b"image/svg+xml"),
}
_FILES = {name: files(__name__).joinpath(name).read_bytes() for name, _ in _ASSETS.values()}
_REFUSED = b'<p class="error" role="alert">That is not the admin key.</p>'


def dashboard_endpoints(admin_key: str | None) -> dict[tuple[str, str], ASGIApp]:
    """The dashboard's exact (method, path) endpoints, for build_app's `Endpoints` table.

    `admin_key` is the gateway's admin key, None when [auth] is off (then the
    login form only sends the browser on to the page).
    """
    table: dict[tuple[str, str], ASGIApp] = {
        ("GET", path): _static(_FILES[name], content_type) for path, (name, content_type) in _ASSETS.items()
    }
    table["POST", LOGIN] = _login(admin_key)
    table["POST", LOGOUT] = _logout
    if admin_key is None:
        table["GET", LOGIN] = _redirect_to_page
    return table


async def _respond(send: Send, status: int, body: bytes = b"", headers: Headers | None = None) -> None:
    all_headers = [*SECURITY_HEADERS, (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


def _static(body: bytes, content_type: bytes) -> ASGIApp:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, body, [(b"content-type", content_type)])

    return endpoint


async def _redirect_to_page(scope: Scope, receive: Receive, send: Send) -> None:
    await _respond(send, 303, headers=[(b"location", PAGE.encode())])


def _cookie(value: str, max_age: int, scope: Scope) -> tuple[bytes, bytes]:
    secure = "; Secure" if scope.get("scheme") == "https" else ""
    text = f"{ADMIN_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    return b"set-cookie", text.encode("latin-1")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def _login(admin_key: str | None) -> ASGIApp:
    admin_digest = _digest(admin_key) if admin_key is not None else None
    login_page = _FILES["login.html"]
    refused_page = login_page.replace(b"<!-- refused -->", _REFUSED)

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(scope, receive, MAX_FORM_BYTES)
        if admin_digest is None:
            await _redirect_to_page(scope, receive, send)
            return
        presented = parse_qs(body.decode("utf-8", "replace")).get("key", [""])[-1].strip()
        # Compared as digests in constant time, as AuthMiddleware does: the time taken says nothing of the key.
        if admin_key is not None and presented and hmac.compare_digest(_digest(presented), admin_digest):
            cookie = _cookie(session_token(admin_key, int(time.time()) + SESSION_S), SESSION_S, scope)
            await _respond(send, 303, headers=[(b"location", PAGE.encode()), cookie])
        else:
            await _respond(send, 401, refused_page, [(b"content-type", _HTML)])

    return endpoint


async def _logout(scope: Scope, receive: Receive, send: Send) -> None:
    """Forget the cookie (Max-Age=0) and go back to the login form."""
    await _respond(send, 303, headers=[(b"location", LOGIN.encode()), _cookie("", 0, scope)])
