"""Fallback chains as a user sees them: the call rolls over to the next target before anything is sent."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from proxy.demo import FakeProvider
from tests.integration.conftest import wait_until
from tests.servers import serve

MESSAGES = [{"role": "user", "content": "Hello"}]
CHAT = "/v1/chat/completions"


def route(*targets: str) -> str:
    return "[routes.chain]\ntargets = [" + ", ".join(f'"{t}"' for t in targets) + "]\n"


def chat(live, model="chain", stream=False, headers=None) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    return httpx.post(live.url + CHAT, json=body, headers=headers or {}, timeout=10)


@pytest.fixture
def other():
    fake = FakeProvider()
    with serve(fake) as url:
        yield fake, url


@pytest.mark.parametrize("failing", ["503", "500", "429-ra-1", "quota-429", "401", "403", "404", "409", "408"])
def test_retriable_failures_move_on_to_the_next_target(gateway_factory, failing):
    live = gateway_factory(route(f"fake/{failing}", "fake/echo"))
    response = chat(live)
    assert response.status_code == 200
    assert response.headers["x-sluice-model"] == "echo"
    assert response.headers["x-sluice-attempts"] == "2"
    assert [r.model for r in live.fake.requests] == [failing, "echo"]


@pytest.mark.parametrize("status", [400, 413, 422])
def test_request_errors_are_returned_after_one_attempt(gateway_factory, status):
    live = gateway_factory(route(f"fake/{status}", "fake/echo"))
    response = chat(live)
    assert response.status_code == status
    assert response.headers["x-sluice-attempts"] == "1"
    assert live.fake.count() == 1


def test_a_slow_first_target_times_out_and_the_next_answers(gateway_factory):
    live = gateway_factory(route("fake/slow-ttft-5", "fake/echo"), timeouts="first_byte_s = 0.3")
    response = chat(live)
    assert response.status_code == 200
    assert response.headers["x-sluice-model"] == "echo"


def test_stream_falls_back_when_the_first_target_sends_headers_then_stalls(gateway_factory):
    live = gateway_factory(route("fake/headers-then-silent", "fake/echo"), timeouts="first_byte_s = 0.3")
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="k", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="chain", messages=MESSAGES, stream=True)
    assert raw.headers["x-sluice-model"] == "echo"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "Hello from the fake provider."
    assert live.fake.requests[0].disconnected_at is not None


def test_a_failure_after_the_first_byte_ends_the_stream_and_does_not_fall_back(gateway_factory):
    live = gateway_factory(route("fake/cut-after-2", "fake/echo"))
    response = chat(live, stream=True)
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    assert "error" in json.loads(events[-1])
    assert live.fake.count() == 1


def test_a_json_answer_cut_halfway_falls_back_since_nothing_reached_the_client(gateway_factory):
    # The provider answers 200 and drops the connection inside the body: the attempt held the
    # body, so the client gets the next target's whole answer, not a 502.
    live = gateway_factory(route("fake/cut-after-1", "fake/echo"))
    response = chat(live)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello from the fake provider."
    assert (response.headers["x-sluice-model"], response.headers["x-sluice-attempts"]) == ("echo", "2")
    assert wait_until(lambda: httpx.get(live.url + "/sluice/calls").json()["data"], timeout=5)
    [row] = httpx.get(live.url + "/sluice/calls").json()["data"]
    cut, served = row["tries"]
    assert (cut["model"], cut["outcome"], cut["possibly_billed"]) == ("cut-after-1", "failed", True)
    assert (served["model"], served["status"], served["outcome"]) == ("echo", 200, "ok")


def test_every_target_failing_is_a_502_naming_the_last(gateway_factory):
    live = gateway_factory(route("fake/503", "fake/500"))
    response = chat(live)
    assert response.status_code == 502
    error = response.json()["error"]
    assert "fake/500 answered 500" in error["message"]
    assert response.headers["x-sluice-attempts"] == "2"


def test_the_502_says_how_many_targets_were_tried_and_how_many_skipped(gateway_factory):
    live = gateway_factory(route("fake/429-ra-60", "fake/500"))
    first = chat(live)
    assert first.status_code == 502
    assert "all 2 targets failed; the last: fake/500 answered 500" in first.json()["error"]["message"]
    second = chat(live)  # the first target now cools down for 60 s: skipped, not tried
    assert second.status_code == 502
    assert "all 2 targets failed (1 tried, 1 skipped)" in second.json()["error"]["message"]
    assert second.headers["x-sluice-attempts"] == "1"


def test_every_target_rate_limited_is_a_429_with_the_shortest_retry_after(gateway_factory):
    live = gateway_factory(route("fake/429-ra-7", "fake/429-ra-3"))
    response = chat(live)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.json()["error"]["code"] == "rate_limited"


def test_all_rate_limited_reads_retry_after_ms_and_rounds_up(gateway_factory):
    live = gateway_factory(route("fake/429-ms-2500", "fake/429-ra-7"))
    response = chat(live)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"


def test_a_single_target_failing_is_relayed_as_the_provider_sent_it(live):
    response = chat(live, model="fake/503")
    assert response.status_code == 503
    assert response.headers["x-sluice-attempts"] == "1"


def test_ad_hoc_fallback_header_appends_targets(live):
    response = chat(live, model="fake/503", headers={"x-sluice-fallback": "fake/429-ra-1, fake/echo"})
    assert response.status_code == 200
    assert [r.model for r in live.fake.requests] == ["503", "429-ra-1", "echo"]


@pytest.mark.parametrize("chain", ["http://169.254.169.254/v1", "nope/x", "fast", "fake/"])
def test_fallback_header_accepts_known_provider_names_only(live, chain):
    response = chat(live, model="fake/echo", headers={"x-sluice-fallback": chain})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "X-Sluice-Fallback"
    assert live.fake.count() == 0


def test_a_pass_through_key_never_falls_back_to_another_provider(gateway_factory, other):
    other_fake, other_url = other
    extra = f'[providers.other]\nbase_url = "{other_url}/v1"\n' + route("fake/503", "other/echo")
    live = gateway_factory(extra, provider_key=None)
    response = chat(live, headers={"authorization": "Bearer sk-client-own"})
    assert response.status_code == 503
    assert other_fake.count() == 0
    assert live.fake.requests[0].headers["authorization"] == "Bearer sk-client-own"


def test_fallback_to_another_provider_uses_that_providers_own_key(gateway_factory, other):
    other_fake, other_url = other
    extra = f'[providers.other]\nbase_url = "{other_url}/v1"\napi_key = "sk-other"\n' + route("fake/503", "other/echo")
    live = gateway_factory(extra)
    response = chat(live, headers={"authorization": "Bearer sk-client-own"})
    assert response.status_code == 200
    assert response.headers["x-sluice-provider"] == "other"
    assert other_fake.requests[0].headers["authorization"] == "Bearer sk-other"
    assert "sk-client-own" not in str(other_fake.requests[0].headers)


def test_a_fallback_answer_is_cached_under_the_request_and_replayed(gateway_factory):
    live = gateway_factory(route("fake/503", "fake/echo"))
    headers = {"x-sluice-cache": "on"}
    first, second = chat(live, headers=headers), chat(live, headers=headers)
    assert (first.headers["x-sluice-cache"], second.headers["x-sluice-cache"]) == ("MISS", "HIT")
    assert second.headers["x-sluice-model"] == "echo"
    assert live.fake.count() == 2
