"""The gateway as a user sees it: the official openai SDK through real uvicorn to a live fake provider."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from proxy.demo import Step

from .conftest import CANARY_KEY

MESSAGES = [{"role": "user", "content": "Hello"}]


def sdk(live, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=live.url + "/v1", api_key=kwargs.pop("api_key", "client-key"), max_retries=0, **kwargs
    )


def test_non_stream_completion_through_the_sdk(live):
    raw = sdk(live).chat.completions.with_raw_response.create(model="fake/echo", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake provider."
    assert completion.usage.total_tokens > 0
    assert raw.headers["x-sluice-provider"] == "fake"
    assert raw.headers["x-sluice-model"] == "echo"
    assert raw.headers["x-sluice-attempts"] == "1"
    assert raw.headers["x-sluice-cache"] == "BYPASS"
    assert len(raw.headers["x-request-id"]) == 32
    assert live.fake.count() == 1


def test_stream_through_the_sdk_arrives_whole(live):
    stream = sdk(live).chat.completions.create(model="fake/echo", messages=MESSAGES, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake provider."
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_upstream_gets_provider_model_id_provider_key_and_request_id_only(live):
    response = httpx.post(
        live.url + "/v1/chat/completions",
        json={"model": "fake/echo", "messages": MESSAGES, "api_base": "http://169.254.169.254/"},
        headers={
            "authorization": "Bearer client-gateway-key",
            "x-request-id": "req-42",
            "x-forwarded-host": "evil.example",
            "x-forwarded-for": "10.0.0.1",
            "cookie": "session=1",
            "x-sluice-cache": "off",
            "user-agent": "my-app/1.0",
        },
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-42"
    seen = live.fake.requests[0]
    assert seen.json["model"] == "echo"
    assert seen.headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert seen.headers["x-request-id"] == "req-42"
    assert seen.headers["user-agent"] == "my-app/1.0"
    assert seen.headers["accept-encoding"] == "identity"
    for dropped in ("x-forwarded-host", "x-forwarded-for", "cookie", "x-sluice-cache"):
        assert dropped not in seen.headers
    assert seen.headers["host"] == live.fake_url.removeprefix("http://")


def test_bare_model_id_and_route_alias_resolve_to_the_provider_model(gateway_factory):
    live = gateway_factory(
        """
        [routes.main]
        targets = ["fake/gpt-fake"]
        """
    )
    client = sdk(live)
    client.chat.completions.create(model="gpt-fake", messages=MESSAGES)
    client.chat.completions.create(model="main", messages=MESSAGES)
    assert [r.json["model"] for r in live.fake.requests] == ["gpt-fake", "gpt-fake"]


def test_unknown_model_is_404_naming_what_was_tried(live):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(live).chat.completions.create(model="nope-model", messages=MESSAGES)
    error = caught.value.response.json()["error"]
    assert error["code"] == "model_not_found"
    assert "nope-model" in error["message"]
    assert "route alias" in error["message"]
    assert live.fake.count() == 0


def test_other_v1_paths_are_forwarded(live):
    embedding = sdk(live).embeddings.create(model="fake/echo", input="hi")
    assert len(embedding.data[0].embedding) > 0
    response = httpx.post(live.url + "/v1/responses", json={"model": "fake/echo", "input": "hi"})
    assert response.status_code == 200
    assert [r.path for r in live.fake.requests] == ["/v1/embeddings", "/v1/responses"]


def test_models_lists_routable_names(gateway_factory):
    live = gateway_factory('[routes.main]\ntargets = ["fake/echo"]\n')
    ids = [m.id for m in sdk(live).models.list()]
    assert "main" in ids
    assert "auto" in ids
    assert "fake/echo" in ids
    assert "openai/gpt-4o-mini" in ids


def test_health_and_readiness(live):
    assert httpx.get(live.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(live.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_upstream_request_errors_are_returned_as_sent(live):
    live.fake.script.steps.append(
        Step(status=400, error_body={"error": {"message": "context too long", "code": "context_length_exceeded"}})
    )
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(live).chat.completions.create(model="fake/echo", messages=MESSAGES)
    assert caught.value.response.json()["error"]["code"] == "context_length_exceeded"
    assert caught.value.response.headers["x-sluice-attempts"] == "1"
    assert live.fake.count() == 1


def test_rate_limit_headers_pass_through(live):
    response = httpx.post(live.url + "/v1/chat/completions", json={"model": "fake/429-ra-3", "messages": MESSAGES})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"


def test_upstream_set_cookie_and_hop_by_hop_headers_do_not_reach_the_client(live):
    live.fake.script.steps.append(Step(headers={"set-cookie": "__cf_bm=abc", "x-custom": "kept"}))
    response = httpx.post(live.url + "/v1/chat/completions", json={"model": "fake/echo", "messages": MESSAGES})
    assert "set-cookie" not in response.headers
    assert response.headers["x-custom"] == "kept"
    assert json.loads(response.content)["object"] == "chat.completion"
