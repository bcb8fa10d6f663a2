"""proxy.pricing: the dated price table, config overrides and the cost of a call, in exact Decimal USD.

Every expected cost here is worked out by hand from the row's USD-per-million prices, so a
wrong price in the arithmetic (not just a changed one) shows up as a failure.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config
from proxy.config import Price as ConfigPrice
from proxy.pricing import (
    COST_QUANTUM,
    Price,
    PriceTable,
    cost,
    format_usd,
    worst_case_cost,
)
from proxy.providers import CATALOG
from proxy.token_counts import Tokens, read_usage
from proxy.token_estimate import estimate_prompt_tokens

TABLE = PriceTable.builtin()
CATALOG_KEYS = {f"{spec.name}/{model}" for spec in CATALOG.values() for model in spec.models}
REPO = Path(__file__).resolve().parents[3]


def usd(text: str) -> Decimal:
    return Decimal(text)


# --- the data file -------------------------------------------------------------------------


def test_every_catalog_model_is_priced_or_deliberately_unpriced():
    priced = set(TABLE)
    assert CATALOG_KEYS - priced - TABLE.unpriced == set(), "catalog models neither priced nor listed as unpriced"
    assert priced - CATALOG_KEYS == set(), "price rows for models the catalog does not list"
    assert TABLE.unpriced - CATALOG_KEYS == set(), "unpriced entries that are not catalog models"
    assert priced & TABLE.unpriced == set()


def test_every_provider_has_at_least_one_priced_model_except_those_documented():
    # DeepInfra is the one provider left wholly unpriced on purpose (see prices.toml).
    providers_priced = {key.partition("/")[0] for key in TABLE}
    assert set(CATALOG) - providers_priced == {"deepinfra"}


def test_every_row_has_a_date_a_source_and_sane_rates():
    for key in TABLE:
        price = TABLE[key]
        assert price.date is not None, key
        assert date.fromisoformat(price.date) <= date.today(), key
        assert price.source.startswith("https://"), key
        assert price.input >= 0, key
        assert price.output >= 0, key
        # a cache read is a discount on input, never a surcharge
        assert price.cached_input is None or price.cached_input <= price.input, key
        # every catalog provider bills reasoning as output: no separate rate (see prices.toml)
        assert price.reasoning is None, key


def test_rows_are_exact_decimals_from_the_file():
    price = TABLE.lookup("openai", "gpt-4o-mini")
    assert price is not None
    assert (price.input, price.output, price.cached_input) == (usd("0.15"), usd("0.60"), usd("0.075"))
    assert isinstance(price.input, Decimal)


def test_openrouter_keys_keep_the_vendor_slash():
    assert TABLE.lookup("openrouter", "openai/gpt-4o-mini") is not None
    assert TABLE.lookup("groq", "meta-llama/llama-4-scout-17b-16e-instruct") is not None


def test_price_file_ships_as_package_data():
    assert resources.files("proxy").joinpath("prices.toml").is_file()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["proxy"]
    assert any(fnmatch.fnmatch("prices.toml", pattern) for pattern in patterns)


ROW = '["a/b"]\ninput = 1\noutput = 2\ndate = "2025-01-01"\nsource = "https://example.com/pricing"\n'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (ROW.replace('date = "2025-01-01"\n', ""), '"a/b".date: must be a "YYYY-MM-DD" string'),
        (ROW.replace("2025-01-01", "2025-13-01"), '"a/b".date'),
        (ROW.replace("https://example.com/pricing", "example.com"), '"a/b".source'),
        (ROW.replace("input = 1", "input = -1"), '"a/b".input: must be a number >= 0'),
        (ROW.replace("input = 1", 'input = "1"'), '"a/b".input: must be a number >= 0'),
        (ROW.replace("input = 1", "input = true"), '"a/b".input: must be a number >= 0'),
        (ROW.replace("output = 2\n", ""), '"a/b": needs input and output'),
        (ROW + "inptu = 1\n", '"a/b".inptu: unknown key'),
        (ROW.replace('["a/b"]', '["ab"]'), '"provider/model"'),
        ('unpriced = ["a/b"]\n' + ROW, "a/b is both priced and listed as unpriced"),
        ('unpriced = "a/b"\n' + ROW, "unpriced: must be an array"),
    ],
)
def test_a_malformed_price_file_names_the_row_and_field(text, problem):
    with pytest.raises(ValueError, match=r"^prices\.toml: ") as caught:
        PriceTable.from_toml(text)
    assert problem in str(caught.value)


# --- cost arithmetic ----------------------------------------------------------------------


def price_of(key: str) -> Price:
    provider, _, model = key.partition("/")
    price = TABLE.lookup(provider, model)
    assert price is not None, key
    return price


@pytest.mark.parametrize(
    ("key", "usage", "expected"),
    [
        # plain: 1000 x 0.15 + 500 x 0.60 = 450 per million
        ("openai/gpt-4o-mini", {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}, "0.00045"),
        # cached is a subset of prompt: 800 x 0.15 + 200 x 0.075 + 500 x 0.60 = 435
        (
            "openai/gpt-4o-mini",
            {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 200}},
            "0.000435",
        ),
        # OpenAI reasoning is inside completion_tokens: 100 x 1.10 + 1000 x 4.40 = 4510 (not 8030)
        (
            "openai/o4-mini",
            {
                "prompt_tokens": 100,
                "completion_tokens": 1000,
                "total_tokens": 1100,
                "completion_tokens_details": {"reasoning_tokens": 800},
            },
            "0.00451",
        ),
        # every token of a completion that is all reasoning is still charged once
        (
            "openai/gpt-5",
            {
                "prompt_tokens": 0,
                "completion_tokens": 64,
                "total_tokens": 64,
                "completion_tokens_details": {"reasoning_tokens": 64},
            },
            "0.00064",
        ),
        # xAI reports reasoning beside completion (total = 10120 + 1499 + 2809):
        # 9992 x 0.30 + 128 x 0.075 + (1499 + 2809) x 0.50 = 2997.6 + 9.6 + 2154 = 5161.2
        (
            "xai/grok-3-mini",
            {
                "prompt_tokens": 10120,
                "completion_tokens": 1499,
                "total_tokens": 14428,
                "prompt_tokens_details": {"cached_tokens": 128},
                "completion_tokens_details": {"reasoning_tokens": 2809},
            },
            "0.0051612",
        ),
        # reasoning larger than completion can only mean "beside": 21 x 0.30 + 60 x 2.50 = 156.3
        (
            "gemini/gemini-2.5-flash",
            {"prompt_tokens": 21, "completion_tokens": 0, "completion_tokens_details": {"reasoning_tokens": 60}},
            "0.0001563",
        ),
        # no cached rate on the row: cached tokens cost full input: 1000 x 0.10 + 10 x 0.10 = 101
        (
            "cerebras/llama3.1-8b",
            {"prompt_tokens": 1000, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 900}},
            "0.000101",
        ),
        # Anthropic native: input_tokens EXCLUDES cache reads and writes.
        # 100 x 3 + 1000 x 0.30 + 1500 x 3 x 1.25 + 500 x 3 x 2 + 300 x 15 = 13725
        (
            "anthropic/claude-sonnet-4-5",
            {
                "input_tokens": 100,
                "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 2000,
                "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
                "output_tokens": 300,
            },
            "0.013725",
        ),
        # Anthropic with nulls (as in some stream events): 10 x 1 + 5 x 5 = 35
        (
            "anthropic/claude-haiku-4-5",
            {"input_tokens": 10, "cache_read_input_tokens": None, "output_tokens": 5},
            "0.000035",
        ),
        # OpenAI Responses: input includes cached, output includes reasoning:
        # 600 x 1.25 + 400 x 0.125 + 2000 x 10 = 20800
        (
            "openai/gpt-5",
            {
                "input_tokens": 1000,
                "input_tokens_details": {"cached_tokens": 400},
                "output_tokens": 2000,
                "output_tokens_details": {"reasoning_tokens": 1500},
            },
            "0.0208",
        ),
        # embeddings report only prompt tokens: 8 x 0.15
        ("openai/gpt-4o-mini", {"prompt_tokens": 8, "total_tokens": 8}, "0.0000012"),
        # an upstream claiming more cached than prompt tokens is clamped: 10 x 0.075
        (
            "openai/gpt-4o-mini",
            {"prompt_tokens": 10, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 99}},
            "0.00000075",
        ),
        ("openai/gpt-4o-mini", {"prompt_tokens": 0, "completion_tokens": 0}, "0"),
    ],
)
def test_cost_by_hand(key, usage, expected):
    assert cost(price_of(key), usage) == usd(expected)


def test_a_separate_reasoning_price_splits_the_completion():
    price = Price(input=usd("1"), output=usd("2"), reasoning=usd("3"))
    usage = {"prompt_tokens": 0, "completion_tokens": 100, "completion_tokens_details": {"reasoning_tokens": 40}}
    assert cost(price, usage) == usd("0.00024")  # 60 x 2 + 40 x 3 = 240 per million


def test_costs_are_quantized_to_the_documented_step_half_to_even():
    price = Price(input=usd("0.00005"), output=usd("0"))
    one = cost(price, {"prompt_tokens": 1, "completion_tokens": 0})  # 5e-11: a tie, rounds to even 0
    three = cost(price, {"prompt_tokens": 3, "completion_tokens": 0})  # 1.5e-10 -> 2e-10
    assert (one, three) == (usd("0"), usd("2E-10"))
    result = cost(price_of("openai/gpt-4o"), {"prompt_tokens": 7, "completion_tokens": 3})
    assert result is not None
    assert result.as_tuple().exponent == COST_QUANTUM.as_tuple().exponent


@pytest.mark.parametrize(
    "usage",
    [
        None,
        {},
        {"total_tokens": 10},
        {"completion_tokens": 10},
        {"prompt_tokens": None, "completion_tokens": 5},
        {"prompt_tokens": "10", "completion_tokens": 5},
        {"prompt_tokens": -1, "completion_tokens": 5},
        {"prompt_tokens": True, "completion_tokens": 5},
        {"input_tokens": None, "output_tokens": 5},
    ],
)
def test_usage_without_token_counts_has_no_cost(usage):
    assert cost(price_of("openai/gpt-4o-mini"), usage) is None


def test_unknown_model_has_no_price_and_no_cost_never_zero():
    assert TABLE.lookup("openai", "gpt-9") is None
    assert TABLE.lookup("nobody", "gpt-4o-mini") is None
    assert cost(TABLE.lookup("openai", "gpt-9"), {"prompt_tokens": 10, "completion_tokens": 10}) is None
    for key in TABLE.unpriced:  # deliberately unpriced catalog models
        provider, _, model = key.partition("/")
        assert TABLE.lookup(provider, model) is None


def test_ten_thousand_small_costs_sum_exactly():
    one = cost(price_of("groq/llama-3.1-8b-instant"), {"prompt_tokens": 3, "completion_tokens": 7})
    assert one == usd("0.00000071")  # 3 x 0.05 + 7 x 0.08 = 0.71 per million
    total = sum((one for _ in range(10_000)), Decimal(0))
    assert total == one * 10_000 == usd("0.0071")
    # the float equivalent drifts; Decimal must not
    assert sum(0.00000071 for _ in range(10_000)) != 0.0071


def test_read_usage_normalises_every_convention_to_one():
    anthropic = {"input_tokens": 5, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 3, "output_tokens": 2}
    assert read_usage(anthropic) == Tokens(prompt=18, completion=2, cached=10, cache_write=3)
    xai = {
        "prompt_tokens": 32,
        "completion_tokens": 9,
        "total_tokens": 135,
        "completion_tokens_details": {"reasoning_tokens": 94},
    }
    assert read_usage(xai) == Tokens(prompt=32, completion=103, reasoning=94)


# --- worst case and the header format -----------------------------------------------------


def test_worst_case_is_prompt_at_input_plus_max_tokens_at_output():
    assert worst_case_cost(price_of("openai/gpt-4o-mini"), 1000, 500) == usd("0.00045")
    dear_reasoning = Price(input=usd("1"), output=usd("2"), cached_input=usd("0.5"), reasoning=usd("8"))
    assert worst_case_cost(dear_reasoning, 0, 1000) == usd("0.008")


def test_worst_case_rounds_up_and_bounds_every_real_cost():
    price = Price(input=usd("0.00005"), output=usd("0.00007"), cached_input=usd("0.00001"))
    assert worst_case_cost(price, 1, 0) == usd("1E-10")  # 5e-11 rounded UP, never to 0
    for prompt in range(0, 40, 7):
        for completion in range(0, 40, 9):
            usage = {"prompt_tokens": prompt, "completion_tokens": completion}
            real = cost(price, usage)
            assert real is not None
            assert real <= worst_case_cost(price, prompt, completion)


def test_worst_case_rejects_negative_counts():
    with pytest.raises(ValueError, match=">= 0"):
        worst_case_cost(price_of("openai/gpt-4o-mini"), -1, 10)


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("0", "0"),
        ("0E-10", "0"),
        ("-0.0", "0"),
        ("0.0004350000", "0.000435"),
        ("1E-10", "0.0000000001"),
        ("12.5000", "12.5"),
        ("100", "100"),
        ("1E+2", "100"),
        ("3.0", "3"),
        ("123456.7890000000", "123456.789"),
    ],
)
def test_format_usd(amount, text):
    assert format_usd(Decimal(amount)) == text


def test_format_usd_rejects_non_finite():
    with pytest.raises(ValueError, match="finite"):
        format_usd(Decimal("NaN"))


# --- overrides from the config ------------------------------------------------------------


def config_prices(tmp_path: Path, text: str) -> Mapping[str, ConfigPrice]:
    path = tmp_path / "sluice.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, env={}).prices


CUSTOM = '[providers.local]\nbase_url = "http://127.0.0.1:8000/v1"\nmodels = ["my-model"]\n'


def test_an_override_changes_only_the_fields_it_sets(tmp_path):
    table = TABLE.with_overrides(config_prices(tmp_path, '[prices."openai/gpt-4o-mini"]\ninput = 0.10\n'))
    price = table.lookup("openai", "gpt-4o-mini")
    assert price is not None
    assert (price.input, price.output, price.cached_input) == (usd("0.1"), usd("0.60"), usd("0.075"))
    assert price.date is None  # a mixed row has no single date
    assert price.source.startswith("config over https://platform.openai.com/")
    # 1000 x 0.10 + 500 x 0.60 = 400 per million
    assert cost(price, {"prompt_tokens": 1000, "completion_tokens": 500}) == usd("0.0004")
    # the built-in table itself is untouched
    assert price_of("openai/gpt-4o-mini").input == usd("0.15")


def test_the_spec_example_override(tmp_path):
    text = '[prices."cerebras/llama3.1-8b"]\ninput = 0.10\noutput = 0.10\ncached_input = 0.05\n'
    price = TABLE.with_overrides(config_prices(tmp_path, text)).lookup("cerebras", "llama3.1-8b")
    assert price is not None
    assert (price.input, price.output, price.cached_input) == (usd("0.1"), usd("0.1"), usd("0.05"))
    usage = {"prompt_tokens": 100, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 60}}
    assert cost(price, usage) == usd("0.000008")  # 40 x 0.10 + 60 x 0.05 + 10 x 0.10 = 8


def test_a_custom_model_is_priced_from_the_config_alone(tmp_path):
    text = CUSTOM + '[prices."local/my-model"]\ninput = 1\noutput = 2.5\n'
    table = TABLE.with_overrides(config_prices(tmp_path, text), source="config sluice.toml")
    price = table.lookup("local", "my-model")
    assert price == Price(input=usd("1.0"), output=usd("2.5"), date=None, source="config sluice.toml")
    assert cost(price, {"prompt_tokens": 2, "completion_tokens": 2}) == usd("0.000007")


def test_an_override_prices_a_deliberately_unpriced_model(tmp_path):
    text = '[prices."groq/openai/gpt-oss-20b"]\ninput = 0.075\noutput = 0.30\n'
    table = TABLE.with_overrides(config_prices(tmp_path, text))
    assert table.lookup("groq", "openai/gpt-oss-20b") is not None
    assert "groq/openai/gpt-oss-20b" not in table.unpriced


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[prices."openai/gpt-4o"]\ninput = -1\n', 'prices."openai/gpt-4o".input', "must be >= 0"),
        ('[prices."openai/gpt-4o"]\noutput = "cheap"\n', 'prices."openai/gpt-4o".output', "must be a finite number"),
        ('[prices."openai/gpt-4o"]\ninput = true\n', 'prices."openai/gpt-4o".input', "not a boolean"),
        ('[prices."openai/gpt-4o"]\ninput = nan\n', 'prices."openai/gpt-4o".input', "must be a finite number"),
        ('[prices."openai/gpt-4o"]\ncache = 1\n', 'prices."openai/gpt-4o".cache', "unknown key"),
        ('[prices."acme/m"]\ninput = 1\n', 'prices."acme/m"', "unknown provider 'acme'"),
        (CUSTOM + '[prices."local/my-model"]\ninput = 1\n', 'prices."local/my-model".output', "required"),
        (CUSTOM + '[prices."local/my-model"]\noutput = 1\n', 'prices."local/my-model".input', "required"),
        # in the catalog but deliberately unpriced: there is no row to fill in from either
        ('[prices."groq/openai/gpt-oss-20b"]\ninput = 1\n', 'prices."groq/openai/gpt-oss-20b".output', "required"),
    ],
)
def test_bad_price_overrides_name_their_key(tmp_path, text, key, problem):
    with pytest.raises(ConfigError) as caught:
        config_prices(tmp_path, text)
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_with_overrides_guards_a_row_it_cannot_complete():
    with pytest.raises(ValueError, match="input and output are required"):
        TABLE.with_overrides({"local/x": ConfigPrice(input=1.0, output=None, cached_input=None)})


# --- the prompt-token estimator -----------------------------------------------------------


def chat(*contents: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": c} for c in contents]}


def test_estimate_is_bytes_over_four_plus_overheads():
    # "user" (4) + 40 bytes of content = 44 bytes -> 11, + 4 per message + 3
    assert estimate_prompt_tokens(chat("x" * 40)) == 11 + 4 + 3
    assert estimate_prompt_tokens({}) == 3


def test_estimate_is_monotone_in_text_length():
    estimates = [estimate_prompt_tokens(chat("a" * n)) for n in range(0, 400, 3)]
    assert estimates == sorted(estimates)
    assert estimates[-1] > estimates[0]


def test_estimate_reads_content_parts_and_ignores_images():
    text = "describe this picture in detail"
    as_parts = chat([{"type": "text", "text": text}])
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}}
    with_image = chat([{"type": "text", "text": text}, image])
    anthropic_image = chat([{"type": "text", "text": text}, {"type": "image", "source": {"data": "A" * 9999}}])
    assert estimate_prompt_tokens(with_image) == estimate_prompt_tokens(as_parts)
    assert estimate_prompt_tokens(anthropic_image) == estimate_prompt_tokens(as_parts)
    # parts cost about what the same text as a string does (the part's "type" adds a token)
    assert abs(estimate_prompt_tokens(as_parts) - estimate_prompt_tokens(chat(text))) <= 2


def test_estimate_counts_system_tools_and_non_latin_text():
    base = chat("hi")
    with_system = {**base, "system": [{"type": "text", "text": "s" * 400}]}
    with_tools = {**base, "tools": [{"type": "function", "function": {"name": "f", "description": "d" * 400}}]}
    assert estimate_prompt_tokens(with_system) >= estimate_prompt_tokens(base) + 100
    assert estimate_prompt_tokens(with_tools) >= estimate_prompt_tokens(base) + 100
    # 100 CJK characters are 300 UTF-8 bytes: counted as bytes, so higher than 100 ASCII letters
    assert estimate_prompt_tokens(chat("字" * 100)) > estimate_prompt_tokens(chat("a" * 100))


@pytest.mark.parametrize(
    "body",
    [
        {"messages": "not a list"},
        {"messages": [None, 5, "x", {"content": None}]},
        {"messages": [{"content": [{"type": ["unhashable"]}, {"type": None}]}]},
        {"prompt": ["a", "b"], "input": [1, 2, 3]},
    ],
)
def test_estimate_never_fails_on_odd_bodies(body):
    assert estimate_prompt_tokens(body) >= 3
