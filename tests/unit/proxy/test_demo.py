"""The fake provider through httpx.ASGITransport: answer shapes, scripts, directives, recording."""

import json
from typing import Any

import httpx
import pytest

from proxy.demo import FakeProvider, Script, Step

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Say hello to the fake provider, please."}]


def client(fake: FakeProvider) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=fake), base_url="http://fake")


def sse_data(text: str) -> list[str]:
    """The data fields of an SSE body, in order."""
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(event.startswith("data: ") for event in events)
    return [event.removeprefix("data: ") for event in events]


async def chat(fake: FakeProvider, model: str = "echo", **extra: Any) -> httpx.Response:
    async with client(fake) as c:
        return await c.post(CHAT, json={"model": model, "messages": MESSAGES, **extra})


async def test_chat_completion_has_the_openai_shape():
    response = await chat(FakeProvider(), model="gpt-test")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-test"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello from the fake provider."}
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_stream_sends_role_content_finish_then_done():
    fake = FakeProvider(Script(default=Step(chunks=3, content="abcdefghi")))

    response = await chat(fake, stream=True)

    assert response.headers["content-type"] == "text/event-stream"
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "echo" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:4]] == ["abc", "def", "ghi"]
    assert chunks[4]["choices"][0]["finish_reason"] == "stop"
    assert len(chunks) == 5  # no usage chunk unless asked
    assert all("usage" not in c for c in chunks)


@pytest.mark.parametrize("include_usage", [True, False])
async def test_stream_usage_chunk_only_when_asked(include_usage: bool) -> None:
    response = await chat(FakeProvider(), stream=True, stream_options={"include_usage": include_usage})

    chunks = [json.loads(d) for d in sse_data(response.text)[:-1]]
    usage_chunks = [c for c in chunks if c.get("usage")]
    if include_usage:
        assert usage_chunks == [chunks[-1]]
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["total_tokens"] > 0
    else:
        assert usage_chunks == []


async def test_script_steps_are_consumed_in_order_then_default():
    fake = FakeProvider(Script(steps=[Step(status=500), Step(status=429)], default=Step(status=503)))

    statuses = [(await chat(fake)).status_code for _ in range(4)]

    assert statuses == [500, 429, 503, 503]
    assert fake.script.steps == []


async def test_error_bodies_are_openai_shaped():
    fake = FakeProvider(Script(steps=[Step(status=429), Step(status=500)]))

    rate_limited, server_error = await chat(fake), await chat(fake)

    assert rate_limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert server_error.json()["error"]["type"] == "server_error"


async def test_step_headers_are_sent():
    headers = {"retry-after-ms": "150", "set-cookie": "a=b"}
    response = await chat(FakeProvider(Script(steps=[Step(status=429, headers=headers)])))

    assert response.headers["retry-after-ms"] == "150"
    assert response.headers["set-cookie"] == "a=b"


async def test_model_429_ra_sets_retry_after():
    response = await chat(FakeProvider(), model="429-ra-2")

    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"


@pytest.mark.parametrize(
    ("model", "header", "value"),
    [("429-ms-250", "retry-after-ms", "250"), ("429-reset-6m0s", "x-ratelimit-reset-requests", "6m0s")],
)
async def test_model_429_variants_set_their_header(model: str, header: str, value: str) -> None:
    response = await chat(FakeProvider(), model=f"demo/{model}")

    assert response.status_code == 429
    assert response.headers[header] == value


async def test_model_quota_429_says_insufficient_quota():
    response = await chat(FakeProvider(), model="quota-429")

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "insufficient_quota"


async def test_model_status_then_200_fails_k_times_per_model():
    fake = FakeProvider()

    statuses = [(await chat(fake, model="503-then-200:2")).status_code for _ in range(4)]
    other = await chat(fake, model="500-then-200:1")

    assert statuses == [503, 503, 200, 200]
    assert other.status_code == 500
    fake.reset()
    assert (await chat(fake, model="503-then-200:2")).status_code == 503


async def test_queued_step_wins_over_the_model_directive():
    fake = FakeProvider(Script(steps=[Step()]))

    assert (await chat(fake, model="503")).status_code == 200
    assert (await chat(fake, model="503")).status_code == 503


async def test_model_bad_json_sends_invalid_json():
    fake = FakeProvider()

    plain, streamed = await chat(fake, model="bad-json"), await chat(fake, model="bad-json", stream=True)

    assert plain.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        plain.json()
    data = sse_data(streamed.text)
    json.loads(data[0])
    with pytest.raises(json.JSONDecodeError):
        json.loads(data[1])


async def test_model_redirect_points_at_the_metadata_address():
    response = await chat(FakeProvider(), model="redirect")

    assert response.status_code == 307
    assert response.headers["location"].startswith("http://169.254.169.254/")


async def test_requests_are_recorded_with_path_headers_and_body():
    fake = FakeProvider()
    async with client(fake) as c:
        await c.post(CHAT, json={"model": "echo", "messages": MESSAGES}, headers={"Authorization": "Bearer sk-1"})
        await c.post("/v1/embeddings", json={"model": "emb", "input": "x"})

    assert fake.count() == 2
    assert fake.count(CHAT) == 1
    first = fake.requests[0]
    assert (first.path, first.method) == (CHAT, "POST")
    assert first.headers["authorization"] == "Bearer sk-1"
    assert json.loads(first.body) == first.json == {"model": "echo", "messages": MESSAGES}
    assert first.model == "echo"
    assert first.completed
    assert first.disconnected_at is None
    assert first.received_at <= fake.requests[1].received_at


async def test_log_and_reset_endpoints():
    fake = FakeProvider()
    async with client(fake) as c:
        await c.post(CHAT, json={"model": "echo", "messages": MESSAGES})
        await c.post(CHAT, json={"model": "echo", "messages": [{"role": "user", "content": "x" * 5000}]})
        log = (await c.get("/_log")).json()
        reset = await c.post("/_reset")
        after = (await c.get("/_log")).json()

    assert [entry["path"] for entry in log] == [CHAT, CHAT]
    assert log[0]["json"]["model"] == "echo"
    assert log[1]["body"] is None  # bodies over 4 KB are left out
    assert reset.status_code == 200
    assert after == []
    assert fake.count() == 0


async def test_unknown_path_is_an_openai_shaped_404():
    async with client(FakeProvider()) as c:
        response = await c.post("/v1/nope", json={})

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_other_endpoints_answer():
    fake = FakeProvider()
    async with client(fake) as c:
        models = (await c.get("/v1/models")).json()
        completion = (await c.post("/v1/completions", json={"model": "m", "prompt": "hi"})).json()
        embedding = (await c.post("/v1/embeddings", json={"model": "e", "input": ["a", "b"]})).json()
        again = (await c.post("/v1/embeddings", json={"model": "e", "input": ["a", "b"]})).json()
        response = (await c.post("/v1/responses", json={"model": "r", "input": "hi"})).json()

    assert "echo" in [m["id"] for m in models["data"]]
    assert completion["choices"][0]["text"] == "Hello from the fake provider."
    assert [len(d["embedding"]) for d in embedding["data"]] == [8, 8]
    assert embedding["data"] == again["data"]
    assert embedding["data"][0]["embedding"] != embedding["data"][1]["embedding"]
    assert response["output"][0]["content"][0]["text"] == "Hello from the fake provider."


async def test_lifespan_startup_and_shutdown_complete():
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: Any) -> None:
        sent.append(message)

    await FakeProvider()({"type": "lifespan"}, receive, send)

    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
