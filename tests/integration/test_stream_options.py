"""A provider that rejects `stream_options` (RELIABILITY.md 22), live: real uvicorn, real fake provider."""

from __future__ import annotations

import json

import httpx
import openai

MESSAGES = [{"role": "user", "content": "Hello"}]
REJECTS = "fake/rejects-stream-options"
WITH_USAGE = {"include_usage": True}


def stream(live, model: str = REJECTS, **extra) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "stream": True, "stream_options": WITH_USAGE, **extra}
    return httpx.post(live.url + "/v1/chat/completions", json=body, timeout=10)


def sse_chunks(response: httpx.Response) -> list[dict]:
    """The JSON chunks of a whole SSE body; it must end with `[DONE]`."""
    data = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_a_400_naming_stream_options_is_retried_once_without_it(live):
    response = stream(live)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-sluice-attempts"] == "2"
    chunks = sse_chunks(response)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello from the fake provider."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    first, second = live.fake.requests
    assert first.json["stream_options"] == WITH_USAGE
    assert "stream_options" not in second.json
    assert second.json["model"] == "rejects-stream-options"
    assert second.json["messages"] == MESSAGES


def test_the_refusal_is_remembered_for_the_provider(live):
    assert stream(live).headers["x-sluice-attempts"] == "2"
    live.fake.reset()

    response = stream(live)

    assert response.status_code == 200
    assert response.headers["x-sluice-attempts"] == "1"
    sse_chunks(response)
    (only,) = live.fake.requests
    assert "stream_options" not in only.json


def test_a_provider_configured_without_stream_options_never_gets_it(gateway_factory, fake_server):
    _, fake_url = fake_server
    live = gateway_factory(
        f"""
        [providers.local]
        base_url = "{fake_url}/v1"
        models = ["my-model"]
        api_key = "sk-local"
        stream_options = false
        """
    )

    response = stream(live, model="local/my-model")

    assert response.status_code == 200
    assert response.headers["x-sluice-attempts"] == "1"
    sse_chunks(response)
    (only,) = live.fake.requests
    assert only.model == "my-model"
    assert "stream_options" not in only.json


def test_a_400_that_does_not_name_stream_options_is_relayed_as_sent(live):
    response = stream(live, model="fake/400")

    assert response.status_code == 400
    assert response.headers["x-sluice-attempts"] == "1"
    assert response.json()["error"]["message"] == "Invalid request."
    (only,) = live.fake.requests
    assert only.json["stream_options"] == WITH_USAGE


def test_a_body_without_stream_options_is_not_retried(live):
    body = {"model": REJECTS, "messages": MESSAGES}
    response = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=10)

    assert response.status_code == 200
    assert response.headers["x-sluice-attempts"] == "1"
    assert live.fake.count() == 1


def test_the_openai_sdk_streams_through_the_retry(live):
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="k", max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model=REJECTS, messages=MESSAGES, stream=True, stream_options=WITH_USAGE
    ) as raw:
        attempts = raw.headers["x-sluice-attempts"]
        chunks = list(raw.parse())

    assert attempts == "2"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake provider."
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [("stream_options" in r.json) for r in live.fake.requests] == [True, False]
