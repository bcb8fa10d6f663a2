"""A Chat Completions answer as an Anthropic Messages answer (SPEC §4; issue 7).

Pure functions, no I/O. `to_message` translates a whole JSON answer; the helpers it
is built from (`stop_of`, `usage_of`, `message_id_of`, `new_tool_use_id`) are shared
with `proxy.anthropic.stream`, so both paths agree on every field.

Decisions:

- **Text**: the assistant text becomes one `text` block, omitted when empty. A list
  of text parts (some providers) is joined. OpenAI's `refusal` text is the text when
  there is no content, and then makes `stop_reason` "refusal". Reasoning fields
  (`reasoning_content`, `reasoning`) are not translated: an Anthropic `thinking`
  block carries a signature that only Anthropic can produce.
- **Tool calls**: each becomes a `tool_use` block; a missing id gets a generated
  `toolu_...` one. `input` is the parsed `arguments`; arguments that are empty,
  unparseable or not a JSON object give `{}` instead of failing the whole answer,
  because Anthropic types `input` as an object and every SDK tool loop indexes it.
  The tool then reports missing arguments in its `tool_result`, which the model can
  correct. The legacy `function_call` is read the same way.
- **stop_reason**: length -> max_tokens, content_filter -> refusal, tool calls
  present (whatever the finish_reason, some providers say "stop") -> tool_use,
  everything else -> end_turn or stop_sequence, see `stop_of`.
- **usage**: Anthropic's `input_tokens` excludes cache reads and writes, OpenAI's
  `prompt_tokens` includes them, so they are subtracted (see `usage_of`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

_FINISH_TO_STOP = {"length": "max_tokens", "content_filter": "refusal"}
_CHAT_ID_PREFIX = "chatcmpl-"


def to_message(
    chat: Mapping[str, Any],
    *,
    model: str,
    message_id: str | None = None,
    stop_sequences: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The Anthropic `Message` for the Chat Completions answer `chat`.

    `model` is the name the client asked for; `message_id` overrides the id derived
    from the chat id; `stop_sequences` are the request's, for `stop_of`'s heuristic.
    Only the first choice is read: the Messages API has no `n`.
    """
    choices = chat.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
    message = choice.get("message")
    message = message if isinstance(message, Mapping) else {}
    text, refused = _text_of(message)
    tools = [_tool_use_block(call) for call in _tool_calls_of(message)]
    content: list[dict[str, Any]] = [{"type": "text", "text": text}, *tools] if text else tools
    finish = "content_filter" if refused else choice.get("finish_reason")
    stop_reason, stop_sequence = stop_of(
        finish,
        tool_use=bool(tools),
        text=text,
        stop_sequences=stop_sequences,
        choice=choice,
    )
    usage = chat.get("usage")
    return {
        "id": message_id or message_id_of(chat.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage_of(usage if isinstance(usage, Mapping) else {}),
    }


def stop_of(
    finish_reason: object,
    *,
    tool_use: bool,
    text: str,
    stop_sequences: Sequence[str] | None,
    choice: Mapping[str, Any],
) -> tuple[str, str | None]:
    """Anthropic's `(stop_reason, stop_sequence)` for an OpenAI `finish_reason`.

    OpenAI says only "stop", both for a natural end and for a matched stop sequence,
    and removes the matched sequence from the text. So, for "stop" when the request
    had `stop_sequences`, best effort, in this order:

    1. The provider said which one: vLLM and SGLang put the matched string in
       `choice["stop_reason"]` (and null or a token id for a natural end).
    2. The provider kept the sequence: `text` ends with it. Generation halts at the
       first match, so text ending with a sequence can only mean it matched.
    3. Only one sequence was asked for: it is assumed to have matched, because
       callers use stop sequences as terminators the model is prompted to write
       (`</answer>`), and they branch on `stop_reason == "stop_sequence"`.
    4. Several, with no evidence: "end_turn", because naming the wrong one is worse
       than not naming one.

    `text` may be only the tail of the answer, as long as the longest sequence.
    """
    if finish_reason in _FINISH_TO_STOP:
        return _FINISH_TO_STOP[str(finish_reason)], None
    if tool_use:
        return "tool_use", None
    candidates = [s for s in stop_sequences or () if isinstance(s, str) and s]
    if finish_reason != "stop" or not candidates:
        return "end_turn", None
    if "stop_reason" in choice:
        reported = choice["stop_reason"]
        return ("stop_sequence", reported) if reported in candidates else ("end_turn", None)
    for sequence in sorted(candidates, key=len, reverse=True):
        if text.endswith(sequence):
            return "stop_sequence", sequence
    return ("stop_sequence", candidates[0]) if len(candidates) == 1 else ("end_turn", None)


def usage_of(usage: Mapping[str, Any]) -> dict[str, int]:
    """Anthropic `usage` for an OpenAI `usage` object (missing counts are 0).

    `cache_read_input_tokens` comes from `prompt_tokens_details.cached_tokens`
    (DeepSeek: `prompt_cache_hit_tokens`), `cache_creation_input_tokens` from
    `prompt_tokens_details.cache_write_tokens` (OpenRouter); each is present only
    when the provider reported it, and both are taken out of `input_tokens`.
    """
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, Mapping) else {}
    prompt = _count(usage.get("prompt_tokens")) or 0
    read = _count(details.get("cached_tokens"))
    if read is None:
        read = _count(usage.get("prompt_cache_hit_tokens"))
    written = _count(details.get("cache_write_tokens"))
    result = {
        # Clamped: a part larger than its whole is an upstream bug, never a negative count.
        "input_tokens": max(prompt - (read or 0) - (written or 0), 0),
        "output_tokens": _count(usage.get("completion_tokens")) or 0,
    }
    if read is not None:
        result["cache_read_input_tokens"] = read
    if written is not None:
        result["cache_creation_input_tokens"] = written
    return result


def message_id_of(chat_id: object) -> str:
    """A `msg_...` id: the chat id under Anthropic's prefix, or a new one when there is none."""
    if not isinstance(chat_id, str) or not chat_id:
        return "msg_" + secrets.token_hex(12)
    if chat_id.startswith("msg_"):
        return chat_id  # already Anthropic's (an OpenAI-compatible front of Claude)
    return "msg_" + chat_id.removeprefix(_CHAT_ID_PREFIX)


def new_tool_use_id() -> str:
    """A fresh `toolu_...` id, for a tool call the provider gave none."""
    return "toolu_" + secrets.token_hex(12)


def tool_input_of(arguments: object) -> dict[str, Any]:
    """The `input` object for a tool call's `arguments` string; `{}` when it is not a JSON object."""
    if isinstance(arguments, Mapping):
        return dict(arguments)  # a provider that sends the object itself
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):  # RecursionError: arguments nested thousands deep
        return {}
    return value if isinstance(value, dict) else {}


def _text_of(message: Mapping[str, Any]) -> tuple[str, bool]:
    # (text, whether it is a refusal)
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(
            part["text"] for part in content if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    if isinstance(content, str) and content:
        return content, False
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        return refusal, True
    return "", False


def _tool_calls_of(message: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        return [call for call in calls if isinstance(call, Mapping)]
    legacy = message.get("function_call")
    return [{"function": legacy}] if isinstance(legacy, Mapping) else []


def _tool_use_block(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    function = function if isinstance(function, Mapping) else {}
    call_id, name = call.get("id"), function.get("name")
    return {
        "type": "tool_use",
        "id": call_id if isinstance(call_id, str) and call_id else new_tool_use_id(),
        "name": name if isinstance(name, str) else "",
        "input": tool_input_of(function.get("arguments")),
    }


def _count(value: object) -> int | None:
    # A token count: a non-negative integer, not a bool (as proxy.token_counts reads them).
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
