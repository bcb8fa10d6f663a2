"""The /sluice/experiments report: the Wilson interval, percentiles, and what counts where."""

from __future__ import annotations

from decimal import Decimal

import pytest

from proxy.experiments.report import ExperimentAggregator, Sample, experiment_rows, percentile, wilson_interval


def sample(variant: str | None = "a", route: str | None = "trial", **fields) -> Sample:
    values = {
        "status": 200,
        "latency_ms": 100.0,
        "ttft_ms": None,
        "stream": False,
        "cost_usd": Decimal("0.001"),
        "judge": False,
    }
    values.update(fields)
    return Sample(route=route, variant=variant, **values)


@pytest.mark.parametrize(
    ("wins", "n", "low", "high"),
    [
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
        (1, 1, 0.2065, 1.0),
        (81, 263, 0.2553, 0.3662),  # Newcombe (1998), Statistics in Medicine 17:857, example: 0.2553-0.3662
    ],
)
def test_the_wilson_interval_matches_known_values(wins, n, low, high):
    lo, hi = wilson_interval(wins, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_the_wilson_interval_is_none_without_trials_and_refuses_impossible_counts():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError, match="between 0 and n"):
        wilson_interval(11, 10)


def test_the_interval_narrows_as_judged_pairs_grow_and_always_holds_the_rate():
    widths = []
    for n in (10, 100, 1000):
        lo, hi = wilson_interval(0.7 * n, n)
        assert lo < 0.7 < hi
        widths.append(hi - lo)
    assert widths == sorted(widths, reverse=True)


def test_percentiles_are_nearest_rank_observed_values():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([], 50) is None


def test_each_variant_counts_its_calls_errors_latency_ttft_and_cost():
    samples = [
        *(sample("a", latency_ms=float(ms)) for ms in range(10, 110, 10)),  # 10..100
        sample("a", status=502, latency_ms=1.0, cost_usd=None),  # an error: counted, not in latency
        sample("a", cost_usd=None, latency_ms=50.0),  # unpriced: not free, left out of cost per call
        sample("b", stream=True, ttft_ms=20.0, latency_ms=200.0, cost_usd=Decimal("0.003")),
        sample("b", stream=True, ttft_ms=40.0, latency_ms=400.0, cost_usd=Decimal("0.004")),
    ]
    [row] = experiment_rows(samples)
    report = row.as_dict()
    assert report["route"] == "trial"
    a, b = report["variants"]
    assert (a["variant"], a["calls"], a["errors"]) == ("a", 12, 1)
    assert a["latency_ms"] == {"p50": 50.0, "p95": 100.0}
    assert a["ttft_ms"] == {"p50": None}
    assert Decimal(a["cost_per_call_usd"]) == Decimal("0.001")
    assert (b["calls"], b["errors"], b["latency_ms"]["p50"], b["ttft_ms"]["p50"]) == (2, 0, 200.0, 20.0)
    assert b["cost_per_call_usd"] == "0.0035"
    for variant in (a, b):
        assert (variant["judged"], variant["wins"], variant["losses"], variant["ties"]) == (0, 0, 0, 0)
        assert variant["win_rate"] is None
        assert variant["win_rate_95"] is None
    assert report["judge_usd"] == "0"


def test_judge_calls_are_the_routes_spend_never_the_variants_traffic():
    samples = [
        sample("a"),
        sample("b", judge=True, cost_usd=Decimal("0.02"), latency_ms=9000.0),  # the other variant, for the judge
        sample(None, judge=True, cost_usd=Decimal("0.01")),  # the judge model itself
        sample(None, judge=True, cost_usd=None),  # unpriced: nothing to add
    ]
    [row] = experiment_rows(samples)
    report = row.as_dict()
    assert [v["variant"] for v in report["variants"]] == ["a"]
    assert report["variants"][0]["latency_ms"]["p95"] == 100.0
    assert Decimal(report["judge_usd"]) == Decimal("0.03")


def test_calls_without_a_variant_or_a_route_are_not_experiments():
    assert experiment_rows([sample(None), sample("a", route=None)]) == []


def test_routes_and_variants_come_in_name_order():
    rows = experiment_rows([sample("z", route="r2"), sample("b", route="r1"), sample("a", route="r1")])
    assert [row.route for row in rows] == ["r1", "r2"]
    assert [v["variant"] for v in rows[0].as_dict()["variants"]] == ["a", "b"]


def test_verdicts_give_the_win_rate_and_its_interval_a_tie_counting_half():
    aggregator = ExperimentAggregator()
    aggregator.add(sample("a"))
    for outcome in ["win"] * 7 + ["loss"] * 2 + ["tie"] * 2:
        aggregator.add_verdict("trial", "a", outcome)
    [row] = aggregator.rows()
    a = row.as_dict()["variants"][0]
    assert (a["judged"], a["wins"], a["losses"], a["ties"]) == (11, 7, 2, 2)
    assert a["win_rate"] == pytest.approx(8 / 11, abs=1e-4)
    lo, hi = wilson_interval(8, 11)
    assert a["win_rate_95"] == [round(lo, 4), round(hi, 4)]
    with pytest.raises(ValueError, match="unknown verdict"):
        aggregator.add_verdict("trial", "a", "draw")
