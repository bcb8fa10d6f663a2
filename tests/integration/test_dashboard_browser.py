"""GET /dashboard in a real browser: headless Debian chromium driven by Playwright, against a live gateway.

The gateway runs under uvicorn with [auth] on and the fake provider behind
it; the openai SDK makes a scripted set of calls (priced answers, a stream,
a cache hit, a fallback, an upstream error, an A/B route); then the page must
show what the JSON views say, open a call's attempts, never show a key or a
prompt, fit a phone's width, and refuse whoever has no admin key.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.integration.conftest import Live, wait_until

CHROMIUM = "/usr/bin/chromium"
ADMIN_KEY = "gk-admin-secret-dashboard"
TEAM_A_KEY = "gk-team-a-secret"
TEAM_B_KEY = "gk-team-b-secret"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
PROMPT = "a prompt the dashboard must never show 7c1f"
CONFIG = f"""
[auth]
admin_key = "{ADMIN_KEY}"
keys = [{{ id = "team-a", key = "{TEAM_A_KEY}" }}, {{ id = "team-b", key = "{TEAM_B_KEY}" }}]

[routes.backup]
targets = ["fake/503", "fake/second"]

[routes.trial]
strategy = "ab"
targets = ["fake/echo", "fake/second"]

[prices."fake/echo"]
input = 1.5
output = 2.0

[prices."fake/second"]
input = 0.5
output = 1.0
"""
LAPTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
CALLS_MADE = 11


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


def make_calls(url: str) -> None:
    """The scripted traffic: 11 calls, 8 priced answers, a cache hit, a fallback, an upstream 400."""
    messages = [{"role": "user", "content": PROMPT}]
    team_a = openai.OpenAI(base_url=url + "/v1", api_key=TEAM_A_KEY, max_retries=0)
    team_b = openai.OpenAI(base_url=url + "/v1", api_key=TEAM_B_KEY, max_retries=0)
    with team_a, team_b:
        for _ in range(2):
            team_a.chat.completions.create(model="fake/echo", messages=messages)
        for _ in range(2):  # a miss that is stored, then a hit
            team_b.chat.completions.create(model="fake/echo", messages=messages, extra_headers={"x-sluice-cache": "on"})
        for chunk in team_a.chat.completions.create(model="fake/echo", messages=messages, stream=True):
            assert chunk is not None
        fallback = team_a.chat.completions.with_raw_response.create(model="backup", messages=messages)
        assert fallback.headers["x-sluice-attempts"] == "2"
        with pytest.raises(openai.BadRequestError):
            team_b.chat.completions.create(model="fake/400", messages=messages)
        for subject in ("ann", "bob", "cy", "dee"):
            team_b.chat.completions.create(model="trial", messages=messages, user=subject)


def view(url: str, path: str, **params: str) -> dict:
    response = httpx.get(url + path, params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def gateway(gateway_factory, tmp_path: Path) -> Live:
    """A gateway that keeps prompt text (so the page is shown to leave it out) and has seen the calls."""
    live = gateway_factory(CONFIG + f'\n[ledger]\npath = "{tmp_path}/dashboard.db"\nstore_text = true\n')
    make_calls(live.url)
    assert wait_until(lambda: len(view(live.url, "/sluice/calls")["data"]) == CALLS_MADE, timeout=5)
    return live


def log_in(page: Page, url: str, key: str) -> None:
    page.goto(url + "/dashboard/login")
    page.fill("#key", key)
    page.click("button[type=submit]")


def value(page: Page, testid: str) -> str | None:
    return page.get_by_test_id(testid).get_attribute("data-value")


def test_the_page_shows_what_the_views_say_and_a_calls_attempts(gateway, browser):
    url = gateway.url
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: _note_console(problems, message))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    log_in(page, url, ADMIN_KEY)
    page.wait_for_url(url + "/dashboard")
    expect(page.get_by_test_id("status")).to_contain_text("updated")

    usage = view(url, "/sluice/usage", since="24h")
    totals = usage["totals"]
    assert value(page, "total-calls") == str(totals["calls"]) == str(CALLS_MADE)
    assert value(page, "total-spend") == totals["cost_usd"]
    assert Decimal(totals["cost_usd"]) > 0
    assert value(page, "total-errors") == str(totals["errors"]) == "1"
    assert value(page, "cache-hits") == str(totals["cache_hits"]) == "1"
    assert value(page, "saved") == totals["saved_usd"]
    for row in view(url, "/sluice/usage", since="24h", by="key")["rows"]:
        key_row = page.locator(f'[data-testid="key-row"][data-key="{row["group"]["key"]}"]')
        assert key_row.get_by_test_id("key-cost").get_attribute("data-value") == row["cost_usd"]
    records = view(url, "/sluice/calls")["data"]
    assert value(page, "fallbacks") == str(sum(r["attempts"] > 1 for r in records)) == "1"
    assert page.get_by_test_id("call-row").count() == CALLS_MADE
    assert page.get_by_test_id("variant-row").count() == 2
    assert page.locator("#chart svg rect").count() >= 1

    [fallback] = [r for r in records if r["attempts"] > 1]
    page.locator(f'[data-testid="call-row"][data-request-id="{fallback["request_id"]}"]').click()
    detail = page.get_by_test_id("call-detail")
    expect(detail).to_be_visible()
    tries = detail.get_by_test_id("try-row")
    expect(tries).to_have_count(2)
    assert detail.get_by_test_id("try-status").all_text_contents() == ["503", "200"]
    billed = ["yes" if t["possibly_billed"] else "no" for t in fallback["tries"]]
    assert detail.get_by_test_id("try-billed").all_text_contents() == billed
    page.click("#call-detail-close")

    page.click("[data-window='1h']")  # every call was made this minute: the same totals
    expect(page.get_by_test_id("status")).to_contain_text("updated")
    expect(page.get_by_test_id("total-calls")).to_have_attribute("data-value", str(CALLS_MADE))

    html = page.content()
    assert PROMPT not in html
    for key in (ADMIN_KEY, TEAM_A_KEY, TEAM_B_KEY):
        assert key not in html

    page.set_viewport_size(PHONE)
    page.reload()
    expect(page.get_by_test_id("status")).to_contain_text("updated")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    assert problems == []
    page.click("text=Log out")
    page.wait_for_url(url + "/dashboard/login")
    assert page.goto(url + "/dashboard").status == 401
    context.close()


def _note_console(problems: list[str], message: ConsoleMessage) -> None:
    if message.type in ("error", "warning"):
        problems.append(f"console {message.type}: {message.text} at {message.location}")


def test_a_visit_without_the_admin_key_is_refused_and_shows_no_data(gateway, browser):
    url = gateway.url
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    response = page.goto(url + "/dashboard")
    assert response is not None
    assert response.status == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert page.get_by_test_id("total-calls").count() == 0

    log_in(page, url, TEAM_A_KEY)  # a tenant key is not the admin key: no cookie is set
    expect(page.locator(".error")).to_be_visible()
    assert context.cookies() == []
    assert page.goto(url + "/dashboard").status == 401

    # Nor does a tenant key get in by any other way the page or its views accept.
    tenant = {"authorization": f"Bearer {TEAM_A_KEY}"}
    assert httpx.get(url + "/dashboard", headers=tenant).status_code == 403
    assert httpx.get(url + "/sluice/usage", headers={"cookie": f"sluice_admin={TEAM_A_KEY}"}).status_code == 401
    assert httpx.get(url + "/sluice/calls").status_code == 401

    # A session that ends while the page is open: the next refresh clears the page.
    log_in(page, url, ADMIN_KEY)
    expect(page.get_by_test_id("total-calls")).to_have_attribute("data-value", str(CALLS_MADE))
    context.clear_cookies()
    page.click("[data-window='7d']")
    expect(page.locator("#signed-out")).to_be_visible()
    assert page.get_by_test_id("total-calls").count() == 0
    assert page.get_by_test_id("call-row").count() == 0
    context.close()


def test_the_cookie_is_httponly_strict_and_the_page_locked_down(gateway, browser):
    url = gateway.url
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    log_in(page, url, ADMIN_KEY)
    page.wait_for_url(url + "/dashboard")
    [cookie] = context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
        "sluice_admin",
        True,
        "Strict",
        "/",
    )
    assert page.evaluate("document.cookie") == ""
    # The admin cookie opens admin paths only: a /v1/ call with it alone is refused.
    cookies = {"cookie": f"sluice_admin={cookie['value']}"}
    assert httpx.get(url + "/v1/models", headers=cookies).status_code == 401
    response = httpx.get(url + "/dashboard", headers=cookies)
    assert response.status_code == 200
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    assert response.headers["x-content-type-options"] == "nosniff"
    # The CSP refuses any script the page did not ship as a file, e.g. one injected into the markup.
    page.evaluate("() => document.body.append(Object.assign(document.createElement('script'), {text: 'window.x = 1'}))")
    assert page.evaluate("window.x") is None
    context.close()


def test_without_auth_the_page_is_open_like_the_views(gateway_factory):
    live = gateway_factory()
    assert httpx.get(live.url + "/dashboard").status_code == 200
    login = httpx.get(live.url + "/dashboard/login")
    assert (login.status_code, login.headers["location"]) == (303, "/dashboard")
