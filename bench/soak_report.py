"""The soak's report: the JSON summary of a run (its checks made on the way) and the Markdown printed from it.

README's "Operating Sluice → Soak" quotes the Markdown, and the JSON's keys are what
later runs are compared by: change either only together with the README.
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from soak_checks import (
    Checks,
    check_flat,
    check_gateway,
    check_keys,
    check_ledger,
    check_redis_outage,
    check_shutdown,
    kept_calls,
)
from soak_figures import latency_by_kind, percentile
from soak_run import Measured

IDLE_PHASES = ("baseline (idle, after warm-up)", "end (idle)")


def summarize(measured: Measured, args: argparse.Namespace) -> dict[str, Any]:
    """Make every check on `measured` and gather it all, samples included, as the JSON summary."""
    checks = Checks()
    flat = check_flat(checks, measured, args)
    ledger = check_ledger(checks, measured)
    leaks = check_keys(checks, measured)
    check_gateway(checks, measured, args)
    outage = check_redis_outage(checks, measured)
    check_shutdown(checks, measured)
    cpu_s, wall_s = measured.gateway_cpu_s
    return {
        "ok": checks.passed,
        "meta": measured.meta,
        "client": client_figures(measured),
        "gateway": {
            "cpu_share_during_soak": round(cpu_s / wall_s, 3) if wall_s else None,
            "shutdown_s": round(measured.stop_s, 2),
            "exit_code": measured.exit_code,
        },
        "upstream": measured.upstream,
        "ledger": ledger,
        "redis_outage": outage,
        "flat": flat,
        "samples": measured.samples,
        "checks": checks.rows,
        "leaks": leaks,
    }


def client_figures(measured: Measured) -> dict[str, Any]:
    """The calls as the client saw them: the mix, outcomes, statuses, send lag and latency (the JSON's `client`)."""
    calls = measured.calls
    lags = sorted(max(0.0, (c.began or c.planned) - c.planned) * 1000 for c in calls)
    return {
        "sent": len(calls),
        "warmup_calls": measured.warmup_calls,
        "streams": sum(c.stream for c in calls),
        "disconnecting": sum(c.disconnect for c in calls),
        "cache_on": sum(c.cache for c in calls),
        "outcomes": dict(Counter(c.outcome for c in calls)),
        "statuses": dict(Counter(str(c.status) for c in calls if c.status is not None)),
        "send_lag_ms": {
            "p50": percentile(lags, 50),
            "p99": percentile(lags, 99),
            "max": round(lags[-1], 1) if lags else None,
        },
        "latency_ms_ok": latency_by_kind(kept_calls(calls)),
        "client_errors": dict(Counter(c.detail for c in calls if c.outcome == "client_error")),
    }


def markdown(summary: dict[str, Any]) -> str:
    """The printed summary: the set-up, the samples table, the figures in prose, the checks table, the verdict."""
    lines = [_headline(summary["meta"]), ""]
    lines += _samples_table(summary)
    lines += ["", *_figures(summary)]
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c['check']} | {_verdict(c)} | {c['detail']} |" for c in summary["checks"]]
    lines += ["", f"**{'PASS' if summary['ok'] else 'FAIL'}**"]
    return "\n".join(lines)


def _headline(meta: dict[str, Any]) -> str:
    minutes = meta["duration_s"] / 60
    return (
        f"Soak: {minutes:g} min at {meta['rate']:g} req/s after a {meta['warmup_s']:g} s warm-up, "
        f"{meta['fault_rate']:.0%} upstream faults, {meta['disconnect_rate']:.0%} client disconnects, "
        + (f"Redis killed for {meta['redis_down_s']:g} s midway" if meta["redis_down_s"] else "Redis not killed")
        + f"; commit {meta['commit']}, {meta['started']}, "
        f"{meta['pinning']}, load average {meta['loadavg_start'][0]:.2f} at the start and "
        f"{meta['loadavg_end'][0]:.2f} at the end."
    )


def _samples_table(summary: dict[str, Any]) -> list[str]:
    """The idle baseline, the first load sample, the outage's samples, the end of load and the idle end."""
    flat, samples = summary["flat"], summary["samples"]
    chosen = [flat["baseline"]]
    chosen += [s for s in samples if s["phase"] == "load"][:1]
    chosen += [s for s in samples if s["phase"].startswith("mid") or s["phase"] == "Redis down"]
    chosen += [s for s in samples if s["phase"] == "end of load"] + [flat["end"]]
    lines = [
        "| sample | RSS MiB | fds (upstream / Redis pooled) | asyncio tasks | Redis (/readyz) |",
        "|---|---|---|---|---|",
    ]
    for s in chosen:
        label = s["phase"] if s["phase"] in IDLE_PHASES else f"{s['phase']}, +{s['t_s']:.0f} s"
        lines.append(
            f"| {label} | {s['rss_mib']:.1f} | {s['fds']} ({s['upstream']} / {s['redis']}) | {s['tasks']} "
            f"| {s['readyz_redis']} |"
        )
    return lines


def _figures(summary: dict[str, Any]) -> list[str]:
    """One paragraph each: memory and CPU, the calls, the ledger, attempts, the fake provider, the outage."""
    meta, client, flat, ledger = summary["meta"], summary["client"], summary["flat"], summary["ledger"]
    slope = flat["rss_slope_mib_per_10min"]
    lines = [
        f"RSS growth idle to idle: {flat['rss_growth_mib']:+.1f} MiB"
        + (f"; under load the trend is {slope:+.2f} MiB per 10 min" if slope is not None else "")
        + f". Gateway CPU during the soak: {summary['gateway']['cpu_share_during_soak']:.0%} of one core; "
        f"the client's own: {meta['client_cpu_share']:.0%}; send lag p99 {client['send_lag_ms']['p99']} ms.",
        "",
        f"Calls: {client['sent']} sent ({client['streams']} streams, {client['disconnecting']} disconnecting, "
        f"{client['cache_on']} cache-on); outcomes {_inline(client['outcomes'])}; "
        f"statuses {_inline(client['statuses'])}; "
        f"complete calls' latency p50/p99 {_latencies(client['latency_ms_ok'])}.",
        f"Ledger: {ledger['rows']} rows (by status {_inline(ledger['by_status'])}), "
        f"/sluice/usage {ledger['usage_calls']}, "
        f"access log {ledger['access_log_lines']} lines. Rows of the calls whose client left, by status: "
        f"{_inline(ledger['rows_of_disconnected_calls'])}; answered calls whose row has another status than the "
        f"client saw: {_inline(ledger['status_client_saw_vs_row'])}.",
        f"Attempts per call: {_inline(ledger['attempts'])}. Failed rows by error: "
        + "; ".join(f"{text} ({n})" for text, n in list(ledger["errors"].items())[:6])
        + ".",
    ]
    up = summary["upstream"]
    faults = {k.removeprefix("fault_"): v for k, v in up.items() if k.startswith("fault_")}
    lines.append(
        f"Fake provider: {up.get('requests', 0)} requests ({_inline(up.get('by_provider', {}))}), "
        f"faults {_inline(faults)}; stalls closed by the gateway {up.get('stall_closed', 0)}, "
        f"late {up.get('stall_late', 0)}; "
        f"answers cut short by the gateway (its client left) {up.get('aborted', 0)}."
    )
    outage = summary.get("redis_outage") or {}
    if outage:
        lines.append(
            f"Redis outage: killed at +{outage['killed_at_s']:g} s, "
            f"answering again {outage['back_after_s']:g} s later; "
            f"{outage['served_during']:.1%} of {outage['kept_calls_during']} kept calls in that window got a 200 "
            f"({outage['served_outside']:.1%} outside it; without X-Sluice-Cache "
            f"{outage['served_during_without_cache']:.1%} and {outage['served_outside_without_cache']:.1%}); "
            f"complete calls' latency p50/p99 in it "
            f"{_latencies(outage['latency_ms_during'])}, outside {_latencies(outage['latency_ms_outside'])}; "
            f"the ledger {'spooled' if outage['spooled'] else 'did not spool'} meanwhile."
        )
    return lines


def _latencies(by_kind: dict[str, Any]) -> str:
    plain, stream = by_kind["plain"], by_kind["stream"]
    return f"{plain['p50']}/{plain['p99']} ms (streams {stream['p50']}/{stream['p99']} ms)"


def _verdict(check: dict[str, Any]) -> str:
    if check["ok"]:
        return "pass"
    return "partial (advisory)" if check["advisory"] else "**FAIL**"


def _inline(counts: dict[str, Any]) -> str:
    """`{"a": 1, "b": 2}` as "a 1, b 2" (sorted by key), "-" when empty."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))) or "-"
