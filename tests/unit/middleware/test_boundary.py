import json
import logging

import pytest

from middleware.boundary import ErrorMiddleware
from middleware.call import Call
from middleware.errors import ModelNotFound, RateLimited, Unauthorized, UpstreamTimeout

from .test_auth import Recorder, http_scope, no_body


@pytest.mark.anyio
async def test_every_response_carries_request_id_and_cache_status():
    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"b")]})
        await send({"type": "http.response.body", "body": b"ok"})

    sent = Recorder()
    await ErrorMiddleware(inner)(http_scope("/x", (b"x-request-id", b"rid-1")), no_body, sent)
    headers = dict(sent.messages[0]["headers"])
    assert headers[b"x-request-id"] == b"rid-1"
    assert headers[b"x-sluice-cache"] == b"BYPASS"
    assert headers[b"a"] == b"b"


@pytest.mark.anyio
async def test_sluice_error_before_start_becomes_its_status_and_shape():
    async def inner(scope, receive, send):
        raise UpstreamTimeout("cerebras/x did not answer in time")

    sent = Recorder()
    await ErrorMiddleware(inner)(http_scope(), no_body, sent)
    assert sent.status == 504
    assert sent.json == {
        "error": {
            "message": "cerebras/x did not answer in time",
            "type": "timeout_error",
            "code": "upstream_timeout",
            "param": None,
        }
    }


@pytest.mark.anyio
async def test_unexpected_exception_is_a_bare_500_and_the_log_is_scrubbed(caplog):
    async def inner(scope, receive, send):
        raise RuntimeError("boom with sk-secret-canary inside")

    sent = Recorder()
    app = ErrorMiddleware(inner, scrub=lambda text: text.replace("sk-secret-canary", "[redacted]"))
    with caplog.at_level(logging.ERROR, logger="sluice"):
        await app(http_scope(), no_body, sent)
    assert sent.status == 500
    body = json.dumps(sent.json)
    assert "boom" not in body
    assert "Traceback" not in body
    assert "sk-secret-canary" not in caplog.text
    assert "[redacted]" in caplog.text


@pytest.mark.anyio
async def test_malformed_request_id_is_a_400_with_a_fresh_id():
    called = []

    async def inner(scope, receive, send):
        called.append(1)

    sent = Recorder()
    await ErrorMiddleware(inner)(http_scope("/x", (b"x-request-id", b"x" * 500)), no_body, sent)
    assert sent.status == 400
    assert called == []
    assert len(dict(sent.messages[0]["headers"])[b"x-request-id"]) == 32


@pytest.mark.anyio
async def test_error_after_start_is_reraised_so_the_server_drops_the_connection():
    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise UpstreamTimeout("late")

    with pytest.raises(UpstreamTimeout):
        await ErrorMiddleware(inner)(http_scope(), no_body, Recorder())


def test_call_of_creates_once_per_scope():
    scope = {}
    assert Call.of(scope) is Call.of(scope)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (UpstreamTimeout("slow"), 504, "timeout_error"),
        (RateLimited("all busy"), 429, "rate_limit_error"),
        (Unauthorized("no key"), 401, "authentication_error"),
        (ModelNotFound("no such model"), 404, "not_found_error"),
    ],
)
async def test_on_the_messages_api_errors_are_in_anthropics_shape(error, status, kind):
    async def inner(scope, receive, send):
        raise error

    sent = Recorder()
    await ErrorMiddleware(inner)(http_scope("/v1/messages"), no_body, sent)
    assert sent.status == status
    assert sent.json == {"type": "error", "error": {"type": kind, "message": error.message}}
