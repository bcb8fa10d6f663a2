"""A cheap, documented guess at a request's prompt tokens, for `cheapest` routing, budgets and count_tokens.

No tokenizer is called (it would cost milliseconds and block the event loop): UTF-8 bytes / 4,
plus what a chat template adds per message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Body fields that hold prompt text: chat and Anthropic messages, Anthropic's system,
# Responses' instructions/input, legacy completions' prompt, embeddings' input, tool schemas.
_PROMPT_FIELDS = ("system", "instructions", "messages", "prompt", "input", "tools", "functions")
# Content parts whose tokens depend on the provider and resolution, and whose base64 payload
# would swamp a byte count: ignored.
_MEDIA_TYPES = frozenset(
    ("image_url", "image", "input_image", "input_audio", "audio", "file", "input_file", "document")
)
_BYTES_PER_TOKEN = 4  # about 4 bytes of English text per token in current BPE tokenizers
_PER_MESSAGE = 4  # the role and separators a chat template wraps around each message
_PER_REQUEST = 3  # the assistant-reply priming a chat template appends
_MAX_DEPTH = 32  # request bodies are depth-checked before this; the cap keeps this total


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """A cheap guess at a request's prompt tokens, for ``cheapest`` routing and budgets.

    ceil(UTF-8 bytes of every string in the prompt fields / 4) + 4 per message + 3. Bytes,
    not characters, so non-Latin scripts (2-3 bytes and often one token per character) come
    out higher, the safe side for a budget. Text parts, tool definitions and tool-call
    arguments count; JSON keys do not; images, audio and files are ignored. Never calls a
    tokenizer, never blocks: one pass over the body, linear in its size.
    """
    size = sum(_text_bytes(body.get(field), 0) for field in _PROMPT_FIELDS)
    messages = body.get("messages")
    count = len(messages) if isinstance(messages, list) else 0
    return -(-size // _BYTES_PER_TOKEN) + count * _PER_MESSAGE + _PER_REQUEST


def _text_bytes(value: object, depth: int) -> int:
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if depth >= _MAX_DEPTH:
        return 0
    if isinstance(value, list):
        return sum(_text_bytes(item, depth + 1) for item in value)
    if isinstance(value, dict):
        kind = value.get("type")
        if isinstance(kind, str) and kind in _MEDIA_TYPES:
            return 0
        return sum(_text_bytes(item, depth + 1) for item in value.values())
    return 0
