"""The built-in provider catalog (SPEC §3), as data: one row per provider, no I/O.

Every base URL is the provider's OpenAI-compatible root, version prefix included and
no trailing slash, so the forwarder appends a client path like ``/chat/completions``.
Config (``proxy/config.py``) merges ``[providers.X]`` overrides over these rows; prices
live in ``proxy/pricing.py``, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["CATALOG", "ProviderSpec"]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider's fixed facts."""

    name: str
    base_url: str  # includes the version prefix, no trailing slash
    key_env: str | None  # the environment variable its SDKs read by default
    auth_style: str  # "bearer" for all OpenAI-compatible endpoints
    models: tuple[str, ...]  # known model ids, in the provider's own spelling
    stream_options: bool  # accepts stream_options.include_usage on streams (SPEC §10)


_ROWS = (
    ProviderSpec(
        name="cerebras",
        base_url="https://api.cerebras.ai/v1",
        key_env="CEREBRAS_API_KEY",
        auth_style="bearer",
        models=("llama3.1-8b", "llama-3.3-70b", "gpt-oss-120b", "qwen-3-32b", "qwen-3-235b-a22b-instruct-2507"),
        stream_options=True,
    ),
    ProviderSpec(
        name="openai",
        base_url="https://api.openai.com/v1",
        key_env="OPENAI_API_KEY",
        auth_style="bearer",
        models=("gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o4-mini", "gpt-5", "gpt-5-mini"),
        stream_options=True,
    ),
    ProviderSpec(
        # The OpenAI SDK compatibility endpoint (Bearer auth); /v1/messages goes to the
        # same host natively. Its docs list stream_options as "fully supported".
        name="anthropic",
        base_url="https://api.anthropic.com/v1",
        key_env="ANTHROPIC_API_KEY",
        auth_style="bearer",
        models=(
            "claude-sonnet-4-5",
            "claude-haiku-4-5",
            "claude-opus-4-1",
            "claude-sonnet-4-0",
            "claude-3-5-haiku-latest",
        ),
        stream_options=True,
    ),
    ProviderSpec(
        name="groq",
        base_url="https://api.groq.com/openai/v1",
        key_env="GROQ_API_KEY",
        auth_style="bearer",
        models=(
            "llama-3.1-8b-instant",
            "llama-3.3-70b-versatile",
            "openai/gpt-oss-120b",
            "openai/gpt-oss-20b",
            "meta-llama/llama-4-scout-17b-16e-instruct",
            "qwen/qwen3-32b",
        ),
        stream_options=True,
    ),
    ProviderSpec(
        name="gemini",
        base_url="https://generativelanguage.googleapis.com/v1beta/openai",
        key_env="GEMINI_API_KEY",
        auth_style="bearer",
        models=("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite", "gemini-2.0-flash"),
        stream_options=True,
    ),
    ProviderSpec(
        name="deepinfra",
        base_url="https://api.deepinfra.com/v1/openai",
        key_env="DEEPINFRA_API_KEY",
        auth_style="bearer",
        models=(
            "meta-llama/Meta-Llama-3.1-8B-Instruct",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "deepseek-ai/DeepSeek-V3",
            "Qwen/Qwen3-235B-A22B",
            "openai/gpt-oss-120b",
        ),
        stream_options=True,
    ),
    ProviderSpec(
        # False: Mistral's request schema forbids extra fields and answers 422
        # "extra_forbidden" at body.stream_options; it already puts usage on the last chunk.
        name="mistral",
        base_url="https://api.mistral.ai/v1",
        key_env="MISTRAL_API_KEY",
        auth_style="bearer",
        models=(
            "mistral-large-latest",
            "mistral-medium-latest",
            "mistral-small-latest",
            "codestral-latest",
            "ministral-8b-latest",
            "open-mistral-nemo",
        ),
        stream_options=False,
    ),
    ProviderSpec(
        name="xai",
        base_url="https://api.x.ai/v1",
        key_env="XAI_API_KEY",
        auth_style="bearer",
        models=("grok-4", "grok-3", "grok-3-mini", "grok-code-fast-1"),
        stream_options=True,
    ),
    ProviderSpec(
        # OpenRouter always sends usage now and documents include_usage as a no-op; it
        # still accepts the field, so asking is harmless.
        name="openrouter",
        base_url="https://openrouter.ai/api/v1",
        key_env="OPENROUTER_API_KEY",
        auth_style="bearer",
        models=(
            "openai/gpt-4o-mini",
            "anthropic/claude-sonnet-4.5",
            "google/gemini-2.5-flash",
            "meta-llama/llama-3.3-70b-instruct",
            "deepseek/deepseek-chat",
            "x-ai/grok-4",
        ),
        stream_options=True,
    ),
)

CATALOG: Mapping[str, ProviderSpec] = MappingProxyType({row.name: row for row in _ROWS})
"""Built-in providers by name, in SPEC §3 order."""
