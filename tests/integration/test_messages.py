"""`POST /v1/messages` through the official anthropic SDK: native to Anthropic, translated to everyone else."""

from __future__ import annotations

import json
from decimal import Decimal

import anthropic
import httpx
import pytest

from tests.integration.conftest import CANARY_KEY, wait_until

ANTHROPIC_KEY = "sk-ant-provider-key-0000000000"
CONTENT = "Hello from the fake provider."
MESSAGES = [{"role": "user", "content": "Hello there"}]


def anthropic_toml(fake_url: str) -> str:
    return f'[providers.anthropic]\nbase_url = "{fake_url}/v1"\napi_key = "{ANTHROPIC_KEY}"\n'


@pytest.fixture
def gateway(gateway_factory, fake_server):
    _, fake_url = fake_server

    def start(extra: str = ""):
        return gateway_factory(anthropic_toml(fake_url) + extra)

    return start


def client(live, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live.url, api_key=key, max_retries=0)


def post(live, body, headers=None, path="/v1/messages") -> httpx.Response:
    return httpx.post(live.url + path, json=body, headers=headers or {}, timeout=10)


def test_native_anthropic_gets_the_request_as_sent_with_its_own_key(gateway):
    live = gateway()
    message = client(live).messages.create(model="anthropic/claude-haiku-4-5", max_tokens=64, messages=MESSAGES)
    assert message.content[0].text == CONTENT
    assert message.stop_reason == "end_turn"
    [seen] = live.fake.requests
    assert seen.path == "/v1/messages"
    assert seen.json["model"] == "claude-haiku-4-5"
    assert seen.json["messages"] == MESSAGES
    assert seen.headers["x-api-key"] == ANTHROPIC_KEY
    assert "anthropic-version" in seen.headers
    assert "authorization" not in seen.headers


def test_native_stream_through_the_sdk(gateway):
    live = gateway()
    with client(live).messages.stream(model="anthropic/claude-haiku-4-5", max_tokens=64, messages=MESSAGES) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == CONTENT
    assert final.usage.output_tokens > 0


def test_another_provider_is_translated_both_ways(gateway):
    live = gateway()
    raw = client(live).messages.with_raw_response.create(
        model="fake/echo", max_tokens=64, system="Be brief.", stop_sequences=["\n\n"], messages=MESSAGES
    )
    message = raw.parse()
    assert message.content[0].text == CONTENT
    assert message.stop_reason in ("end_turn", "stop_sequence")
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0
    assert raw.headers["x-sluice-provider"] == "fake"
    [seen] = live.fake.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.json["messages"] == [{"role": "system", "content": "Be brief."}, *MESSAGES]
    assert (seen.json["max_tokens"], seen.json["stop"]) == (64, ["\n\n"])
    assert not any(name.startswith("anthropic-") for name in seen.headers)
    assert seen.headers["authorization"] == f"Bearer {CANARY_KEY}"


def test_translated_stream_through_the_sdk(gateway):
    live = gateway()
    with client(live).messages.stream(model="fake/echo", max_tokens=64, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == CONTENT
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    assert live.fake.requests[0].json["stream_options"] == {"include_usage": True}


def test_a_field_that_cannot_be_translated_is_a_400_naming_it(gateway):
    live = gateway()
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(live).messages.create(model="fake/echo", max_tokens=64, messages=MESSAGES, extra_body={"top_k": 5})
    assert "top_k" in str(caught.value)
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert live.fake.count() == 0


def test_gateway_errors_are_in_anthropics_shape_and_x_api_key_is_the_gateway_key(gateway):
    live = gateway('[auth]\nkeys = [{ id = "team-a", key = "gk-team-a" }]\n')
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client(live, key="gk-wrong").messages.create(model="fake/echo", max_tokens=8, messages=MESSAGES)
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": caught.value.body["error"]["message"]},
    }
    message = client(live, key="gk-team-a").messages.create(model="fake/echo", max_tokens=8, messages=MESSAGES)
    assert message.content[0].text == CONTENT
    response = post(live, {"model": "nowhere/x", "max_tokens": 8, "messages": MESSAGES}, {"x-api-key": "gk-team-a"})
    assert response.status_code == 404
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "not_found_error"


def test_an_upstream_error_from_a_translated_provider_is_relayed_in_anthropics_shape(gateway):
    live = gateway()
    response = post(live, {"model": "fake/429-ra-30", "max_tokens": 8, "messages": MESSAGES})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["message"]


def test_one_route_falls_back_across_both_shapes(gateway):
    live = gateway('[routes.mixed]\ntargets = ["anthropic/503", "fake/echo"]\n')
    raw = client(live).messages.with_raw_response.create(model="mixed", max_tokens=8, messages=MESSAGES)
    assert raw.parse().content[0].text == CONTENT
    assert raw.headers["x-sluice-provider"] == "fake"
    assert raw.headers["x-sluice-attempts"] == "2"
    assert [r.path for r in live.fake.requests] == ["/v1/messages", "/v1/chat/completions"]


def test_a_translated_stream_cut_midway_ends_with_an_anthropic_error_event(gateway):
    live = gateway()
    response = post(live, {"model": "fake/cut-after-2", "max_tokens": 8, "messages": MESSAGES, "stream": True})
    events = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start"
    assert events[-1] == "error"
    assert "message_stop" not in events


def test_messages_are_cached_with_their_own_shape(gateway):
    live = gateway()
    on = {"x-sluice-cache": "on"}
    for stream in (False, True):
        body = {"model": "fake/echo", "max_tokens": 8, "messages": MESSAGES, "stream": stream}
        first, second = post(live, body, on), post(live, body, on)
        assert (first.headers["x-sluice-cache"], second.headers["x-sluice-cache"]) == ("MISS", "HIT")
        assert second.content == first.content
    assert live.fake.count() == 2


def test_messages_are_priced_and_in_the_ledger(gateway):
    live = gateway('[prices."fake/echo"]\ninput = 1.0\noutput = 2.0\n')
    response = post(live, {"model": "fake/echo", "max_tokens": 8, "messages": MESSAGES})
    usage = response.json()["usage"]
    expected = (Decimal(usage["input_tokens"]) + 2 * Decimal(usage["output_tokens"])) / 1_000_000
    assert Decimal(response.headers["x-sluice-cost-usd"]) == expected
    assert wait_until(lambda: httpx.get(live.url + "/sluice/calls").json()["data"], timeout=5)
    [row] = httpx.get(live.url + "/sluice/calls").json()["data"]
    assert (row["provider"], row["status"], Decimal(row["cost_usd"])) == ("fake", 200, expected)


def test_count_tokens_is_native_for_anthropic_and_an_estimate_elsewhere(gateway):
    live = gateway()
    body = {"model": "anthropic/claude-haiku-4-5", "messages": MESSAGES}
    native = post(live, body, path="/v1/messages/count_tokens")
    assert native.status_code == 200
    assert native.json()["input_tokens"] > 0
    assert "x-sluice-estimate" not in native.headers
    estimate = post(live, {**body, "model": "fake/echo"}, path="/v1/messages/count_tokens")
    assert estimate.status_code == 200
    assert estimate.headers["x-sluice-estimate"] == "true"
    assert estimate.json()["input_tokens"] > 0
    assert [r.path for r in live.fake.requests] == ["/v1/messages/count_tokens"]


def test_sdk_count_tokens_works_against_the_gateway(gateway):
    live = gateway()
    counted = client(live).messages.count_tokens(model="fake/echo", messages=MESSAGES)
    assert counted.input_tokens > 0


def test_tool_definitions_are_translated(gateway):
    live = gateway()
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {}}}]
    body = {"model": "fake/echo", "max_tokens": 8, "messages": MESSAGES, "tools": tools, "tool_choice": {"type": "any"}}
    assert post(live, body).status_code == 200
    sent = live.fake.requests[0].json
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather", "parameters": tools[0]["input_schema"]},
        }
    ]
    assert sent["tool_choice"] == "required"
    assert json.dumps(sent).count("input_schema") == 0


def test_a_race_across_both_shapes_is_won_by_the_first_answer(gateway):
    live = gateway('[routes.quick]\nstrategy = "race"\ntargets = ["anthropic/slow-ttft-2", "fake/echo"]\n')
    with client(live).messages.with_streaming_response.create(
        model="quick", max_tokens=8, messages=MESSAGES, stream=True
    ) as raw:
        assert raw.headers["x-sluice-provider"] == "fake"
        events = [line[7:] for line in raw.iter_lines() if line.startswith("event: ")]
    assert events[0] == "message_start"
    assert events[-1] == "message_stop"
    assert wait_until(lambda: live.fake.requests[0].disconnected_at is not None)  # the native loser closed
