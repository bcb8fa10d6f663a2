"""The dashboard's admin cookie: read by AuthMiddleware on admin paths only, as the same credential as a bearer."""

import json

import pytest

from middleware.auth import AuthMiddleware, AuthOptions
from middleware.boundary import ErrorMiddleware
from middleware.call import Call
from middleware.headers import admin_cookie

OPTIONS = AuthOptions(keys={"gk-team-a": "team-a"}, admin_key="gk-admin;=%")
ADMIN_COOKIE = (b"cookie", b"theme=dark; sluice_admin=gk-admin%3B%3D%25; other=1")


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
    assert admin_cookie({"headers": [ADMIN_COOKIE]}) == "gk-admin;=%"
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
async def test_a_tenant_key_in_the_cookie_is_still_refused_on_admin_paths():
    status, body, _ = await answer("/dashboard", (b"cookie", b"sluice_admin=gk-team-a"))
    assert (status, body["error"]["type"]) == (403, "permission_error")


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
