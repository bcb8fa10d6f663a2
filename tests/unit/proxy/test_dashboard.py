"""proxy.dashboard: the static page, the login that sets the admin cookie, and the headers that lock both down."""

from urllib.parse import quote

import httpx
import pytest

from middleware.auth import valid_session
from middleware.errors import BodyTooLarge
from proxy.dashboard import MAX_FORM_BYTES, dashboard_endpoints

pytestmark = pytest.mark.anyio
ADMIN_KEY = "gk-admin; with=odd%chars"


def client(admin_key: str | None = ADMIN_KEY, base_url: str = "http://gw") -> httpx.AsyncClient:
    table = dashboard_endpoints(admin_key)

    async def app(scope, receive, send):
        await table[scope["method"], scope["path"]](scope, receive, send)

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/dashboard", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
        ("/dashboard/login", "text/html"),
        ("/dashboard/favicon.svg", "image/svg+xml"),
    ],
)
async def test_every_file_is_served_locked_down(path, content_type):
    async with client() as http:
        response = await http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    assert response.headers["content-security-policy"].startswith("default-src 'self';")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"


async def test_the_page_has_no_inline_script_or_style_and_loads_nothing_from_elsewhere():
    async with client() as http:
        html = (await http.get("/dashboard")).text
    assert "<script>" not in html
    assert "style=" not in html
    assert "<style" not in html
    assert "http" not in html.replace('xmlns="http://www.w3.org', "")


async def test_the_admin_key_logs_in_with_an_httponly_strict_session_cookie():
    async with client() as http:
        response = await http.post("/dashboard/login", data={"key": ADMIN_KEY})
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard"
    cookie = response.headers["set-cookie"]
    token = cookie.removeprefix("sluice_admin=").split(";")[0]
    assert valid_session(ADMIN_KEY, token)  # a signed session, not the key
    assert quote(ADMIN_KEY, safe="") not in cookie
    assert ADMIN_KEY not in cookie
    for attribute in ("Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=43200"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain http on loopback: a Secure cookie would never be sent back


async def test_over_https_the_cookie_is_secure():
    async with client(base_url="https://gw") as http:
        response = await http.post("/dashboard/login", data={"key": ADMIN_KEY})
    assert response.headers["set-cookie"].endswith("; Secure")


@pytest.mark.parametrize("key", ["", "gk-wrong", "gk-team-a-secret", ADMIN_KEY + "x"])
async def test_any_other_key_is_refused_and_sets_no_cookie(key):
    async with client() as http:
        response = await http.post("/dashboard/login", data={"key": key})
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert "That is not the admin key." in response.text
    assert "gk-" not in response.text  # what was typed is not echoed back


async def test_a_login_form_over_the_limit_is_refused():
    async with client() as http:
        with pytest.raises(BodyTooLarge):
            await http.post("/dashboard/login", data={"key": "k" * MAX_FORM_BYTES})


async def test_logging_out_forgets_the_cookie():
    async with client() as http:
        response = await http.post("/dashboard/logout")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login"
    assert response.headers["set-cookie"].startswith("sluice_admin=; Path=/; Max-Age=0;")


async def test_without_auth_the_login_form_just_opens_the_page():
    async with client(admin_key=None) as http:
        shown = await http.get("/dashboard/login")
        posted = await http.post("/dashboard/login", data={"key": "anything"})
    assert (shown.status_code, shown.headers["location"]) == (303, "/dashboard")
    assert (posted.status_code, "set-cookie" in posted.headers) == (303, False)
