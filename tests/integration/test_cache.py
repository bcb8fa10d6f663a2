"""The opt-in cache as a user sees it: one header through the openai SDK, MISS then HIT, nothing wrong stored."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import httpx
import openai
import pytest

from proxy.demo import Step

from .conftest import wait_until

MESSAGES = [{"role": "user", "content": "Hello"}]
CHAT = "/v1/chat/completions"
ON = {"x-sluice-cache": "on"}


def sdk(live, key="client-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key=key, max_retries=0)


def post(live, body=None, headers=ON, key="client-key") -> httpx.Response:
    """As the SDK helper would send it: the same key, so the same pass-through tenant."""
    headers = dict(headers)
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(live.url + CHAT, json=body or {"model": "fake/echo", "messages": MESSAGES}, headers=headers)


def test_miss_then_hit_through_the_sdk(live):
    client = sdk(live)
    first = client.chat.completions.with_raw_response.create(model="fake/echo", messages=MESSAGES, extra_headers=ON)
    second = client.chat.completions.with_raw_response.create(model="fake/echo", messages=MESSAGES, extra_headers=ON)
    assert first.headers["x-sluice-cache"] == "MISS"
    assert second.headers["x-sluice-cache"] == "HIT"
    assert second.headers["age"] == "0"
    assert second.headers["x-sluice-provider"] == "fake"
    assert second.headers["x-sluice-model"] == "echo"
    assert second.headers["x-sluice-attempts"] == "0"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert live.fake.count() == 1


def test_stream_hit_replays_the_same_bytes_as_sse(live):
    body = {"model": "fake/echo", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    first, second = post(live, body), post(live, body)
    assert first.headers["x-sluice-cache"] == "MISS"
    assert second.headers["x-sluice-cache"] == "HIT"
    assert second.headers["content-type"].startswith("text/event-stream")
    assert second.content == first.content
    assert live.fake.count() == 1
    stream = sdk(live).chat.completions.create(
        model="fake/echo", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, extra_headers=ON
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake provider."
    assert chunks[-1].usage.total_tokens > 0
    assert live.fake.count() == 1


def test_cache_is_off_unless_asked_and_no_store_bypasses(live):
    assert post(live, headers={}).headers["x-sluice-cache"] == "BYPASS"
    assert post(live, headers={**ON, "cache-control": "no-store"}).headers["x-sluice-cache"] == "BYPASS"
    assert post(live).headers["x-sluice-cache"] == "MISS"
    assert live.fake.count() == 3


def test_refresh_skips_the_lookup_and_stores(live):
    assert post(live).headers["x-sluice-cache"] == "MISS"
    live.fake.script.default = Step(content="a newer answer")
    refreshed = post(live, headers={"x-sluice-cache": "refresh"})
    assert refreshed.headers["x-sluice-cache"] == "REFRESH"
    hit = post(live)
    assert hit.headers["x-sluice-cache"] == "HIT"
    assert hit.json()["choices"][0]["message"]["content"] == "a newer answer"
    assert live.fake.count() == 2


def test_different_bodies_do_not_share_entries(live):
    post(live)
    other = post(live, {"model": "fake/echo", "messages": MESSAGES, "temperature": 0})
    assert other.headers["x-sluice-cache"] == "MISS"


def test_bad_ttl_is_a_400(live):
    response = post(live, headers={**ON, "x-sluice-cache-ttl": "-1"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "X-Sluice-Cache-TTL"
    assert live.fake.count() == 0


def test_gateway_tenants_never_share_entries(gateway_factory):
    live = gateway_factory('[auth]\nkeys = [{ id = "a", key = "gk-a" }, { id = "b", key = "gk-b" }]\n')
    assert post(live, key="gk-a").headers["x-sluice-cache"] == "MISS"
    assert post(live, key="gk-b").headers["x-sluice-cache"] == "MISS"
    assert post(live, key="gk-a").headers["x-sluice-cache"] == "HIT"
    assert live.fake.count() == 2


def test_pass_through_keys_never_share_entries(gateway_factory):
    live = gateway_factory(provider_key=None)
    assert post(live, key="sk-one").headers["x-sluice-cache"] == "MISS"
    assert post(live, key="sk-two").headers["x-sluice-cache"] == "MISS"
    assert post(live, key="sk-one").headers["x-sluice-cache"] == "HIT"
    assert live.fake.count() == 2


@pytest.mark.parametrize(
    ("step", "stream"),
    [
        (Step(status=500), False),
        (Step(status=400), False),
        (Step(cut_after=2), True),
        (Step(stall_after=2), True),
        (Step(invalid_json=True), True),
    ],
)
def test_failed_answers_are_never_stored(gateway_factory, step, stream):
    live = gateway_factory(timeouts="idle_s = 0.3")
    live.fake.script.steps.append(step)
    body = {"model": "fake/echo", "messages": MESSAGES, "stream": stream}
    with (
        httpx.stream("POST", live.url + CHAT, json=body, headers=ON) as first,
        contextlib.suppress(httpx.RemoteProtocolError),  # a cut body: the gateway drops the connection
    ):
        b"".join(first.iter_bytes())
    assert first.headers["x-sluice-cache"] == "MISS"
    again = post(live, body)
    assert again.headers["x-sluice-cache"] == "MISS"
    assert again.status_code == 200
    assert live.fake.count() == 2


def test_a_rate_limited_answer_is_never_stored(gateway_factory):
    live = gateway_factory("[retry]\nmax_wait_s = 0\n")  # relay the 429 rather than wait it out
    live.fake.script.steps.append(Step(status=429, headers={"retry-after-ms": "200"}))
    body = {"model": "fake/echo", "messages": MESSAGES}
    first = post(live, body)
    assert (first.status_code, first.headers["x-sluice-cache"]) == (429, "MISS")
    time.sleep(0.25)  # the target's cooldown
    again = post(live, body)
    assert (again.status_code, again.headers["x-sluice-cache"]) == (200, "MISS")
    assert live.fake.count() == 2


def test_stream_whose_client_left_is_not_stored(gateway_factory):
    live = gateway_factory()
    live.fake.script.steps.append(Step(chunks=20, chunk_gap_s=0.05))
    body = json.dumps({"model": "fake/echo", "messages": MESSAGES, "stream": True}).encode()
    port = int(live.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"x-sluice-cache: on\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    assert wait_until(lambda: live.fake.requests[0].disconnected_at is not None)
    again = post(live, {"model": "fake/echo", "messages": MESSAGES, "stream": True})
    assert again.headers["x-sluice-cache"] == "MISS"


async def _burst(url: str, n: int, body: dict) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=10) as client:
        return await asyncio.gather(*(client.post(url + CHAT, json=body, headers=ON) for _ in range(n)))


def test_fifty_identical_misses_make_one_upstream_call(live):
    live.fake.script.steps.append(Step(first_byte_delay_s=0.3))
    responses = asyncio.run(_burst(live.url, 50, {"model": "fake/echo", "messages": MESSAGES}))
    assert [r.status_code for r in responses] == [200] * 50
    statuses = sorted(r.headers["x-sluice-cache"] for r in responses)
    assert statuses == ["HIT"] * 49 + ["MISS"]
    assert live.fake.count() == 1


def test_followers_of_a_failed_leader_go_upstream_themselves(live):
    live.fake.script.steps.append(Step(status=500, first_byte_delay_s=0.3))
    responses = asyncio.run(_burst(live.url, 10, {"model": "fake/echo", "messages": MESSAGES}))
    assert sorted(r.status_code for r in responses) == [200] * 9 + [500]
    assert all(r.headers["x-sluice-cache"] == "MISS" for r in responses)
    assert live.fake.count() == 10
