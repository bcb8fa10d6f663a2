"""What the A/B judge is asked, and how its reply becomes a verdict (SPEC §9, issue 8). Pure functions.

The judge sees the conversation the caller sent, then two answers labelled
A and B, and must reply with one word: `A`, `B` or `TIE` (`JUDGE_SYSTEM` and
`JUDGE_USER` below are the whole prompt). Every pair is asked twice, the
second time with the answers swapped, because LLM judges favour a position
(usually the first); only a preference that survives the swap counts:

    first ask (A = served)   second ask (A = other)   verdict for the served variant
    A                        B                        win
    B                        A                        loss
    anything else (a split, a TIE, one of each)        tie

Long inputs are cut so a judge call stays cheap and inside any model's
context: the conversation to its last `MAX_CONVERSATION_CHARS` characters
(the user's last message matters most), each answer to its first
`MAX_ANSWER_CHARS`; a cut is marked in the text the judge reads.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_CONVERSATION_CHARS = 16_000
MAX_ANSWER_CHARS = 8_000
JUDGE_MAX_TOKENS = 8  # one word is all it may say; a few spare tokens for "TIE."

JUDGE_SYSTEM = """\
You are an impartial judge. Two AI assistants answered the same conversation. \
Decide which answer better serves the user's last message.

Judge, in this order: correctness, helpfulness, relevance, completeness, clarity. \
Following the user's instructions (format, length, language) counts. \
Do not prefer an answer for being longer, for its position (A or B), or for its style alone. \
If both are equally good or equally bad, say TIE.

Reply with exactly one word: A, B or TIE."""

JUDGE_USER = """\
<conversation>
{conversation}
</conversation>

<answer_a>
{a}
</answer_a>

<answer_b>
{b}
</answer_b>

Which answer is better: A, B or TIE?"""

_CHOICE = re.compile(r"\b(TIE|A|B)\b")


def judge_body(model: str, conversation: str, a: str, b: str) -> dict[str, Any]:
    """The Chat Completions request that asks `model` to compare answer `a` with answer `b`."""
    user = JUDGE_USER.format(conversation=conversation, a=_head(a, MAX_ANSWER_CHARS), b=_head(b, MAX_ANSWER_CHARS))
    return {
        "model": model,
        "messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}],
        "temperature": 0,
        "max_tokens": JUDGE_MAX_TOKENS,
    }


def parse_choice(reply: str | None) -> str | None:
    """ "A", "B" or "TIE" from the judge's reply (its first such word, any case); None when it gave none."""
    if not reply:
        return None
    found = _CHOICE.search(reply.upper())
    return found.group(1) if found else None


def verdict(first: str, second: str) -> str:
    """The served variant's outcome ("win", "loss", "tie") from the two asks (see the module docstring)."""
    if (first, second) == ("A", "B"):
        return "win"
    if (first, second) == ("B", "A"):
        return "loss"
    return "tie"


def conversation_text(request: dict[str, Any]) -> str:
    """The conversation of a Chat Completions or Anthropic Messages request, as `role: text` paragraphs.

    Images and documents show as `[image]` / `[document]`: the judge compares
    answers, it need not see the attachments (and they would cost tokens).
    """
    parts: list[str] = []
    system = request.get("system")  # Anthropic's top-level system prompt
    if system:
        parts.append(f"system: {_content(system)}")
    for message in request.get("messages") or ():
        if not isinstance(message, dict):
            continue
        text = _content(message.get("content"))
        for call in message.get("tool_calls") or ():
            function = (call.get("function") or {}) if isinstance(call, dict) else {}
            text += f"\n[tool call] {function.get('name', '?')}({function.get('arguments', '')})"
        parts.append(f"{message.get('role', 'user')}: {text}")
    return _tail("\n\n".join(parts), MAX_CONVERSATION_CHARS)


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    pieces = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            pieces.append(str(part.get("text", "")))
        elif kind in ("image", "image_url", "input_image"):
            pieces.append("[image]")
        elif kind == "document":
            pieces.append("[document]")
        elif kind == "tool_use":
            pieces.append(f"[tool call] {part.get('name', '?')}({json.dumps(part.get('input'), ensure_ascii=False)})")
        elif kind == "tool_result":
            pieces.append(f"[tool result] {_content(part.get('content'))}")
    return "\n".join(pieces)


def _head(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters cut ...]"


def _tail(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} earlier characters cut ...]\n" + text[-limit:]
