"""Anthropic-shaped errors for /v1/messages (proxy/anthropic/errors.py; SPEC §6)."""

import json

import anthropic
import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.anthropic.errors import (
    anthropic_error,
    error_body,
    error_type,
    from_openai_error,
    sse_error_event,
    upstream_message,
)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (409, "conflict_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
        (405, "invalid_request_error"),
        (422, "invalid_request_error"),
        (501, "api_error"),
        (599, "api_error"),
        (200, "api_error"),
    ],
)
def test_each_status_has_anthropics_error_type(status, kind):
    assert error_type(status) == kind


def test_an_error_body_has_anthropics_shape():
    assert json.loads(anthropic_error(404, "model 'x' not found")) == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'x' not found"},
    }
    assert error_body(429, "slow down") == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


def test_a_message_with_a_lone_surrogate_still_encodes():
    assert json.loads(anthropic_error(502, "bad \ud800 byte"))["error"]["message"] == "bad \ud800 byte"


def test_an_sse_error_event_is_an_error_event_with_the_body_as_data():
    event = sse_error_event(529, "Overloaded")
    assert event.startswith(b"event: error\ndata: ")
    assert event.endswith(b"\n\n")
    data = event.removeprefix(b"event: error\ndata: ").removesuffix(b"\n\n")
    assert b"\n" not in data  # one data line: an SSE parser must read it whole
    assert json.loads(data) == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"error": {"message": "Invalid value for max_tokens", "type": "invalid_request_error", "param": null}}',
            "Invalid value for max_tokens",
        ),
        (b'{"type": "error", "error": {"type": "api_error", "message": "Internal"}}', "Internal"),
        (b'{"error": "model not loaded"}', "model not loaded"),
        (b'{"message": "quota exceeded"}', "quota exceeded"),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b"<html><body>502 Bad Gateway</body></html>", "<html><body>502 Bad Gateway</body></html>"),
        (b'{"error": {"code": 500}}', '{"error": {"code": 500}}'),
        (b"  upstream timed out \n", "upstream timed out"),
        (b"\xff\xfe oops", "\ufffd\ufffd oops"),
        (b"[" * 100_000, "[" * 1000),
        (b"", "the upstream answered HTTP 503 with no message"),
        (b'{"error": {"message": " "}, "detail": "d"}', "d"),
    ],
)
def test_the_upstream_message_is_kept(body, message):
    assert upstream_message(503, body) == message


def test_an_openai_error_becomes_an_anthropic_error_for_the_same_status():
    body = b'{"error": {"message": "Rate limit reached for gpt-4o-mini", "type": "requests", "code": "rate_limit"}}'
    assert json.loads(from_openai_error(429, body)) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limit reached for gpt-4o-mini"},
    }


@given(st.integers(100, 599), st.binary())
def test_any_upstream_body_converts_to_valid_anthropic_json(status, body):
    error = json.loads(from_openai_error(status, body))
    assert error["type"] == "error"
    assert error["error"]["type"] == error_type(status)
    assert isinstance(error["error"]["message"], str)
    assert error["error"]["message"]


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, anthropic.BadRequestError),
        (401, anthropic.AuthenticationError),
        (403, anthropic.PermissionDeniedError),
        (404, anthropic.NotFoundError),
        (413, anthropic.APIStatusError),
        (429, anthropic.RateLimitError),
        (500, anthropic.InternalServerError),
        (504, anthropic.InternalServerError),
        (529, anthropic.InternalServerError),
    ],
)
def test_the_anthropic_sdk_parses_the_error_and_keeps_its_message(status, exception):
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            status, content=anthropic_error(status, "told by Sluice"), headers={"content-type": "application/json"}
        )

    client = anthropic.Anthropic(
        api_key="k",
        base_url="http://sluice.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    with pytest.raises(exception) as info:
        client.messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
    assert info.value.status_code == status
    assert info.value.body == {"type": "error", "error": {"type": error_type(status), "message": "told by Sluice"}}
    assert "told by Sluice" in str(info.value)
