"""proxy.ordering: cheapest, fastest and auto put a route's targets in order.

Costs are worked out by hand from USD-per-million prices. Controlled price tables come from
``PriceTable.from_toml``; real ones from ``PriceTable.builtin()``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal

import pytest

from middleware.call import Target
from proxy.config_schema import Price as ConfigPrice
from proxy.ordering import (
    DEFAULT_OUTPUT_TOKENS,
    auto_order,
    cheapest,
    expected_cost,
    expected_output_tokens,
    fastest,
)
from proxy.pricing import PriceTable
from proxy.providers import CATALOG
from proxy.token_estimate import estimate_prompt_tokens

BUILTIN = PriceTable.builtin()


def target(name: str) -> Target:
    provider, _, model = name.partition("/")
    return Target(provider, model, f"https://{provider}.example/v1")


def targets(*names: str) -> list[Target]:
    return [target(n) for n in names]


def names(ordered: list[Target]) -> list[str]:
    return [t.name for t in ordered]


def table(**rows: tuple[str, str]) -> PriceTable:
    """A price table of ``x/<key>`` rows: key=(input, output) in USD per million tokens."""
    text = "".join(
        f'["x/{model}"]\ninput = {inp}\noutput = {out}\ndate = "2025-01-01"\nsource = "https://x.example"\n'
        for model, (inp, out) in rows.items()
    )
    return PriceTable.from_toml(text)


def chat(prompt_tokens: int, **fields: object) -> dict[str, object]:
    """A one-message chat body that ``estimate_prompt_tokens`` puts at exactly ``prompt_tokens``.

    ceil(bytes / 4) + 4 per message + 3, where the bytes are the content's and the role's ("user").
    """
    body: dict[str, object] = {
        "model": "m",
        "messages": [{"role": "user", "content": "x" * (4 * (prompt_tokens - 7) - 4)}],
    }
    body.update(fields)
    assert estimate_prompt_tokens(body) == prompt_tokens
    return body


# A is cheap to read and dear to write; B the other way round. For P prompt and O output
# tokens A costs P + 10 O and B 3 P + O, so A is cheaper exactly when 9 O < 2 P.
READ_CHEAP = table(a=("1", "10"), b=("3", "1"))
AB = targets("x/a", "x/b")


# --- expected cost and output tokens -----------------------------------------------------------


def test_expected_cost_is_prompt_at_input_plus_output_at_output():
    price = BUILTIN.lookup("openai", "gpt-4o-mini")  # 0.15 in, 0.60 out
    # 1000 x 0.15 / 1e6 + 256 x 0.60 / 1e6 = 0.00015 + 0.0001536
    assert expected_cost(price, 1000, 256) == Decimal("0.0003036")
    assert expected_cost(price, 0, 0) == 0


def test_expected_cost_of_an_unpriced_target_is_none_and_negative_counts_are_refused():
    assert expected_cost(None, 1000, 256) is None
    with pytest.raises(ValueError, match=">= 0"):
        expected_cost(BUILTIN.lookup("openai", "gpt-4o"), -1, 10)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, DEFAULT_OUTPUT_TOKENS),
        ({"max_tokens": 10}, 10),  # a small cap bounds the answer
        ({"max_tokens": 100_000}, DEFAULT_OUTPUT_TOKENS),  # a large cap is not a prediction
        ({"max_completion_tokens": 20, "max_tokens": 5}, 20),  # the current field name wins
        ({"max_output_tokens": 30}, 30),  # Responses API
        ({"max_tokens": 0}, DEFAULT_OUTPUT_TOKENS),
        ({"max_tokens": True}, DEFAULT_OUTPUT_TOKENS),
        ({"max_tokens": "10"}, DEFAULT_OUTPUT_TOKENS),
        ({"max_tokens": 100, "n": 3}, 300),  # every choice is generated and billed
        ({"n": 2}, 2 * DEFAULT_OUTPUT_TOKENS),
    ],
)
def test_expected_output_tokens_is_the_smaller_of_the_cap_and_the_default(fields, expected):
    assert expected_output_tokens(fields) == expected


# --- cheapest ----------------------------------------------------------------------------------


def test_cheapest_orders_real_catalog_prices_and_puts_unpriced_last():
    configured = targets(
        "deepinfra/deepseek-ai/DeepSeek-V3",  # unpriced on purpose
        "openai/gpt-4o",  # 2.50 / 10.00
        "anthropic/claude-haiku-4-5",  # 1.00 / 5.00
        "groq/openai/gpt-oss-20b",  # unpriced on purpose
        "cerebras/llama3.1-8b",  # 0.10 / 0.10
        "groq/llama-3.1-8b-instant",  # 0.05 / 0.08
    )
    assert names(cheapest(configured, chat(500), BUILTIN)) == [
        "groq/llama-3.1-8b-instant",
        "cerebras/llama3.1-8b",
        "anthropic/claude-haiku-4-5",
        "openai/gpt-4o",
        "deepinfra/deepseek-ai/DeepSeek-V3",
        "groq/openai/gpt-oss-20b",
    ]


def test_cheapest_weighs_prompt_against_output_with_the_output_token_rule():
    # P = 1000: default O = 256 -> A 3560, B 3256: B first.
    assert names(cheapest(AB, chat(1000), READ_CHEAP)) == ["x/b", "x/a"]
    # max_tokens 10 -> A 1100, B 3010: A first.
    assert names(cheapest(AB, chat(1000, max_tokens=10), READ_CHEAP)) == ["x/a", "x/b"]
    # A huge cap is still expected to produce 256 tokens: B first, as with no cap.
    assert names(cheapest(AB, chat(1000, max_tokens=100_000), READ_CHEAP)) == ["x/b", "x/a"]
    # The default is a parameter: 10 expected tokens puts A first.
    assert names(cheapest(AB, chat(1000), READ_CHEAP, default_output_tokens=10)) == ["x/a", "x/b"]


def test_cheapest_counts_an_anthropic_messages_body_system_prompt_included():
    def messages(system: str) -> dict[str, object]:
        content = [{"type": "text", "text": "Summarise the document."}]
        return {"model": "m", "max_tokens": 4096, "system": system, "messages": [{"role": "user", "content": content}]}

    # Short prompt, output 256 (the 4096 cap is larger): output price decides, B first.
    assert names(cheapest(AB, messages("Be brief."), READ_CHEAP)) == ["x/b", "x/a"]
    # A 10,000-token system prompt makes the input price decide: A first.
    assert names(cheapest(AB, messages("x" * 40_000), READ_CHEAP)) == ["x/a", "x/b"]


def test_cheapest_follows_config_price_overrides():
    configured = targets("groq/llama-3.1-8b-instant", "openai/gpt-4o")
    assert names(cheapest(configured, chat(100), BUILTIN))[0] == "groq/llama-3.1-8b-instant"
    cut = BUILTIN.with_overrides({"openai/gpt-4o": ConfigPrice(input=0.01, output=0.01, cached_input=None)})
    assert names(cheapest(configured, chat(100), cut))[0] == "openai/gpt-4o"


def test_cheapest_ties_and_unpriced_targets_keep_the_configured_order():
    same = table(a=("1", "1"), b=("1", "1"), c=("0.5", "0.5"))
    configured = targets("x/none1", "x/b", "x/a", "x/none2", "x/c")
    assert names(cheapest(configured, chat(100), same)) == ["x/c", "x/b", "x/a", "x/none1", "x/none2"]
    assert cheapest([], chat(100), same) == []


# --- fastest -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Stands in for middleware.stores' TargetStats (frozen: the protocol must accept it)."""

    ewma_ttft_s: float | None
    ewma_latency_s: float | None
    error_rate: float = 0.0
    samples: int = 100


def never() -> float:
    raise AssertionError("rng must not be called")


def no_explore() -> float:
    return 0.999


ABC = targets("p/a", "p/b", "p/c")


def test_fastest_ranks_streams_by_ttft_and_other_calls_by_latency():
    stats = [Stats(ewma_ttft_s=0.2, ewma_latency_s=3.0), Stats(ewma_ttft_s=0.5, ewma_latency_s=1.0)]
    assert names(fastest(AB, stats, stream=True, rng=never)) == ["x/a", "x/b"]
    assert names(fastest(AB, stats, stream=False, rng=never)) == ["x/b", "x/a"]


def test_fastest_falls_back_to_the_other_time_when_one_is_missing():
    stats = [Stats(ewma_ttft_s=None, ewma_latency_s=0.4), Stats(ewma_ttft_s=0.5, ewma_latency_s=None)]
    assert names(fastest(AB, stats, stream=True, rng=never)) == ["x/a", "x/b"]
    assert names(fastest(AB, stats, stream=False, rng=never)) == ["x/a", "x/b"]


def test_fastest_inflates_time_by_the_error_rate():
    # a: 1.0 s at 50% errors scores 2.0 s; b: 1.5 s, no errors, scores 1.5 s.
    stats = [Stats(1.0, 1.0, error_rate=0.5), Stats(1.5, 1.5)]
    assert names(fastest(AB, stats, stream=True, rng=never)) == ["x/b", "x/a"]
    # The rate is clamped at 0.9: always failing scores 10x, behind 9 s, ahead of 11 s.
    stats3 = [Stats(1.0, 1.0, error_rate=1.0), Stats(9.0, 9.0), Stats(11.0, 11.0)]
    assert names(fastest(ABC, stats3, stream=True, rng=never)) == ["p/b", "p/a", "p/c"]


def test_fastest_ties_keep_the_configured_order():
    stats = [Stats(0.5, 1.0), Stats(0.2, 1.0), Stats(0.5, 1.0)]
    assert names(fastest(ABC, stats, stream=False, rng=never)) == ["p/a", "p/b", "p/c"]
    # 0.2 s at 90% errors and 0.2 s at 100% both score 2.0 s: configured order.
    clamped = [Stats(0.2, 0.2, error_rate=1.0), Stats(0.2, 0.2, error_rate=0.9)]
    assert names(fastest(AB, clamped, stream=True, rng=never)) == ["x/a", "x/b"]


def test_fastest_puts_targets_below_min_samples_after_measured_ones():
    stats = [None, Stats(0.1, 0.1, samples=4), Stats(2.0, 2.0, samples=5)]
    assert names(fastest(ABC, stats, stream=True, rng=no_explore)) == ["p/c", "p/a", "p/b"]
    assert names(fastest(ABC, stats, stream=True, min_samples=4, rng=no_explore)) == ["p/b", "p/c", "p/a"]


def test_fastest_keeps_the_configured_order_when_no_target_has_data():
    stats = [None, Stats(0.1, 0.1, samples=1), Stats(None, None)]
    assert names(fastest(ABC, stats, stream=True, rng=never)) == ["p/a", "p/b", "p/c"]


def test_fastest_never_explores_when_explore_is_zero():
    stats = [None, None, Stats(2.0, 2.0)]
    assert names(fastest(ABC, stats, stream=True, explore=0.0, rng=never)) == ["p/c", "p/a", "p/b"]


def test_fastest_moves_an_unexplored_target_to_the_front_when_the_draw_is_below_explore():
    stats = [None, Stats(2.0, 2.0), Stats(0.1, 0.1, samples=0)]
    # Two unexplored (a, c); a draw in [0, 0.025) picks the first, [0.025, 0.05) the second.
    assert names(fastest(ABC, stats, stream=True, rng=lambda: 0.0)) == ["p/a", "p/b", "p/c"]
    assert names(fastest(ABC, stats, stream=True, rng=lambda: 0.049)) == ["p/c", "p/b", "p/a"]
    assert names(fastest(ABC, stats, stream=True, rng=lambda: 0.04999999999999999)) == ["p/c", "p/b", "p/a"]
    # At or above explore: measured first, unexplored after in configured order.
    assert names(fastest(ABC, stats, stream=True, rng=lambda: 0.05)) == ["p/b", "p/a", "p/c"]


def test_fastest_never_explores_when_every_target_is_measured():
    stats = [Stats(0.3, 0.3), Stats(0.2, 0.2)]
    assert names(fastest(AB, stats, stream=True, explore=1.0, rng=never)) == ["x/b", "x/a"]


def test_fastest_explores_about_the_documented_share_of_calls():
    rng = random.Random(8).random
    stats = [Stats(0.1, 0.1), None]
    calls = 20_000
    explored = sum(fastest(AB, stats, stream=True, rng=rng)[0].name == "x/b" for _ in range(calls))
    # Binomial(20000, 0.05): mean 1000, sd about 31; 5 sd either side.
    assert 845 < explored < 1155


def test_fastest_treats_non_finite_numbers_as_unknown():
    stats = [Stats(float("nan"), float("inf")), Stats(1.0, 1.0, error_rate=float("nan"))]
    assert names(fastest(AB, stats, stream=True, rng=no_explore)) == ["x/b", "x/a"]


def test_fastest_refuses_bad_arguments():
    with pytest.raises(ValueError, match="2 targets but 1 stats"):
        fastest(AB, [None], stream=True)
    with pytest.raises(ValueError, match="explore"):
        fastest(AB, [None, None], stream=True, explore=1.5)
    with pytest.raises(ValueError, match="min_samples"):
        fastest(AB, [None, None], stream=True, min_samples=0)


# --- auto --------------------------------------------------------------------------------------


def test_auto_order_puts_the_keyed_catalog_cheapest_first_unpriced_last_ties_in_catalog_order():
    catalog = [target(f"{spec.name}/{model}") for spec in CATALOG.values() for model in spec.models]
    ordered = auto_order(catalog, BUILTIN)
    assert sorted(names(ordered)) == sorted(names(catalog))
    costs = [expected_cost(BUILTIN.lookup(t.provider, t.model), 1000, 256) for t in ordered]
    priced = [c for c in costs if c is not None]
    assert costs[: len(priced)] == priced, "unpriced targets must come last"
    assert priced == sorted(priced)
    # groq llama 8b: 1000 x 0.05 + 256 x 0.08 = 70.48 per million, the cheapest row.
    assert ordered[0].name == "groq/llama-3.1-8b-instant"
    # cerebras/llama3.1-8b and mistral/ministral-8b-latest both cost 0.10 / 0.10: catalog order.
    tied = [n for n in names(ordered) if n in ("cerebras/llama3.1-8b", "mistral/ministral-8b-latest")]
    assert tied == ["cerebras/llama3.1-8b", "mistral/ministral-8b-latest"]
    unpriced = [t.name for t in catalog if BUILTIN.lookup(t.provider, t.model) is None]
    assert names(ordered)[len(priced) :] == unpriced


def test_auto_order_ignores_any_request_and_uses_a_typical_one():
    # 1000 prompt + 256 output: A 3560, B 3256 -> B first, whatever the caller's body.
    assert names(auto_order(AB, READ_CHEAP)) == ["x/b", "x/a"]
