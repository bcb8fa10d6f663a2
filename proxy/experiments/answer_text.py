"""The text of an answer, as a judge reads it: from a JSON body or a recorded SSE stream, in either API's shape.

Chat Completions (`choices[0].message` or its `delta`s) and Anthropic
Messages (`content` blocks or their `content_block_delta`s). A tool call is
rendered as `[tool call] name(arguments)`, so an answer that calls a tool
can still be compared with one that does not. Pure functions, no I/O.
"""

from __future__ import annotations

import json
from typing import Any


def answer_text(body: bytes, *, sse: bool) -> str | None:
    """The assistant's text in `body` (a JSON answer, or a whole SSE stream); None when none is found.

    A stream with an error event in it (it failed after its 200) has no answer: None.
    """
    if sse:
        return _from_events(_events(body))
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return _from_json(data) if isinstance(data, dict) else None


def _from_json(data: dict[str, Any]) -> str | None:
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict):
            parts = [_content(message.get("content"))]
            for call in message.get("tool_calls") or ():
                function = (call.get("function") or {}) if isinstance(call, dict) else {}
                parts.append(_tool(function.get("name"), function.get("arguments")))
            return _joined(parts)
    if data.get("type") == "message" and isinstance(data.get("content"), list):
        parts = []
        for block in data["content"]:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                parts.append(_tool(block.get("name"), json.dumps(block.get("input"), ensure_ascii=False)))
        return _joined(parts)
    return None


def _from_events(events: list[dict[str, Any]]) -> str | None:
    if any("error" in event for event in events):  # a stream that failed after its 200 is no answer
        return None
    text: list[str] = []
    tools: dict[Any, list[str]] = {}  # tool call index -> [name, arguments so far]
    for event in events:
        choices = event.get("choices")
        if isinstance(choices, list):  # Chat Completions chunks
            for choice in choices[:1]:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if not isinstance(delta, dict):
                    continue
                if isinstance(delta.get("content"), str):
                    text.append(delta["content"])
                for call in delta.get("tool_calls") or ():
                    function = call.get("function") or {}
                    slot = tools.setdefault(call.get("index"), ["", ""])
                    slot[0] += function.get("name") or ""
                    slot[1] += function.get("arguments") or ""
        elif event.get("type") == "content_block_start":  # Anthropic Messages events
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                tools[event.get("index")] = [str(block.get("name", "")), ""]
        elif event.get("type") == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                text.append(str(delta.get("text", "")))
            elif delta.get("type") == "input_json_delta" and event.get("index") in tools:
                tools[event.get("index")][1] += str(delta.get("partial_json", ""))
    if not text and not tools:
        return None
    return _joined(["".join(text), *(_tool(name, arguments) for name, arguments in tools.values())])


def _events(body: bytes) -> list[dict[str, Any]]:
    """The JSON objects of an SSE stream's `data:` lines (`[DONE]` and anything unparsable skipped)."""
    found = []
    for line in body.splitlines():
        if not line.startswith(b"data:"):
            continue
        try:
            data = json.loads(line[5:])
        except ValueError:
            continue
        if isinstance(data, dict):
            found.append(data)
    return found


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _tool(name: Any, arguments: Any) -> str:
    return f"[tool call] {name or '?'}({arguments or ''})"


def _joined(parts: list[str]) -> str | None:
    kept = [part for part in parts if part]
    return "\n".join(kept) if kept else None
