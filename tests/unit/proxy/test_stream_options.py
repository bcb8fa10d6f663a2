"""`stream_options` only where the provider takes it (SPEC §2, RELIABILITY.md 22): body rewrite, refusal test, fake."""

import json

import httpx
import pytest

from middleware.call import Call, Route, Target
from proxy import stream_options
from proxy.demo import FakeProvider, Script, Step
from proxy.demo_script import directive_step
from proxy.upstream_request import upstream_body

TAKES_IT = Target("cerebras", "llama3.1-8b", "https://api.cerebras.ai/v1")
REFUSES_IT = Target("local", "my-model", "http://127.0.0.1:8000/v1", stream_options=False)
LEARNED = Target("vllm", "qwen", "http://127.0.0.1:9000/v1")


def call_with(target: Target, body: bytes) -> Call:
    call = Call(request_id="rid")
    call.route = Route("r", (target,))
    call.target = target
    call.body = body
    return call


def sent_json(target: Target, body: dict, rejecting=frozenset()) -> dict:
    raw = json.dumps(body).encode()
    return json.loads(upstream_body(call_with(target, raw), target, raw, rejecting))


STREAM = {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "messages": []}


def test_a_provider_configured_false_never_gets_the_field_and_still_gets_its_model():
    assert sent_json(REFUSES_IT, STREAM) == {"model": "my-model", "stream": True, "messages": []}


def test_a_provider_learned_to_refuse_it_does_not_get_it():
    assert sent_json(LEARNED, STREAM, rejecting={"vllm"}) == {"model": "qwen", "stream": True, "messages": []}


def test_a_provider_that_takes_it_gets_it_unchanged():
    assert sent_json(TAKES_IT, STREAM, rejecting={"vllm"})["stream_options"] == {"include_usage": True}


def test_the_field_is_dropped_even_when_the_model_already_matches():
    body = b'{"model": "my-model", "stream": true, "stream_options": {"include_usage": true}}'
    assert upstream_body(call_with(REFUSES_IT, body), REFUSES_IT, body) == b'{"model":"my-model","stream":true}'


@pytest.mark.parametrize(("target", "stream"), [(REFUSES_IT, "true"), (TAKES_IT, "false"), (REFUSES_IT, "false")])
def test_the_clients_bytes_pass_as_they_are_when_nothing_is_added(target, stream):
    body = f'{{ "model" : "{target.model}", "stream": {stream} }}'.encode()
    assert upstream_body(call_with(target, body), target, body) is body


def test_a_stream_whose_client_did_not_ask_for_usage_asks_for_it_where_the_provider_takes_it():
    body = {"model": "m", "stream": True, "stream_options": {"chunk_hint": 1}, "messages": []}
    assert sent_json(TAKES_IT, body)["stream_options"] == {"chunk_hint": 1, "include_usage": True}
    assert stream_options.injected(body, TAKES_IT, set())
    assert not stream_options.injected(STREAM, TAKES_IT, set())  # the client asked itself
    assert not stream_options.injected(body, REFUSES_IT, set())
    assert not stream_options.injected(body, LEARNED, {"vllm"})
    assert not stream_options.injected({"model": "m"}, TAKES_IT, set())


def test_the_clients_bytes_pass_as_they_are_with_the_field_to_a_provider_that_takes_it():
    body = b'{ "model" : "llama3.1-8b", "stream_options": {} }'
    assert upstream_body(call_with(TAKES_IT, body), TAKES_IT, body, {"vllm"}) is body


def test_sent_is_true_only_when_the_body_carries_the_field_to_a_provider_that_takes_it():
    assert stream_options.sent(STREAM, TAKES_IT, set())
    assert not stream_options.sent(STREAM, REFUSES_IT, set())
    assert not stream_options.sent(STREAM, LEARNED, {"vllm"})
    assert stream_options.sent({"model": "m", "stream": True}, TAKES_IT, set())  # the gateway asks for usage
    assert not stream_options.sent({"model": "m", "stream": False}, TAKES_IT, set())


@pytest.mark.parametrize(
    ("status", "body", "refused"),
    [
        (400, b'{"error":{"message":"Unrecognized request argument supplied: stream_options"}}', True),
        (400, b'{"error":{"message":"bad","param":"stream_options"}}', True),
        (400, b'{"error":{"message":"Invalid request."}}', False),
        (422, b'{"detail":[{"loc":["body","stream_options"],"type":"extra_forbidden"}]}', False),
        (500, b"stream_options", False),
    ],
)
def test_only_a_400_naming_the_field_is_a_refusal(status, body, refused):
    assert stream_options.refused(status, body) is refused


def test_directive_refuses_only_a_body_with_the_field():
    step = directive_step("fake/rejects-stream-options", {}, {"stream_options": {"include_usage": True}})
    assert step is not None
    assert step.status == 400
    assert "stream_options" in step.error_json()["error"]["message"]
    assert directive_step("fake/rejects-stream-options", {}, {"stream": True}) is None  # as `echo`
    assert directive_step("rejects-stream-options", {}) is None


@pytest.mark.anyio
async def test_fake_provider_answers_the_directive_over_http():
    fake = FakeProvider(Script(default=Step(content="hi there")))
    transport = httpx.ASGITransport(app=fake)
    async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
        body = {"model": "rejects-stream-options", "messages": [], "stream": True}
        refused = await client.post("/v1/chat/completions", json={**body, "stream_options": {"include_usage": True}})
        streamed = await client.post("/v1/chat/completions", json=body)

    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "stream_options"
    assert streamed.status_code == 200
    assert streamed.headers["content-type"] == "text/event-stream"
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert fake.count() == 2
