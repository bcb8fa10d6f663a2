"""Read a request body once, capped, and replay it to inner layers (DESIGN "How a strategy re-runs the inside")."""

from __future__ import annotations

import json
from typing import Any

from middleware.errors import BodyTooLarge, InvalidRequest
from middleware.types import Message, Receive, Scope


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None when absent (chunked) or unreadable."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the whole body, refusing (413) as soon as it is known to pass `limit`.

    A declared Content-Length over the limit is refused before a byte is read;
    a chunked body is refused at the chunk that crosses it.
    """
    declared = declared_length(scope)
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client went away before the request body was complete")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields the buffered body once, then defers to the real one.

    Deferring (rather than inventing an http.disconnect) is what lets an inner
    layer still hear the client go away.
    """
    sent = False

    async def receive_replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_replayed


def _reject_constant(name: str) -> Any:
    raise InvalidRequest(f"{name} is not valid JSON")


# One decoder for every call: json.loads with a keyword argument builds a new one each time.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a request body as a JSON object, turning every hostile input into a 400.

    json.loads raises RecursionError (not ValueError) on deep nesting, accepts
    NaN/Infinity, and lets lone surrogates through to fail later at encode time;
    each is refused here so no later layer meets them.
    """
    if not body:
        raise InvalidRequest("the request body is empty; a JSON object is required")
    try:
        # As json.loads does for bytes (UTF-8/16/32), but strict: surrogates encoded
        # raw in UTF-8 are refused here, escaped ones by the check below.
        parsed = _DECODER.decode(body.decode(json.detect_encoding(body)))
    except RecursionError:
        raise InvalidRequest("the JSON body is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:
        raise InvalidRequest("the body is not valid JSON text (UTF-8 expected)") from None
    if not isinstance(parsed, dict):
        raise InvalidRequest("the body must be a JSON object")
    if b"\\ud" in body or b"\\uD" in body:
        _refuse_lone_surrogates(parsed)
    return parsed


def _refuse_lone_surrogates(parsed: dict[str, Any]) -> None:
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("the JSON body contains a lone UTF-16 surrogate escape") from None
    except RecursionError:
        raise InvalidRequest("the JSON body is nested too deeply") from None
