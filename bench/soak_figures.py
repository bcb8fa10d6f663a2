"""Figures over the soak's calls and samples: served shares, percentiles, latency by kind, the RSS trend, gc growth."""

from __future__ import annotations

import contextlib
import statistics
from collections import Counter
from collections.abc import Iterable
from typing import Any

from soak_client import Call


def served_share(calls: list[Call]) -> float:
    """The share of `calls` answered 200 (0 when there are none)."""
    return sum(1 for c in calls if c.status == 200) / max(1, len(calls))


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank `q`th percentile of sorted `values`, to 0.1."""
    if not values:
        return None
    return round(values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))], 1)


def latency_summary(calls: Iterable[Call]) -> dict[str, Any]:
    """How many calls, and the p50 and p99 of their time from sent to done (ms)."""
    times = sorted((c.done - c.sent) * 1000 for c in calls if c.done is not None and c.sent is not None)
    return {"n": len(times), "p50": percentile(times, 50), "p99": percentile(times, 99)}


def latency_by_kind(calls: Iterable[Call]) -> dict[str, Any]:
    """Latency of the complete calls without X-Sluice-Cache (no hits), streams and the others apart."""
    complete = [c for c in calls if c.outcome == "ok" and not c.cache]
    return {
        "plain": latency_summary(c for c in complete if not c.stream),
        "stream": latency_summary(c for c in complete if c.stream),
    }


def rss_slope(samples: list[dict[str, Any]]) -> float | None:
    """RSS growth per 10 minutes under load, by least squares over the samples (None with fewer than 3)."""
    points = [(s["t_s"], s["rss_mib"]) for s in samples if s.get("t_s") is not None]
    if len(points) < 3:
        return None
    with contextlib.suppress(statistics.StatisticsError):
        slope = statistics.linear_regression([p[0] for p in points], [p[1] for p in points]).slope
        return round(slope * 600, 2)
    return None


def gc_growth(base: dict[str, Any] | None, end: dict[str, Any] | None) -> dict[str, Any] | None:
    """--gc-probe: the live objects at both idle points (after gc.collect()) and the types that grew most."""
    if not base or not end:
        return None
    before, after = Counter(base["types"]), Counter(end["types"])
    grown = {name: after[name] - before[name] for name in after if after[name] > before[name]}
    return {
        "objects_after_gc": [base["objects_after"], end["objects_after"]],
        "collected": [base["collected"], end["collected"]],
        "grown_types": dict(sorted(grown.items(), key=lambda kv: -kv[1])[:15]),
        "garbage_at_end": end["garbage"],
    }
