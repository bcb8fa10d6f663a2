"""proxy.providers: the built-in catalog of SPEC §3, as data."""

from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

import pytest

from proxy.providers import CATALOG, ProviderSpec

EXPECTED = {
    "cerebras": ("https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"),
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "anthropic": ("https://api.anthropic.com/v1", "ANTHROPIC_API_KEY"),
    "groq": ("https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "gemini": ("https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"),
    "deepinfra": ("https://api.deepinfra.com/v1/openai", "DEEPINFRA_API_KEY"),
    "mistral": ("https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "xai": ("https://api.x.ai/v1", "XAI_API_KEY"),
    "openrouter": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
}


def test_catalog_lists_the_spec_providers_in_order():
    assert list(CATALOG) == list(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_base_url_and_key_variable(name):
    spec = CATALOG[name]
    assert spec.name == name
    assert (spec.base_url, spec.key_env) == EXPECTED[name]
    assert spec.auth_style == "bearer"


@pytest.mark.parametrize("spec", CATALOG.values(), ids=list(CATALOG))
def test_base_url_is_https_without_trailing_slash(spec):
    parts = urlsplit(spec.base_url)
    assert parts.scheme == "https"
    assert parts.hostname
    assert not spec.base_url.endswith("/")
    assert not parts.query
    assert not parts.fragment


@pytest.mark.parametrize("spec", CATALOG.values(), ids=list(CATALOG))
def test_a_handful_of_distinct_models(spec):
    assert 3 <= len(spec.models) <= 8
    assert len(set(spec.models)) == len(spec.models)
    assert all(model and model.strip() == model for model in spec.models)


def test_well_known_models_are_listed():
    assert {"llama3.1-8b", "llama-3.3-70b", "gpt-oss-120b", "qwen-3-32b"} <= set(CATALOG["cerebras"].models)
    assert {"gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "o4-mini"} <= set(CATALOG["openai"].models)
    assert {"llama-3.1-8b-instant", "llama-3.3-70b-versatile"} <= set(CATALOG["groq"].models)
    assert {"claude-sonnet-4-5", "claude-haiku-4-5"} <= set(CATALOG["anthropic"].models)


def test_stream_options_only_where_accepted():
    # Mistral rejects unknown request fields (422 extra_forbidden on stream_options).
    assert {name for name, spec in CATALOG.items() if not spec.stream_options} == {"mistral"}


def test_catalog_is_read_only():
    with pytest.raises(TypeError):
        CATALOG["new"] = CATALOG["openai"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        CATALOG["openai"].base_url = "http://evil"  # type: ignore[misc]
    assert isinstance(CATALOG["openai"], ProviderSpec)
