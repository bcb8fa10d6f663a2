"""Whether a recorded answer is whole enough to store (SPEC §7; RELIABILITY #4).

A chat stream is complete only when it ended with `data: [DONE]`, carried no
error event, every choice it mentioned got a `finish_reason`, and — when the
client asked for usage — a usage chunk arrived. `[DONE]` alone is not enough.
An Anthropic Messages stream (`/v1/messages`) is complete when its last event
is `message_stop`, after a `message_delta` with a `stop_reason`, and no
`error` event came.
"""

from __future__ import annotations

import json
from typing import Any


def stream_is_complete(body: bytes, *, usage_expected: bool) -> bool:
    """True for an SSE chat stream that finished cleanly."""
    done = False
    saw_usage = False
    finished: dict[int, bool] = {}
    for data in _data_fields(body):
        if done:
            return False  # anything after [DONE] is not a stream we understand
        if data == "[DONE]":
            done = True
            continue
        try:
            event = json.loads(data)
        except ValueError:
            return False
        if not isinstance(event, dict) or "error" in event:
            return False
        saw_usage = saw_usage or bool(event.get("usage"))
        for choice in event.get("choices") or ():
            if isinstance(choice, dict):
                index = choice.get("index", 0)
                finished[index] = finished.get(index, False) or choice.get("finish_reason") is not None
    return done and bool(finished) and all(finished.values()) and (saw_usage or not usage_expected)


def messages_stream_is_complete(body: bytes) -> bool:
    """True for an Anthropic Messages SSE stream that finished cleanly."""
    types: list[str] = []
    stopped = False
    for data in _data_fields(body):
        try:
            event = json.loads(data)
        except ValueError:
            return False
        if not isinstance(event, dict) or event.get("type") == "error":
            return False
        types.append(str(event.get("type")))
        delta = event.get("delta")
        if event.get("type") == "message_delta" and isinstance(delta, dict) and delta.get("stop_reason"):
            stopped = True
    return bool(types) and types[-1] == "message_stop" and stopped


def _data_fields(body: bytes) -> list[str]:
    """The `data` of each SSE event (multi-line data joined with newlines, comments skipped)."""
    text = body.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    fields = []
    for block in text.split("\n\n"):
        lines = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if lines:
            fields.append("\n".join(lines))
    return fields


def usage_requested(body: dict[str, Any]) -> bool:
    """Whether the client's request asked for a usage chunk in its stream."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
