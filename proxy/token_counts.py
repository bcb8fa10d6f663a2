"""One call's token counts in one convention (``Tokens``), read from an upstream ``usage`` object
in any of the conventions providers use (``read_usage``, which documents them).

``proxy.usage`` finds the ``usage`` object in an answer's bytes; this module says what its
counts mean, so that ``proxy.pricing`` charges every token exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Tokens", "read_usage"]


@dataclass(frozen=True, slots=True)
class Tokens:
    """One call's token counts in one convention, whatever the upstream's.

    ``cached``, ``cache_write`` and ``cache_write_1h`` are parts of ``prompt``; ``reasoning``
    is part of ``completion``; so every token is counted exactly once.
    """

    prompt: int
    completion: int
    cached: int = 0  # read from the provider's prompt cache
    cache_write: int = 0  # written to the prompt cache, 5-minute entries (Anthropic)
    cache_write_1h: int = 0  # written to the prompt cache, 1-hour entries (Anthropic)
    reasoning: int = 0


def read_usage(usage: Mapping[str, Any]) -> Tokens | None:
    """Normalise an upstream ``usage`` object; None when it has no input token count.

    - OpenAI Chat Completions and the OpenAI-compatible providers: ``prompt_tokens``
      includes ``prompt_tokens_details.cached_tokens`` and ``completion_tokens`` includes
      ``completion_tokens_details.reasoning_tokens``, so neither part is added again.
      Exception: xAI reports reasoning tokens BESIDE completion_tokens (its total_tokens is
      prompt + completion + reasoning). That is recognised when total_tokens says so or when
      reasoning > completion, and they are then added once.
    - OpenAI Responses: the same with ``input_tokens`` / ``output_tokens`` and their
      ``*_details``.
    - Anthropic Messages: ``input_tokens`` EXCLUDES cache reads (``cache_read_input_tokens``)
      and cache writes (``cache_creation_input_tokens``, the 1-hour share in
      ``cache_creation.ephemeral_1h_input_tokens``), so those are added to make ``prompt``;
      ``output_tokens`` already includes thinking.

    A missing output count is 0 (embeddings report only prompt tokens). A part larger than
    its whole (an upstream bug) is clamped, so nothing is ever charged a negative amount.
    """
    if "prompt_tokens" in usage:
        return _inclusive(usage, "prompt_tokens", "completion_tokens")
    if "input_tokens" in usage:
        if "input_tokens_details" in usage or "output_tokens_details" in usage:
            return _inclusive(usage, "input_tokens", "output_tokens")
        return _anthropic(usage)
    return None


def _count(data: object, key: str) -> int | None:
    """A token count: a non-negative integer (not a bool) under key, else None."""
    value = data.get(key) if isinstance(data, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _inclusive(usage: Mapping[str, Any], prompt_key: str, completion_key: str) -> Tokens | None:
    # The OpenAI convention: the detail counts are subsets of the two totals.
    prompt = _count(usage, prompt_key)
    if prompt is None:
        return None
    completion = _count(usage, completion_key) or 0
    cached = _count(usage.get(prompt_key + "_details"), "cached_tokens") or 0
    reasoning = _count(usage.get(completion_key + "_details"), "reasoning_tokens") or 0
    if reasoning > completion or (reasoning and _count(usage, "total_tokens") == prompt + completion + reasoning):
        completion += reasoning  # xAI: reasoning reported beside completion_tokens, not inside
    return Tokens(prompt, completion, cached=min(cached, prompt), reasoning=reasoning)


def _anthropic(usage: Mapping[str, Any]) -> Tokens | None:
    fresh = _count(usage, "input_tokens")
    if fresh is None:
        return None
    read = _count(usage, "cache_read_input_tokens") or 0
    written = _count(usage, "cache_creation_input_tokens") or 0
    written_1h = min(_count(usage.get("cache_creation"), "ephemeral_1h_input_tokens") or 0, written)
    return Tokens(
        prompt=fresh + read + written,
        completion=_count(usage, "output_tokens") or 0,
        cached=read,
        cache_write=written - written_1h,
        cache_write_1h=written_1h,
    )
