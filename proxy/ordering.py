"""``cheapest`` / ``fastest`` / ``auto``: a Route's targets put in order (SPEC §3, §9).

Pure functions over prices and stats: no I/O, no clock, no global randomness (``fastest``
takes ``rng``). Each returns a new list holding every target it was given, so the strategy
layer keeps fallback within the order, and cooldowns and open circuits still skip. Every
sort is stable: equal keys keep the configured order.

``cheapest`` ranks by the expected cost of THIS request, not its worst case:
prompt tokens from ``estimate_prompt_tokens`` (Chat Completions, Anthropic Messages,
Responses bodies alike), output tokens = min(the body's cap, ``default_output_tokens``) x ``n``.
A cap (``max_completion_tokens``, ``max_tokens``, ``max_output_tokens``) is an upper
bound, not a prediction: clients routinely send 4096 or more (Anthropic requires the field),
and ranking by it would let the output price alone decide. A small cap is informative, though
(a 5-token classification never costs 256 tokens of output), hence the min. The default of 256
is about a typical chat answer (a paragraph or two); catalog output prices are 1-8x input
prices, so the default only decides between targets whose prompt costs are close.

``fastest`` ranks by score = time / (1 - min(error_rate, 0.9)), lower first, where time is
the EWMA time to first token for streams and the EWMA latency otherwise (each falls back to
the other when missing). If every try fails independently with probability p, the expected
number of tries until one succeeds is 1/(1-p), so this is roughly the expected time to an
answer; the 0.9 clamp keeps a target that always fails finite (10x) and ordered, while
circuits and cooldowns deal with it properly. Targets with fewer than ``min_samples``
samples (or no usable time) are unexplored: they go after the measured ones in configured
order, except that with probability ``explore`` (default 5% of calls) one of them, chosen
uniformly, is moved to the front so that it gets measured. When no target is measured yet,
the configured order stands: its first target collects samples, and the rest are then
explored. So at most ``explore`` of a route's traffic goes to unmeasured targets, and none
once every target has ``min_samples`` samples.

``auto`` (no ``[routes.auto]``): every keyed catalog model, cheapest first for a typical
request (1,000 prompt tokens, 256 output), unpriced last, catalog order for ties. A gateway
user who sends ``model: auto`` without configuring it has said nothing about quality, so the
only ranking the gateway can justify from data it has (prices, not capability scores) is
cost; it is predictable, matches the gateway's purpose, and the rest of the list is the
fallback chain. A user who wants a capable model first configures ``[routes.auto]`` or names
a model.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, localcontext
from typing import Any, Protocol, TypeGuard

from middleware.call import Target
from proxy.pricing import Price, PriceTable
from proxy.token_estimate import estimate_prompt_tokens

__all__ = [
    "AUTO_OUTPUT_TOKENS",
    "AUTO_PROMPT_TOKENS",
    "DEFAULT_OUTPUT_TOKENS",
    "MAX_ERROR_RATE",
    "TargetStatsLike",
    "auto_order",
    "cheapest",
    "expected_cost",
    "expected_output_tokens",
    "fastest",
]

DEFAULT_OUTPUT_TOKENS = 256
"""Expected output of a request whose body sets no smaller cap (see the module docstring)."""
AUTO_PROMPT_TOKENS = 1_000
AUTO_OUTPUT_TOKENS = 256
"""The typical request ``auto_order`` prices: a short chat turn with some context."""
MAX_ERROR_RATE = 0.9
"""``fastest`` clamps the error rate here, so a failing target's score is at most 10x its time."""

_MILLION = Decimal(1_000_000)
# In the order the APIs introduced them: Chat Completions' current name, its legacy one
# (also Anthropic Messages'), the Responses API's.
_CAP_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


class TargetStatsLike(Protocol):
    """What ``fastest`` reads of one target's live stats (``middleware.stores``' TargetStats).

    Properties, not plain attributes, so a frozen dataclass satisfies the protocol too.
    """

    @property
    def ewma_ttft_s(self) -> float | None: ...
    @property
    def ewma_latency_s(self) -> float | None: ...
    @property
    def error_rate(self) -> float: ...
    @property
    def samples(self) -> int: ...


def expected_cost(price: Price | None, prompt_tokens: int, output_tokens: int) -> Decimal | None:
    """USD for ``prompt_tokens`` at ``input`` plus ``output_tokens`` at ``output``; None if unpriced.

    Exact (no rounding): it only ranks targets. Cached-input and reasoning rates are not
    used: whether a prompt hits a cache, or how much of the output is reasoning, is not
    known before the call (and no catalog row prices reasoning apart from output).
    """
    if prompt_tokens < 0 or output_tokens < 0:
        raise ValueError("token counts must be >= 0")
    if price is None:
        return None
    with localcontext() as ctx:
        ctx.prec = 60  # integers times short decimals: exact far below 60 digits
        return (prompt_tokens * price.input + output_tokens * price.output) / _MILLION


def expected_output_tokens(body: Mapping[str, Any], default: int = DEFAULT_OUTPUT_TOKENS) -> int:
    """min(the body's first output cap that is a positive int, ``default``) x ``n`` choices."""
    expected = default
    for field in _CAP_FIELDS:
        cap = body.get(field)
        if _positive_int(cap):
            expected = min(cap, default)
            break
    choices = body.get("n")
    return expected * choices if _positive_int(choices) else expected


def cheapest(
    targets: Sequence[Target],
    body: Mapping[str, Any],
    prices: PriceTable,
    *,
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> list[Target]:
    """``targets`` by the expected cost of this request, cheapest first; unpriced last; stable."""
    output = expected_output_tokens(body, default_output_tokens)
    return _by_cost(targets, prices, estimate_prompt_tokens(body), output)


def auto_order(targets: Sequence[Target], prices: PriceTable) -> list[Target]:
    """The default ``auto`` order: cheapest for a typical request, unpriced last, stable."""
    return _by_cost(targets, prices, AUTO_PROMPT_TOKENS, AUTO_OUTPUT_TOKENS)


def _by_cost(targets: Sequence[Target], prices: PriceTable, prompt: int, output: int) -> list[Target]:
    costs = [expected_cost(prices.lookup(t.provider, t.model), prompt, output) for t in targets]
    # (False, cost) sorts before (True, 0): priced first. sorted() is stable, so ties keep order.
    order = sorted(range(len(targets)), key=lambda i: (costs[i] is None, costs[i] or 0))
    return [targets[i] for i in order]


def fastest(
    targets: Sequence[Target],
    stats: Sequence[TargetStatsLike | None],
    *,
    stream: bool,
    explore: float = 0.05,
    rng: Callable[[], float] = random.random,
    min_samples: int = 5,
) -> list[Target]:
    """``targets`` by live score (see the module docstring), best first; ``stats[i]`` is ``targets[i]``'s.

    ``rng`` (uniform in [0, 1)) is called at most once per call, and only when some targets
    are measured, some are not and ``explore > 0``. A draw r < explore picks unexplored
    target int(r / explore x k) of the k: r is then uniform in [0, explore), so one draw
    both decides and chooses.
    """
    if len(stats) != len(targets):
        raise ValueError(f"{len(targets)} targets but {len(stats)} stats")
    if not 0.0 <= explore <= 1.0:
        raise ValueError("explore must be between 0 and 1")
    if min_samples < 1:
        raise ValueError("min_samples must be >= 1")
    scores = [_score(s, stream=stream, min_samples=min_samples) for s in stats]
    measured = sorted((i for i, score in enumerate(scores) if score is not None), key=lambda i: scores[i] or 0.0)
    unexplored = [i for i, score in enumerate(scores) if score is None]
    if not measured:
        return list(targets)
    if unexplored and explore > 0:
        draw = rng()
        if draw < explore:
            # min(): guards a draw so close to explore that the product rounds up to k.
            chosen = unexplored.pop(min(int(draw / explore * len(unexplored)), len(unexplored) - 1))
            measured.insert(0, chosen)
    return [targets[i] for i in measured + unexplored]


def _score(stats: TargetStatsLike | None, *, stream: bool, min_samples: int) -> float | None:
    """Expected seconds to an answer, inflated by the error rate; None when not yet measured."""
    if stats is None or stats.samples < min_samples:
        return None
    first, second = (stats.ewma_ttft_s, stats.ewma_latency_s) if stream else (stats.ewma_latency_s, stats.ewma_ttft_s)
    time = first if _usable(first) else second
    if not _usable(time):
        return None
    # A NaN error rate would poison the comparison; treat an unreadable rate as no errors.
    rate = stats.error_rate if math.isfinite(stats.error_rate) else 0.0
    return time / (1.0 - min(max(rate, 0.0), MAX_ERROR_RATE))


def _usable(seconds: float | None) -> TypeGuard[float]:
    return seconds is not None and math.isfinite(seconds) and seconds >= 0


def _positive_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; `max_tokens: true` is not a cap.
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
