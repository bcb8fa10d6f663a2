"""Prometheus metrics from the ledger's records, rendered in the text format (SPEC §11).

Counters and histograms are kept per process in plain dicts (a scrape sums the
replicas): calls, upstream tries, fallbacks, 429s, cache outcomes, cost and
saved cost, latency and time to first token. Label values come from the
config and the catalog (provider, model, key id) and are capped, so
pass-through keys (one id per client key) cannot grow the series for ever.
No key appears here, only key ids. Three gauges are read at scrape time, not
per call: live asyncio tasks, and the process's RSS and open fds (Linux), so a
soak (bench/soak.py, RELIABILITY 28) can watch for leaks.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
from collections import defaultdict
from collections.abc import Mapping
from decimal import Decimal

from proxy.ledger.record import CallRecord

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
MAX_SERIES = 5000  # per metric; beyond it new label sets are folded into "other"

Labels = tuple[tuple[str, str], ...]


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_S, seconds)] += 1
        self.total += seconds


class Metrics:
    """The gateway's metrics; `observe(record)` per call, `render()` per scrape."""

    def __init__(self) -> None:
        self.counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self.money: dict[str, dict[Labels, Decimal]] = defaultdict(dict)
        self.histograms: dict[str, dict[Labels, _Histogram]] = defaultdict(dict)

    def observe(self, record: CallRecord) -> None:
        """Count one call (and its tries) as the ledger recorded it."""
        served = (("provider", record.provider or "none"), ("model", record.model or "none"))
        self._add("sluice_requests_total", (*served, ("status", str(record.status)), ("cache", record.cache_status)))
        self._add("sluice_cache_total", (("status", record.cache_status),))
        if record.attempts > 1:
            self._add("sluice_fallbacks_total", served)
        for row in record.tries:
            tried = (("provider", row.provider), ("model", row.model))
            self._add("sluice_upstream_attempts_total", (*tried, ("outcome", row.outcome)))
            if row.status == 429:
                self._add("sluice_rate_limited_total", tried)
            if row.possibly_billed:
                self._add("sluice_possibly_billed_total", tried)
        keyed = (*served, ("key", record.key_id or "none"))
        if record.cost_usd is not None:
            self._money("sluice_cost_usd_total", keyed, record.cost_usd)
        elif record.status < 400 and record.cache_status != "HIT":
            self._add("sluice_unpriced_total", served)
        if record.saved_usd is not None:
            self._money("sluice_saved_usd_total", keyed, record.saved_usd)
        by_provider = (("provider", record.provider or "none"),)
        self._observe("sluice_request_duration_seconds", by_provider, record.latency_ms / 1000)
        if record.ttft_ms is not None and record.stream:
            self._observe("sluice_time_to_first_token_seconds", by_provider, record.ttft_ms / 1000)

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        for name, series in sorted(self.counters.items()):
            lines.append(f"# TYPE {name} counter")
            lines.extend(f"{name}{_labels(labels)} {value:g}" for labels, value in series.items())
        for name, money in sorted(self.money.items()):
            lines.append(f"# TYPE {name} counter")
            lines.extend(f"{name}{_labels(labels)} {value}" for labels, value in money.items())
        for name, histograms in sorted(self.histograms.items()):
            lines.append(f"# TYPE {name} histogram")
            for labels, histogram in histograms.items():
                running = 0
                for bound, count in zip((*BUCKETS_S, float("inf")), histogram.counts, strict=True):
                    running += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {running}")
                lines.append(f"{name}_sum{_labels(labels)} {histogram.total:g}")
                lines.append(f"{name}_count{_labels(labels)} {running}")
        lines.extend(_process_gauges())
        return "\n".join(lines) + "\n"

    def _add(self, name: str, labels: Labels, amount: float = 1.0) -> None:
        series = self.counters[name]
        labels = _capped(series, labels)
        series[labels] = series.get(labels, 0.0) + amount

    def _money(self, name: str, labels: Labels, amount: Decimal) -> None:
        series = self.money[name]
        labels = _capped(series, labels)
        series[labels] = series.get(labels, Decimal(0)) + amount

    def _observe(self, name: str, labels: Labels, seconds: float) -> None:
        series = self.histograms[name]
        labels = _capped(series, labels)
        histogram = series.get(labels)
        if histogram is None:
            histogram = series[labels] = _Histogram()
        histogram.observe(seconds)


def judge_lines(stats: Mapping[str, int]) -> list[str]:
    """The A/B judge's counters (`proxy.experiments.judge.Judge.stats`) in the exposition format.

    `sluice_judge_samples_total{outcome}`: sampled, dropped (the queue was full),
    judged, failed; `sluice_judge_queued`: samples waiting now.
    """
    lines = ["# TYPE sluice_judge_samples_total counter"]
    lines += [
        f'sluice_judge_samples_total{{outcome="{k}"}} {stats[k]}' for k in ("sampled", "dropped", "judged", "failed")
    ]
    return [*lines, "# TYPE sluice_judge_queued gauge", f"sluice_judge_queued {stats['queued']}"]


def _process_gauges() -> list[str]:
    """`sluice_asyncio_tasks` (on an event loop), `process_resident_memory_bytes` and `process_open_fds` (Linux)."""
    lines: list[str] = []
    with contextlib.suppress(RuntimeError):  # RuntimeError: no running loop (render() called outside one)
        lines += ["# TYPE sluice_asyncio_tasks gauge", f"sluice_asyncio_tasks {len(asyncio.all_tasks())}"]
    try:
        with open("/proc/self/statm", "rb") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError):  # not Linux
        return lines
    lines += ["# TYPE process_resident_memory_bytes gauge", f"process_resident_memory_bytes {rss}"]
    lines += ["# TYPE process_open_fds gauge", f"process_open_fds {fds}"]
    return lines


def _capped(series: Mapping[Labels, object], labels: Labels) -> Labels:
    if labels in series or len(series) < MAX_SERIES:
        return labels
    return tuple((name, "other") for name, _ in labels)


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
