"""The gateway's own errors, and how they reach a client (SPEC §6).

Exception tree::

    SluiceError                      status, type, code: what the client is told
    ├── RequestError                 the request is wrong (4xx)
    │   ├── InvalidRequest           400: bad JSON, wrong shape, missing model
    │   ├── BodyTooLarge             413: body over max_body_bytes
    │   ├── Unauthorized             401: bad or missing gateway key
    │   ├── Forbidden                403: a tenant key on an admin path
    │   └── NotFound                 404: unknown model, route or path
    └── UpstreamError                no answer could be had from a provider
        ├── UpstreamTimeout          504: a deadline passed before the answer started
        ├── UpstreamConnectError     502: connection refused, reset, DNS, TLS
        ├── RateLimited              429: every target rate-limited
        │   └── BudgetExceeded       429: the gateway key's budget for the period is spent
        └── TargetUnavailable        502: the target may not be tried (cooling down, no key)

Messages are written for the client and must never hold a provider key: they
name providers, models and paths, nothing else.
"""

from __future__ import annotations

import json

from middleware.types import Headers, Send


class SluiceError(Exception):
    """Base of every error the gateway itself answers with."""

    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or []


class RequestError(SluiceError):
    """The client's request cannot be served as sent."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidRequest(RequestError):
    """400: the body is not a JSON object of the expected shape."""


class BodyTooLarge(RequestError):
    """413: the body is over the configured limit."""

    status = 413
    code = "request_too_large"


class Unauthorized(RequestError):
    """401: no gateway key, or one the gateway does not know."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(RequestError):
    """403: a valid key that may not use this path."""

    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(RequestError):
    """404: an unknown path."""

    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    """404: an unknown model or route."""

    code = "model_not_found"


class UpstreamError(SluiceError):
    """No usable answer came from the provider."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """504: a connect, first-byte, idle or total deadline passed."""

    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class UpstreamConnectError(UpstreamError):
    """502: the provider could not be reached, or broke the connection."""

    code = "upstream_connect_error"


class RateLimited(UpstreamError):
    """429: every target is rate-limited; Retry-After says when the first one may be tried."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class BudgetExceeded(RateLimited):
    """429: the call does not fit in what is left of its gateway key's budget (SPEC §10).

    A RateLimited, so clients and SDKs treat it as one; Retry-After says when the budget resets.
    """

    code = "budget_exceeded"


class TargetUnavailable(UpstreamError):
    """502: the target may not be tried now; a strategy moves to the next one."""

    code = "target_unavailable"


def error_body(error: SluiceError) -> bytes:
    """The OpenAI error shape: {"error": {"message", "type", "code", "param"}}."""
    payload = {"error": {"message": error.message, "type": error.type, "code": error.code, "param": error.param}}
    return json.dumps(payload).encode()


# Anthropic's error type per status (its "Errors" page and the SDK's ErrorType). It documents no
# 502 or 503: 502 is an api_error, and 503 overloaded_error, since OpenAI-compatible providers use
# 503 for "overloaded, try later", as Anthropic does 529. Other 4xx: invalid_request_error.
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """Anthropic's error `type` for an HTTP status."""
    found = ANTHROPIC_ERROR_TYPES.get(status)
    if found is not None:
        return found
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def anthropic_error_body(error: SluiceError) -> bytes:
    """Anthropic's error shape, for /v1/messages: {"type": "error", "error": {"type", "message"}}."""
    payload = {"type": "error", "error": {"type": anthropic_error_type(error.status), "message": error.message}}
    return json.dumps(payload).encode()


def sse_error_event(error: SluiceError) -> bytes:
    """The last event of a stream that failed after its first byte reached the client."""
    return b"data: " + error_body(error) + b"\n\n"


async def send_error(send: Send, error: SluiceError, *, body: bytes | None = None) -> None:
    """Answer with `error` as a complete JSON response (nothing must have been sent before)."""
    payload = error_body(error) if body is None else body
    headers: Headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *error.headers,
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
