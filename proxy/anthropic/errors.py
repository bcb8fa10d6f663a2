"""Errors in Anthropic's shape for `/v1/messages` (SPEC §6; issue 7).

Anthropic answers `{"type": "error", "error": {"type": ..., "message": ...}}`; the
`anthropic` SDK picks its exception class from the HTTP status and keeps the body, so
the status is what matters and `error.type` must agree with it. Types per status are
Anthropic's documented ones (platform.claude.com/docs/en/api/errors, and the SDK's
`ErrorType`): 400 invalid_request_error, 401 authentication_error, 402 billing_error,
403 permission_error, 404 not_found_error, 409 conflict_error, 413 request_too_large,
429 rate_limit_error, 500 api_error, 504 timeout_error, 529 overloaded_error.
Anthropic documents no 502 or 503; the gateway answers them (every target failed, a
provider down), so: 502 api_error, and 503 overloaded_error, since OpenAI-compatible
providers use 503 for "overloaded, try later", which is what Anthropic's 529 says.
Any other 4xx is invalid_request_error (Anthropic's own rule), anything else api_error.

Messages are kept as given. `from_openai_error` does not scrub secrets: an upstream
body may echo a key (usually masked); the caller scrubs with `proxy.scrub.Scrubber`.
"""

from __future__ import annotations

import json
from typing import Any

from middleware.errors import anthropic_error_type

__all__ = ["anthropic_error", "error_body", "error_type", "from_openai_error", "sse_error_event", "upstream_message"]

# An upstream body that is not a JSON error (an HTML error page, say) is kept this long at most.
_MAX_RAW_CHARS = 1000


def error_type(status: int) -> str:
    """Anthropic's `error.type` for an HTTP `status` (the table is `middleware.errors.ANTHROPIC_ERROR_TYPES`)."""
    return anthropic_error_type(status)


def error_body(status: int, message: str) -> dict[str, Any]:
    """The Anthropic error object for `status` with `message`."""
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def anthropic_error(status: int, message: str) -> bytes:
    """The JSON body of an Anthropic error response for `status`."""
    # ASCII escapes: an upstream message may hold a lone surrogate, which UTF-8 cannot encode.
    return json.dumps(error_body(status, message), separators=(",", ":")).encode()


def sse_error_event(status: int, message: str) -> bytes:
    """An Anthropic stream `error` event: how a failure after the first byte of a stream is told."""
    return b"event: error\ndata: " + anthropic_error(status, message) + b"\n\n"


def from_openai_error(status: int, body: bytes) -> bytes:
    """An upstream error `body` (OpenAI-shaped, or anything) as an Anthropic error body, message kept."""
    return anthropic_error(status, upstream_message(status, body))


def upstream_message(status: int, body: bytes) -> str:
    """The message of an upstream error body; its text when it has no recognisable one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's depth
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        nested = error.get("message") if isinstance(error, dict) else None  # OpenAI's shape, and Anthropic's
        for found in (nested, error, data.get("message"), data.get("detail")):  # then {"error": "..."}, FastAPI
            if isinstance(found, str) and found.strip():
                return found
    text = body.decode("utf-8", "replace").strip()
    return text[:_MAX_RAW_CHARS] if text else f"the upstream answered HTTP {status} with no message"
