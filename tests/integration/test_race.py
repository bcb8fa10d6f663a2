"""Racing and hedging (SPEC §8, RELIABILITY scenario 19), seen from two fake providers' request logs."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from proxy.demo import FakeProvider
from tests.integration.conftest import CANARY_KEY, wait_until
from tests.servers import serve

MESSAGES = [{"role": "user", "content": "Hello"}]
CHAT = "/v1/chat/completions"
OTHER_KEY = "sk-other-provider-key-1234"


@pytest.fixture
def other():
    fake = FakeProvider()
    with serve(fake) as url:
        yield fake, url


def config(other_url: str, *targets: str, hedge: str = "", strategy: str = "race", other_key: str = OTHER_KEY) -> str:
    key = f'api_key = "{other_key}"' if other_key else ""
    lines = [
        f'[providers.other]\nbase_url = "{other_url}/v1"\nmodels = ["echo"]\n{key}\n',
        f'[routes.quick]\nstrategy = "{strategy}"\ntargets = [' + ", ".join(f'"{t}"' for t in targets) + "]\n",
    ]
    if hedge:
        lines.append(f"hedge_delay_ms = {hedge}\n")
    return "".join(lines)


def chat(live, model="quick", stream=False, headers=None) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    return httpx.post(live.url + CHAT, json=body, headers=headers or {}, timeout=10)


def test_the_first_complete_answer_wins_and_the_loser_is_closed_at_once(gateway_factory, other):
    other_fake, other_url = other
    live = gateway_factory(config(other_url, "fake/slow-ttft-3", "other/echo"))
    started = time.monotonic()
    response = chat(live)
    answered = time.monotonic()
    assert response.status_code == 200
    assert answered - started < 1
    assert response.headers["x-sluice-provider"] == "other"
    assert response.headers["x-sluice-attempts"] == "2"
    assert wait_until(lambda: live.fake.requests and live.fake.requests[0].disconnected_at is not None)
    # The loser's upstream connection closed within 100 ms of the winner's answer.
    assert live.fake.requests[0].disconnected_at - other_fake.requests[0].received_at < 0.1 + 0.05


def test_a_stream_race_is_won_by_the_first_content_chunk(gateway_factory, other):
    _other_fake, other_url = other
    live = gateway_factory(config(other_url, "fake/headers-then-silent", "other/echo"))
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="k", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="quick", messages=MESSAGES, stream=True)
    assert raw.headers["x-sluice-provider"] == "other"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "Hello from the fake provider."
    assert wait_until(lambda: live.fake.requests[0].disconnected_at is not None)


def test_x_sluice_race_races_a_fallback_route(gateway_factory, other):
    other_fake, other_url = other
    live = gateway_factory(config(other_url, "fake/slow-ttft-2", "other/echo", strategy="fallback"))
    response = chat(live, headers={"X-Sluice-Race": "2"})
    assert response.headers["x-sluice-provider"] == "other"
    assert live.fake.count() == 1
    assert other_fake.count() == 1


@pytest.mark.parametrize("value", ["1", "nine", "-2", "99"])
def test_a_bad_x_sluice_race_is_a_400(live, value):
    response = chat(live, model="fake/echo", headers={"X-Sluice-Race": value})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "X-Sluice-Race"
    assert live.fake.count() == 0


def test_with_a_hedge_delay_a_healthy_primary_costs_nothing_extra(gateway_factory, other):
    other_fake, other_url = other
    live = gateway_factory(config(other_url, "fake/echo", "other/echo", hedge="300"))
    for _ in range(5):
        response = chat(live)
        assert response.headers["x-sluice-provider"] == "fake"
        assert response.headers["x-sluice-attempts"] == "1"
    assert other_fake.count() == 0


def test_a_slow_primary_is_hedged_after_the_delay(gateway_factory, other):
    other_fake, other_url = other
    live = gateway_factory(config(other_url, "fake/slow-ttft-2", "other/echo", hedge="200"))
    response = chat(live)
    assert response.headers["x-sluice-provider"] == "other"
    gap = other_fake.requests[0].received_at - live.fake.requests[0].received_at
    assert 0.18 <= gap < 0.6


def test_a_failing_primary_starts_the_hedge_at_once(gateway_factory, other):
    _other_fake, other_url = other
    live = gateway_factory(config(other_url, "fake/503", "other/echo", hedge="2000"))
    started = time.monotonic()
    response = chat(live)
    assert response.headers["x-sluice-provider"] == "other"
    assert time.monotonic() - started < 1


def test_when_every_racer_fails_the_rest_of_the_chain_is_tried(gateway_factory, other):
    _other_fake, other_url = other
    live = gateway_factory(
        config(other_url, "fake/503", "other/500", "fake/echo"),
    )
    response = chat(live, headers={"X-Sluice-Race": "2"})
    assert response.status_code == 200
    assert response.headers["x-sluice-model"] == "echo"
    assert response.headers["x-sluice-attempts"] == "3"


def test_every_racer_rate_limited_is_a_429_with_retry_after(gateway_factory, other):
    _, other_url = other
    live = gateway_factory(config(other_url, "fake/429-ra-9", "other/429-ra-4"))
    response = chat(live)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "4"


def test_every_racer_failing_is_a_502(gateway_factory, other):
    _, other_url = other
    live = gateway_factory(config(other_url, "fake/503", "other/500"))
    response = chat(live)
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"


def test_a_winner_failing_mid_stream_ends_with_an_error_event_and_no_switch(gateway_factory, other):
    _other_fake, other_url = other
    live = gateway_factory(config(other_url, "fake/cut-after-2", "other/slow-ttft-1"))
    response = chat(live, stream=True)
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    assert "error" in json.loads(events[-1])
    assert response.headers["x-sluice-provider"] == "fake"


def test_a_pass_through_key_never_reaches_another_providers_racer(gateway_factory, other):
    other_fake, other_url = other
    live = gateway_factory(config(other_url, "fake/echo", "other/echo", other_key=""), provider_key=None)
    client_key = "sk-client-own-key-abcdef123456"
    response = chat(live, headers={"Authorization": f"Bearer {client_key}"})
    assert response.status_code == 200
    assert live.fake.requests[0].headers["authorization"] == f"Bearer {client_key}"
    assert other_fake.count() == 0  # it would have needed the client's key: skipped


def test_a_disconnecting_client_closes_every_racer(gateway_factory, other):
    other_fake, other_url = other
    live = gateway_factory(config(other_url, "fake/silent", "other/silent"))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(live.url + CHAT, json={"model": "quick", "messages": MESSAGES}, timeout=0.5)
    assert wait_until(lambda: live.fake.requests and live.fake.requests[0].disconnected_at is not None)
    assert wait_until(lambda: other_fake.requests and other_fake.requests[0].disconnected_at is not None)


def test_the_gateway_key_in_use_reaches_only_its_provider(gateway_factory, other):
    other_fake, other_url = other
    live = gateway_factory(config(other_url, "fake/slow-ttft-1", "other/echo"))
    chat(live)
    assert live.fake.requests[0].headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert other_fake.requests[0].headers["authorization"] == f"Bearer {OTHER_KEY}"
