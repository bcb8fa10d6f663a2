"""An Anthropic Messages request as a Chat Completions request (SPEC §4; issue 7).

Pure: `to_chat` takes the parsed JSON body of `POST /v1/messages` and returns the body
of a `POST /v1/chat/completions`, or raises `Untranslatable` naming the field (`param`,
e.g. "messages[2].content[0].type") that has no faithful translation; the caller
answers a 400 `invalid_request_error`. A body of the wrong shape (no `max_tokens`, a
number where a string belongs) raises it too: any JSON object translates or gets a
clean 400, never a 500.

Mapping: `model`, `max_tokens`, `temperature`, `top_p` kept; `stop_sequences` -> `stop`;
`stream` kept, with `stream_options.include_usage` so usage reaches `message_delta`;
`metadata.user_id` -> `user`; `system` (and a `system` turn) -> a system message;
`tools` -> functions; `tool_choice` auto/any/tool/none -> "auto"/"required"/{function}/
"none", `disable_parallel_tool_use` -> `parallel_tool_calls: false`. Blocks: text;
image (base64 or URL) -> `image_url`; base64 PDF `document` -> `file` (only where
`Capabilities.documents`); `tool_use` -> `tool_calls`; `tool_result` -> a `tool` message.

Decisions:

- **Nothing is dropped silently.** Any other field, block or source type raises:
  `top_k`, `thinking`, `service_tier`, server tools, citations, images in tool results
  (a tool message carries text only; moving the image to a user turn would change who
  said it).
- **Deliberate drops**, as Chat Completions has no field for them: `cache_control`
  anywhere (prompt-caching hints, which do not change the answer); `thinking` and
  `redacted_thinking` blocks of assistant turns (reasoning cannot be sent back, and
  dropping them lets a conversation begun on Anthropic fall back to another provider).
  A field set to null counts as absent; an empty `system` or `stop_sequences` is omitted.
- **Joining**: the text blocks of a system prompt, an assistant turn or a tool result
  are joined with a blank line; a user turn keeps them as parts, and one text block
  becomes a plain string. An assistant turn's text precedes its tool calls whatever
  the block order: Chat Completions cannot interleave them.
- **Tool results** become `tool` messages placed before the rest of their user turn:
  Chat Completions wants them right after the assistant's `tool_calls`. `is_error:
  true` prefixes the content with `TOOL_ERROR_PREFIX` ("Error: "), the only way left
  to tell the model the tool failed.
- **`max_tokens: 0`** (Anthropic's prompt-cache pre-warm) raises: nothing to generate.
  Values are passed on, not range-checked: the upstream judges them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from proxy.anthropic.request_fields import NO_EQUIVALENT, Fields, Untranslatable, block_type, check, number

__all__ = ["TOOL_ERROR_PREFIX", "Capabilities", "to_chat"]

Json = dict[str, Any]

TOOL_ERROR_PREFIX = "Error: "
_JOIN = "\n\n"
_DROPPED_BLOCKS = ("thinking", "redacted_thinking")
_TOP_LEVEL = ("model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "stream")
_TOP_LEVEL_REST = ("metadata", "tools", "tool_choice")
_DIRECT_CALLER = {"type": "direct"}
_CHOICES = {"auto": "auto", "any": "required", "none": "none", "tool": "function"}
_DOCUMENT_FILENAME = "document.pdf"


@dataclass(frozen=True)
class Capabilities:
    """What the target model accepts besides text; the caller knows it from the catalog."""

    documents: bool = False
    images: bool = True


def to_chat(body: Json, *, target_supports: Capabilities | None = None) -> Json:
    """The Chat Completions body for the Messages request `body`; raises `Untranslatable`."""
    caps = target_supports or Capabilities()
    top = Fields(body, "", *_TOP_LEVEL, *_TOP_LEVEL_REST)
    max_tokens = top.get("max_tokens", int)
    if isinstance(max_tokens, bool) or max_tokens < 0:
        raise Untranslatable("max_tokens", "must be a positive integer")
    if max_tokens == 0:
        raise Untranslatable("max_tokens", "0 only pre-warms Anthropic's prompt cache; nothing to generate")
    system = _text_of(top.values.get("system", ""), "system", "a system prompt")
    chat: Json = {"model": top.get("model", str), "messages": [{"role": "system", "content": system}] if system else []}
    chat["messages"] += _messages(top.get("messages", list), caps)
    chat["max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        if name in top:
            chat[name] = number(top.values[name], name)
    if stops := top.get("stop_sequences", list, []):
        chat["stop"] = [check(stop, f"stop_sequences[{i}]", str) for i, stop in enumerate(stops)]
    if "stream" in top:
        chat["stream"] = top.get("stream", bool)
        if chat["stream"]:
            chat["stream_options"] = {"include_usage": True}
    if "metadata" in top and "user_id" in (metadata := Fields(top.values["metadata"], "metadata", "user_id")):
        chat["user"] = metadata.get("user_id", str)
    if "tools" in top:
        chat["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(top.get("tools", list))]
    if "tool_choice" in top:
        chat.update(_tool_choice(top.values["tool_choice"]))
    return chat


def _messages(messages: list[Any], caps: Capabilities) -> list[Json]:
    out: list[Json] = []
    for i, message in enumerate(messages):
        turn = Fields(message, f"messages[{i}]", "role", "content")
        role, content, path = turn.get("role", str), turn.get("content", object), turn.at("content")
        if role == "user":
            out += _user(content, path, caps)
        elif role == "assistant":
            out.append(_assistant(content, path))
        elif role == "system":  # newer Messages API: a system turn inside the conversation
            out.append({"role": "system", "content": _text_of(content, path, "a system turn")})
        else:
            raise Untranslatable(turn.at("role"), "must be 'user' or 'assistant'")
    return out


def _user(content: Any, path: str, caps: Capabilities) -> list[Json]:
    """A user turn: its `tool` messages first (see the module docstring), then the rest, if any."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[Json] = []
    parts: list[Json] = []
    for j, block in enumerate(check(content, path, list)):
        bpath = f"{path}[{j}]"
        kind = block_type(block, bpath)
        if kind == "tool_result":
            results.append(_tool_result(block, bpath))
        elif kind == "text":
            parts.append({"type": "text", "text": _text(block, bpath)})
        elif kind == "image":
            parts.append(_image(block, bpath, caps))
        elif kind == "document":
            parts.append(_document(block, bpath, caps))
        else:
            raise Untranslatable(f"{bpath}.type", f"a {kind!r} block in a user turn has no Chat Completions equivalent")
    if results and not parts:
        return results
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*results, {"role": "user", "content": parts[0]["text"]}]
    return [*results, {"role": "user", "content": parts or ""}]


def _assistant(content: Any, path: str) -> Json:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[Json] = []
    for j, block in enumerate(check(content, path, list)):
        bpath = f"{path}[{j}]"
        kind = block_type(block, bpath)
        if kind == "text":
            texts.append(_text(block, bpath))
        elif kind == "tool_use":
            calls.append(_tool_use(block, bpath))
        elif kind not in _DROPPED_BLOCKS:
            reason = f"a {kind!r} block in an assistant turn has no Chat Completions equivalent"
            raise Untranslatable(f"{bpath}.type", reason)
    # Tool calls and no text: content null, as in OpenAI's own answers, which every provider takes back.
    message: Json = {"role": "assistant", "content": _JOIN.join(texts) if texts else (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return message


def _text_of(content: Any, path: str, what: str) -> str:
    """A string, or the text blocks of a list joined: a system prompt, a system turn, a tool result."""
    if isinstance(content, str):
        return content
    texts = []
    for j, block in enumerate(check(content, path, list)):
        if block_type(block, f"{path}[{j}]") != "text":
            raise Untranslatable(f"{path}[{j}].type", f"{what} can only hold text in Chat Completions")
        texts.append(_text(block, f"{path}[{j}]"))
    return _JOIN.join(texts)


def _text(block: Any, path: str) -> str:
    fields = Fields(block, path, "type", "text", "citations")
    if fields.values.get("citations"):  # an empty list, like null, cites nothing
        raise Untranslatable(fields.at("citations"), NO_EQUIVALENT["citations"])
    return fields.get("text", str)


def _image(block: Any, path: str, caps: Capabilities) -> Json:
    if not caps.images:
        raise Untranslatable(f"{path}.type", "the target model does not accept images")
    source = _source(Fields(block, path, "type", "source"), ("base64", "url"))
    url = source.get("url", str) if source.values["type"] == "url" else _data_url(source)
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: Any, path: str, caps: Capabilities) -> Json:
    if not caps.documents:
        raise Untranslatable(f"{path}.type", "the target model does not accept documents")
    fields = Fields(block, path, "type", "source", "title", "citations")
    citations = Fields(fields.values.get("citations", {}), fields.at("citations"), "enabled")
    if citations.get("enabled", bool, False):
        raise Untranslatable(fields.at("citations"), NO_EQUIVALENT["citations"])
    source = _source(fields, ("base64",))
    if source.values.get("media_type") != "application/pdf":
        raise Untranslatable(source.at("media_type"), "only PDF documents translate")
    filename = fields.get("title", str, _DOCUMENT_FILENAME)
    return {"type": "file", "file": {"filename": filename, "file_data": _data_url(source)}}


def _source(block: Fields, kinds: tuple[str, ...]) -> Fields:
    path = block.at("source")
    kind = block.get("source", dict).get("type")
    if kind not in kinds:
        raise Untranslatable(f"{path}.type", f"only {' and '.join(kinds)} sources translate")
    keys = ("type", "url") if kind == "url" else ("type", "media_type", "data")
    return Fields(block.values["source"], path, *keys)


def _data_url(source: Fields) -> str:
    return f"data:{source.get('media_type', str)};base64,{source.get('data', str)}"


def _tool_use(block: Any, path: str) -> Json:
    fields = Fields(block, path, "type", "id", "name", "input", "caller")
    # Anthropic's own answers may carry caller {"type": "direct"}: the plain client-side call.
    if fields.values.get("caller", _DIRECT_CALLER) != _DIRECT_CALLER:
        raise Untranslatable(fields.at("caller"), "only direct tool calls translate")
    arguments = json.dumps(fields.get("input", dict), ensure_ascii=False)
    return {
        "id": fields.get("id", str),
        "type": "function",
        "function": {"name": fields.get("name", str), "arguments": arguments},
    }


def _tool_result(block: Any, path: str) -> Json:
    fields = Fields(block, path, "type", "tool_use_id", "content", "is_error")
    text = _text_of(fields.values.get("content", ""), fields.at("content"), "a tool result")
    if fields.get("is_error", bool, False):
        text = TOOL_ERROR_PREFIX + text
    return {"role": "tool", "tool_call_id": fields.get("tool_use_id", str), "content": text}


def _tool(tool: Any, path: str) -> Json:
    kind = check(tool, path, dict).get("type")
    if kind is not None and check(kind, f"{path}.type", str) != "custom":
        raise Untranslatable(f"{path}.type", f"server tool {kind!r} runs at Anthropic; Chat Completions has none")
    fields = Fields(tool, path, "type", "name", "description", "input_schema", "strict")
    function: Json = {"name": fields.get("name", str)}
    if "description" in fields:
        function["description"] = fields.get("description", str)
    function["parameters"] = fields.get("input_schema", dict)
    if "strict" in fields:
        function["strict"] = fields.get("strict", bool)
    return {"type": "function", "function": function}


def _tool_choice(value: Any) -> Json:
    """The `tool_choice` (and `parallel_tool_calls`) fields for Anthropic's `tool_choice`."""
    kind = check(value, "tool_choice", dict).get("type")
    if not isinstance(kind, str) or kind not in _CHOICES:
        raise Untranslatable("tool_choice.type", "must be 'auto', 'any', 'tool' or 'none'")
    fields = Fields(value, "tool_choice", "type", "disable_parallel_tool_use", *(["name"] if kind == "tool" else []))
    choice: Any = _CHOICES[kind]
    if kind == "tool":
        choice = {"type": "function", "function": {"name": fields.get("name", str)}}
    out: Json = {"tool_choice": choice}
    # false is the default on both sides; sending it would only trouble providers that reject the field.
    if fields.get("disable_parallel_tool_use", bool, False):
        out["parallel_tool_calls"] = False
    return out
