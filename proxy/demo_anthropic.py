"""The fake provider's Anthropic Messages API (`POST /v1/messages`), for the demo and the tests.

Answers in Anthropic's own shapes: a `Message` JSON, or the SSE event sequence
(`message_start`, `content_block_*`, `message_delta`, `message_stop`), with
usage in `message_start` (input) and `message_delta` (output) as Anthropic sends it.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.anthropic.errors import anthropic_error
from proxy.demo_script import Step, _split, _usage

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload})}\n\n".encode()


def message_json(req: dict[str, Any], step: Step, n: int) -> dict[str, Any]:
    """The 200 `Message` for a non-streamed request."""
    usage = _usage({"messages": req.get("messages", [])}, step.content)
    return {
        "id": f"msg_{n:024d}",
        "type": "message",
        "role": "assistant",
        "model": req.get("model", ""),
        "content": [{"type": "text", "text": step.content}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]},
    }


def message_events(req: dict[str, Any], step: Step, n: int) -> tuple[list[bytes], int]:
    """The SSE events of a streamed answer, and how many come before the first content delta."""
    usage = _usage({"messages": req.get("messages", [])}, step.content)
    message = message_json(req, step, n) | {"content": [], "stop_reason": None}
    message["usage"] = {"input_tokens": usage["prompt_tokens"], "output_tokens": 1}
    head = [
        _event("message_start", {"message": message}),
        _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        _event("ping", {}),
    ]
    deltas = [
        _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})
        for piece in _split(step.content, step.chunks)
    ]
    tail = [
        _event("content_block_stop", {"index": 0}),
        _event(
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": usage["completion_tokens"]},
            },
        ),
        _event("message_stop", {}),
    ]
    return [*head, *deltas, *tail], len(head)


def count_tokens(req: dict[str, Any]) -> int:
    """What `/v1/messages/count_tokens` answers: the same rough count the answers' usage reports."""
    return _usage({"messages": req.get("messages", [])}, "")["prompt_tokens"]


def error_json(step: Step) -> bytes:
    """An error answer in Anthropic's shape, with the step's status."""
    message = step.error_json().get("error", {}).get("message", "error")
    return anthropic_error(step.status, str(message))
