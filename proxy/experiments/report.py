"""What /sluice/experiments reports (SPEC §9, issue 8): per A/B route and variant, from the ledger's records.

Both ledgers feed the same `ExperimentAggregator` with `Sample`s (SQLite
selects the columns, Redis decodes its stream), so the two can never count
differently. Pure code, no I/O, and no import of `proxy.ledger` (which
imports this module for its `Ledger` protocol).

What counts where, per route:

- a variant's calls, errors, latency and cost: its records with a variant
  and `judge = False` (judge calls are the experiment's spend, not traffic);
- latency p50/p95: successful calls (status < 400), streams and non-streams
  together, so an error that fails fast does not flatter a variant (errors
  are counted apart); time to first token p50: successful streams;
- cost per call: the exact Decimal sum of the priced calls over their number
  (unpriced calls are unknown, not free, so they are left out of both);
- judge spend: the cost of every `judge = True` record of the route;
- judged pairs, wins, losses, ties: the verdict on a judge record (its
  `variant` against its `opponent`, counted for both), or given to
  `add_verdict`; the win rate counts a tie as half a win.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

ZERO = Decimal(0)
Z_95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal distribution
OUTCOMES = ("win", "loss", "tie")
_MIRRORED = {"win": "loss", "loss": "win", "tie": "tie"}  # the same verdict, seen from the opponent


class Sample(NamedTuple):
    """The columns of one ledger record that the report reads."""

    route: str | None
    variant: str | None
    status: int
    latency_ms: float
    ttft_ms: float | None
    stream: bool
    cost_usd: Decimal | None
    judge: bool
    verdict: str | None = None  # on a judge record: `variant` against `opponent` won, lost or tied
    opponent: str | None = None


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion `successes / n` (None when n is 0).

    Wilson rather than the normal approximation: it stays inside [0, 1] and
    is honest for the small samples a judge produces (8 of 10 wins gives
    about [0.49, 0.94], not [0.55, 1.05]). `successes` may be fractional
    (a tie counts half).
    """
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n, got {successes} of {n}")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, center - margin), min(1.0, center + margin)


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of `values`: an observed value, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass(slots=True)
class VariantStats:
    """One variant of one A/B route: its traffic and the judge's verdicts on it."""

    variant: str
    calls: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    ttfts_ms: list[float] = field(default_factory=list)
    priced_calls: int = 0
    cost_usd: Decimal = ZERO
    wins: int = 0
    losses: int = 0
    ties: int = 0

    def add(self, sample: Sample) -> None:
        """Count one call of this variant (not a judge call)."""
        self.calls += 1
        if sample.status >= 400:
            self.errors += 1
        else:
            self.latencies_ms.append(sample.latency_ms)
            if sample.stream and sample.ttft_ms is not None:
                self.ttfts_ms.append(sample.ttft_ms)
        if sample.cost_usd is not None:
            self.priced_calls += 1
            self.cost_usd += sample.cost_usd

    @property
    def judged(self) -> int:
        """Pairs the judge compared with this variant's answer in them."""
        return self.wins + self.losses + self.ties

    @property
    def win_rate(self) -> float | None:
        """Wins over judged pairs, a tie counting half; None before any verdict."""
        return (self.wins + self.ties / 2) / self.judged if self.judged else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: latencies in ms (0.1 ms), money as a string, null where there is nothing to say."""
        interval = wilson_interval(self.wins + self.ties / 2, self.judged)
        cost_per_call = self.cost_usd / self.priced_calls if self.priced_calls else None
        win_rate = self.win_rate
        return {
            "variant": self.variant,
            "calls": self.calls,
            "errors": self.errors,
            "latency_ms": {
                "p50": _ms(percentile(self.latencies_ms, 50)),
                "p95": _ms(percentile(self.latencies_ms, 95)),
            },
            "ttft_ms": {"p50": _ms(percentile(self.ttfts_ms, 50))},
            "cost_per_call_usd": None if cost_per_call is None else str(cost_per_call),
            "judged": self.judged,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "win_rate": None if win_rate is None else round(win_rate, 4),
            "win_rate_95": None if interval is None else [round(interval[0], 4), round(interval[1], 4)],
        }


@dataclass(slots=True)
class ExperimentRow:
    """One A/B route: its variants (sorted by name) and what its judge spent."""

    route: str
    variants: dict[str, VariantStats] = field(default_factory=dict)
    judge_usd: Decimal = ZERO

    def variant(self, name: str) -> VariantStats:
        """The stats of variant `name`, created empty on first use."""
        stats = self.variants.get(name)
        if stats is None:
            stats = self.variants[name] = VariantStats(name)
        return stats

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, variants in name order."""
        return {
            "route": self.route,
            "variants": [self.variants[name].as_dict() for name in sorted(self.variants)],
            "judge_usd": str(self.judge_usd),
        }


class ExperimentAggregator:
    """Counts `Sample`s (and judge verdicts) into one `ExperimentRow` per route."""

    def __init__(self) -> None:
        self._routes: dict[str, ExperimentRow] = {}

    def _row(self, route: str) -> ExperimentRow:
        row = self._routes.get(route)
        if row is None:
            row = self._routes[route] = ExperimentRow(route)
        return row

    def add(self, sample: Sample) -> None:
        """Count one record: a judge call as its route's judge spend, an A/B call in its variant; others ignored."""
        if sample.route is None:
            return
        if sample.judge:
            if sample.cost_usd is not None:
                self._row(sample.route).judge_usd += sample.cost_usd
            else:
                self._row(sample.route)  # an unpriced judge call still shows the route exists
            if sample.verdict in OUTCOMES and sample.variant is not None and sample.opponent is not None:
                self.add_verdict(sample.route, sample.variant, sample.verdict)
                self.add_verdict(sample.route, sample.opponent, _MIRRORED[sample.verdict])
        elif sample.variant is not None:
            self._row(sample.route).variant(sample.variant).add(sample)

    def add_verdict(self, route: str, variant: str, outcome: str) -> None:
        """Count one judged pair for `variant` of `route`: "win", "loss" or "tie" (ValueError otherwise)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown verdict {outcome!r}; expected one of {', '.join(OUTCOMES)}")
        stats = self._row(route).variant(variant)
        if outcome == "win":
            stats.wins += 1
        elif outcome == "loss":
            stats.losses += 1
        else:
            stats.ties += 1

    def rows(self) -> list[ExperimentRow]:
        """The routes counted so far, in name order."""
        return [self._routes[name] for name in sorted(self._routes)]


def experiment_rows(samples: Iterable[Sample]) -> list[ExperimentRow]:
    """The report of `samples`: one row per route, in name order."""
    aggregator = ExperimentAggregator()
    for sample in samples:
        aggregator.add(sample)
    return aggregator.rows()
