"""Gateway keys versus pass-through mode, as the openai and anthropic SDKs send them."""

from __future__ import annotations

import httpx
import openai
import pytest

MESSAGES = [{"role": "user", "content": "Hello"}]
AUTH = """
[auth]
admin_key = "gk-admin-secret"
keys = [{ id = "team-a", key = "gk-team-a-secret" }]
"""


def chat(url: str, key: str | None, model: str = "fake/echo") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES}, headers=headers)


def test_gateway_key_is_required_and_never_forwarded(gateway_factory):
    live = gateway_factory(AUTH)
    assert chat(live.url, None).status_code == 401
    assert chat(live.url, "gk-wrong").status_code == 401
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="gk-team-a-secret", max_retries=0)
    client.chat.completions.create(model="fake/echo", messages=MESSAGES)
    sent = live.fake.requests[0].headers
    assert "gk-team-a-secret" not in str(sent)
    assert sent["authorization"].startswith("Bearer sk-canary")
    assert live.fake.count() == 1


def test_gateway_key_in_x_api_key_header_is_accepted(gateway_factory):
    live = gateway_factory(AUTH)
    response = httpx.post(
        live.url + "/v1/chat/completions",
        json={"model": "fake/echo", "messages": MESSAGES},
        headers={"x-api-key": "gk-team-a-secret"},
    )
    assert response.status_code == 200
    assert "x-api-key" not in live.fake.requests[0].headers


def test_health_needs_no_key_but_models_does(gateway_factory):
    live = gateway_factory(AUTH)
    assert httpx.get(live.url + "/healthz").status_code == 200
    assert httpx.get(live.url + "/readyz").status_code == 200
    assert httpx.get(live.url + "/v1/models").status_code == 401


def test_tenant_key_is_refused_on_admin_paths(gateway_factory):
    live = gateway_factory(AUTH)
    response = httpx.get(live.url + "/metrics", headers={"authorization": "Bearer gk-team-a-secret"})
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"


def test_pass_through_key_goes_to_a_provider_with_no_key_of_its_own(gateway_factory):
    live = gateway_factory(provider_key=None)
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="sk-client-own-key", max_retries=0)
    client.chat.completions.create(model="fake/echo", messages=MESSAGES)
    assert live.fake.requests[0].headers["authorization"] == "Bearer sk-client-own-key"


def test_pass_through_key_is_not_sent_when_the_provider_has_a_configured_key(live):
    assert chat(live.url, "sk-client-own-key").status_code == 200
    assert "sk-client-own-key" not in str(live.fake.requests[0].headers)


@pytest.mark.parametrize("key", ["sk-client-own-key", None])
def test_pass_through_mode_without_any_key_still_reaches_the_provider(gateway_factory, key):
    live = gateway_factory(provider_key=None)
    assert chat(live.url, key).status_code == 200
    assert ("authorization" in live.fake.requests[0].headers) is (key is not None)
