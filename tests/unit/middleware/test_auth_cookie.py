"""The dashboard's session cookie: read by AuthMiddleware on admin paths only; a signed, expiring token, not the key."""

import json
import time

import pytest

from middleware.auth import AuthMiddleware, AuthOptions, session_token, valid_session
from middleware.boundary import ErrorMiddleware
from middleware.call import Call
from middleware.headers import admin_cookie

OPTIONS = AuthOptions(keys={"gk-team-a": "team-a"}, admin_key="gk-admin;=%")
SESSION = session_token("gk-admin;=%", int(time.time()) + 3600)
ADMIN_COOKIE = (b"cookie", f"theme=dark; sluice_admin={SESSION}; other=1".encode())


async def no_body():
    return {"type": "http.request", "body": b"", "more_body": False}


async def answer(path, *headers, options=OPTIONS):
    seen = {}

    async def inner(scope, receive, send):
        seen["tenant"], seen["client_key"] = Call.of(scope).tenant, Call.of(scope).client_key
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    messages = []

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": list(headers)}
    await ErrorMiddleware(AuthMiddleware(inner, options))(scope, no_body, send)
    body = json.loads(b"".join(m.get("body", b"") for m in messages[1:]))
    return messages[0]["status"], body, seen


def test_the_cookie_is_found_among_others_and_percent_decoded():
    assert admin_cookie({"headers": [ADMIN_COOKIE]}) == SESSION
    assert admin_cookie({"headers": [(b"cookie", b"sluice_admin=a%3Bb")]}) == "a;b"
    assert admin_cookie({"headers": [(b"cookie", b"a=1"), (b"cookie", b"sluice_admin=k")]}) == "k"
    assert admin_cookie({"headers": [(b"cookie", b"sluice_admin=")]}) is None
    assert admin_cookie({"headers": [(b"cookie", b"xsluice_admin=k")]}) is None


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/dashboard", "/sluice/usage", "/metrics"])
async def test_the_admin_cookie_opens_admin_paths(path):
    status, _, seen = await answer(path, ADMIN_COOKIE)
    assert (status, seen["tenant"]) == (200, "admin")


@pytest.mark.anyio
async def test_the_admin_cookie_never_authorizes_a_v1_call():
    status, body, _ = await answer("/v1/models", ADMIN_COOKIE)
    assert status == 401
    assert "/dashboard/login" not in body["error"]["message"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "cookie",
    [
        "gk-team-a",  # a key, not a session
        "gk-admin;=%",  # even the admin key itself: the cookie only ever holds a session
        session_token("gk-admin;=%", int(time.time()) - 1),  # expired
        session_token("another-admin-key", int(time.time()) + 3600),  # signed by another key
        SESSION.replace(SESSION.split(".")[0], str(int(time.time()) + 10**6)),  # expiry pushed out
    ],
)
async def test_anything_but_a_live_session_in_the_cookie_is_refused(cookie):
    status, body, _ = await answer("/dashboard", (b"cookie", f"sluice_admin={cookie}".encode()))
    assert (status, body["error"]["type"]) == (401, "authentication_error")
    assert "/dashboard/login" in body["error"]["message"]


def test_a_session_is_valid_until_it_expires():
    token = session_token("k", 1000)
    assert valid_session("k", token, now=999.0)
    assert not valid_session("k", token, now=1000.0)
    assert not valid_session("other", token, now=999.0)
    assert not valid_session("k", "garbage", now=0.0)
    assert "k" not in token.split(".", 1)[1]  # the token is a MAC, the key is not in it


@pytest.mark.anyio
async def test_without_any_credential_the_dashboard_says_where_to_log_in():
    status, body, _ = await answer("/dashboard")
    assert status == 401
    assert "/dashboard/login" in body["error"]["message"]


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/dashboard/login", "/dashboard/style.css", "/dashboard/favicon.svg"])
async def test_the_login_form_and_its_static_look_need_no_key(path):
    status, _, seen = await answer(path)
    assert (status, seen["tenant"]) == (200, None)


@pytest.mark.anyio
async def test_in_pass_through_mode_the_cookie_is_never_forwarded_as_a_client_key():
    status, _, seen = await answer("/sluice/usage", ADMIN_COOKIE, options=AuthOptions())
    assert (status, seen["client_key"]) == (200, None)
