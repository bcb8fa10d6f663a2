"""The soak's checks: each group judges part of what a run measured and returns the figures behind its verdicts.

The groups run in the order of the printed table: flat, the ledger, keys, the gateway's
behaviour, the Redis outage, SIGTERM. A failed check fails the run unless it is advisory
(printed as "partial").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from soak_client import Call
from soak_figures import gc_growth, latency_by_kind, rss_slope, served_share
from soak_run import Measured


class Checks:
    """The checks made so far, in order, as the JSON's `checks` rows."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, ok: bool, detail: str, advisory: bool = False) -> None:
        """A check's result; an advisory one is reported (partial) but does not fail the run."""
        self.rows.append({"check": name, "ok": bool(ok), "advisory": advisory, "detail": detail})

    @property
    def passed(self) -> bool:
        """Whether every check that is not advisory passed."""
        return all(c["ok"] or c["advisory"] for c in self.rows)


def check_flat(checks: Checks, measured: Measured, args: argparse.Namespace) -> dict[str, Any]:
    """RSS, tasks, fds, CLOSE_WAIT and the pools back where the idle baseline had them; the JSON's `flat`."""
    base, end = measured.baseline, measured.end
    growth = end["rss_mib"] - base["rss_mib"]
    checks.add(
        "RSS flat",
        growth <= args.rss_budget_mib,
        f"{growth:+.1f} MiB idle to idle (budget {args.rss_budget_mib:g})",
    )
    if base["tasks"] is not None and end["tasks"] is not None:
        checks.add(
            "asyncio tasks back to baseline",
            end["tasks"] <= base["tasks"] + args.task_slack,
            f"{base['tasks']} -> {end['tasks']} (slack {args.task_slack})",
        )
    else:
        checks.add("asyncio tasks back to baseline", False, "sluice_asyncio_tasks missing from /metrics")
    non_pool = [s["fds"] - s["upstream"] - s["redis"] for s in (base, end)]
    checks.add(
        "fds back to baseline (pooled connections aside)",
        non_pool[1] <= non_pool[0] + args.fd_slack,
        f"{non_pool[0]} -> {non_pool[1]} (all fds {base['fds']} -> {end['fds']}; slack {args.fd_slack})",
    )
    checks.add(
        "no client or upstream socket left in CLOSE_WAIT", end["close_wait"] == 0, f"{end['close_wait']} at the end"
    )
    checks.add(
        "stale Redis connections dropped after the restart",
        end["close_wait_redis"] == 0,
        f"{end['close_wait_redis']} sockets to the killed Redis still in CLOSE_WAIT at the end "
        f"({max((x['close_wait_redis'] for x in measured.samples), default=0)} at most)",
        advisory=True,  # redis-py drops a stale pooled connection only when it next hands it out
    )
    checks.add(
        "upstream pool: every socket is open at the provider too",
        end["upstream_open"] is not None and end["upstream"] <= end["upstream_open"],
        f"gateway {end['upstream']} sockets, provider sees {end['upstream_open']}",
    )
    checks.add(
        "Redis pool: every live socket is open at Redis too",
        end["redis_clients"] is not None and end["redis"] - end["close_wait_redis"] <= end["redis_clients"],
        f"gateway {end['redis'] - end['close_wait_redis']} live sockets (and {end['close_wait_redis']} stale), "
        f"Redis sees {end['redis_clients']} clients",
    )
    checks.add(
        "nothing in flight at the provider",
        end["upstream_in_flight"] == 0,
        f"{end['upstream_in_flight']} requests in flight at the end",
    )
    return {
        "baseline": base,
        "end": end,
        "rss_growth_mib": round(growth, 2),
        "rss_slope_mib_per_10min": rss_slope([s for s in measured.samples if s["phase"] == "load"]),
        "gc_probe": gc_growth(base.get("gc"), end.get("gc")),
    }


def check_ledger(checks: Checks, measured: Measured) -> dict[str, Any]:
    """One ledger row per call sent, and /sluice/usage, the metrics and the access log agree; the JSON's `ledger`."""
    calls = measured.calls
    sent = len(calls)
    final = measured.reread or measured.ledger
    rows = final.rows
    ids: Counter[Any] = Counter(r.get("request_id") for r in rows)
    mine = {c.request_id for c in calls}
    missing = sorted(mine - set(ids), key=_id_order)
    extra = sorted(set(ids) - mine)
    duplicated = sorted((i for i, n in ids.items() if n > 1), key=_id_order)
    status_of = {r.get("request_id"): r.get("status") for r in rows}
    disconnected_rows = Counter(str(status_of.get(c.request_id)) for c in calls if c.outcome == "disconnected")
    answered = [c for c in calls if c.outcome in ("ok", "http_error", "truncated")]
    row_errors = Counter(f"{r.get('status')}: {r.get('error')}" for r in rows if (r.get("status") or 0) >= 400)
    mismatched = Counter(
        f"{c.status}->{status_of.get(c.request_id)}" for c in answered if c.status != status_of.get(c.request_id)
    )
    checks.add(
        "ledger: one row per call sent",
        len(rows) == sent and not missing and not extra and not duplicated,
        f"{sent} calls, {len(rows)} rows; missing {len(missing)}, extra {len(extra)}, duplicated {len(duplicated)}"
        + (" (after a restart)" if measured.reread else ""),
    )
    checks.add(
        "ledger: /sluice/usage agrees",
        final.usage_calls == sent,
        f"usage totals.calls {final.usage_calls} "
        f"(live read: {measured.ledger.usage_calls}, rows {len(measured.ledger.rows)})",
    )
    requests_total = measured.end.get("requests_total")
    checks.add(
        "metrics: sluice_requests_total agrees",
        requests_total == sent,
        f"sluice_requests_total {requests_total}",
    )
    access = access_log_ids(measured.folder, f"soak-{measured.run_id}-")
    checks.add(
        "access log: one line per call",
        sum(access.values()) == sent and len(access) == sent,
        f"{sum(access.values())} lines, {len(access)} distinct ids",
    )
    return {
        "rows": len(rows),
        "usage_calls": final.usage_calls,
        "live_rows": len(measured.ledger.rows),
        "reread_after_restart": measured.reread is not None,
        "by_status": dict(Counter(str(r.get("status")) for r in rows)),
        "missing": missing[:20],
        "extra": extra[:20],
        "duplicated": duplicated[:20],
        "access_log_lines": sum(access.values()),
        "rows_of_disconnected_calls": dict(disconnected_rows),
        "attempts": dict(Counter(str(r.get("attempts")) for r in rows)),
        "errors": dict(row_errors.most_common(12)),
        "status_client_saw_vs_row": dict(mismatched),
    }


def check_keys(checks: Checks, measured: Measured) -> dict[str, int]:
    """No key in any file the run left, the ledger, /metrics or an answer; the JSON's `leaks` (where: count)."""
    needles = measured.needles

    def found_in(where: str, data: bytes) -> dict[str, int]:
        return {f"{where} ({name})": n for name, n in count_needles(data, needles).items()}

    leaks = scan_for_keys(measured.folder, needles)
    leaks.update(found_in("ledger rows / usage", (measured.reread or measured.ledger).raw))
    if measured.reread:
        leaks.update(found_in("ledger rows, live read", measured.ledger.raw))
    leaks.update(found_in("/metrics", measured.metrics_text))
    leaks.update({f"answers to the client ({name})": n for name, n in measured.client_leaks.items()})
    checks.add("no key in logs, ledger, Redis, spool, metrics or answers", not leaks, _describe_leaks(leaks))
    return leaks


def check_gateway(checks: Checks, measured: Measured, args: argparse.Namespace) -> None:
    """No traceback, stalls closed, each provider's own key, no hang, enough 200s, answers of the contract."""
    calls, upstream = measured.calls, measured.upstream
    tracebacks = count_in_logs(measured.folder, b"Traceback (most recent call last)")
    checks.add("no traceback in the gateway's logs", tracebacks == 0, f"{tracebacks} tracebacks")
    checks.add(
        "stalled upstream requests closed by the gateway",
        upstream.get("stall_late", 0) == 0,
        f"{upstream.get('stall_closed', 0)} closed (mean {upstream.get('stall_close_ms_mean')} ms, "
        f"max {upstream.get('stall_close_ms_max')} ms after the stall began), "
        f"{upstream.get('stall_late', 0)} answered late",
    )
    checks.add(
        "every provider got its own key", upstream.get("wrong_key", 0) == 0, f"{upstream.get('wrong_key', 0)} wrong"
    )
    timeouts = sum(1 for c in calls if c.outcome == "client_timeout")
    checks.add("no call hung", timeouts == 0, f"{timeouts} calls over {args.client_timeout_s:g} s")
    kept = kept_calls(calls)
    served = served_share(kept)
    checks.add("calls served", served >= args.min_served, f"{served:.1%} of {len(kept)} kept calls got a 200")
    # Upstream failures must reach the client as 502s, all targets cooling as a 429: a reset or a 500/503 is a bug.
    unanswered = Counter(c.outcome for c in calls if c.outcome == "client_error")
    unanswered.update(str(c.status) for c in calls if c.status is not None and c.status not in (200, 429, 502, 504))
    checks.add(
        "every call got an answer of the gateway's contract",
        not unanswered,
        "none reset without an answer, no 500 or 503"
        if not unanswered
        else ", ".join(f"{k}: {n}" for k, n in unanswered.items()),
    )


def check_redis_outage(checks: Checks, measured: Measured) -> dict[str, Any]:
    """/readyz saw Redis down, and calls were served about as often meanwhile; the JSON's `redis_outage`."""
    if "redis_killed" not in measured.events:
        return {}
    t0, t1 = measured.events["redis_killed"], measured.events["redis_back"]
    kept = kept_calls(measured.calls)
    during = [c for c in kept if t0 <= c.planned <= t1]
    outside = [c for c in kept if c.planned < t0 or c.planned > t1 + 5]
    # Redis down should not cost calls of its own. Compared on the calls without X-Sluice-Cache:
    # with the cache down the would-be hits go upstream and meet its faults (fail open, as meant),
    # which costs the cache-on calls, and a little the others through the extra upstream load.
    plain_in = [c for c in during if not c.cache]
    plain_out = [c for c in outside if not c.cache]
    plain_share, plain_share_out = served_share(plain_in), served_share(plain_out)
    margin = max(0.02, 3 * math.sqrt(plain_share_out * (1 - plain_share_out) / max(1, len(plain_in))))
    outage: dict[str, Any] = {
        "killed_at_s": round(t0 - measured.load_start, 1),
        "down_s": round(measured.events["redis_restarting"] - t0, 1),
        "back_after_s": round(t1 - t0, 1),
        "kept_calls_during": len(during),
        "served_during": round(served_share(during), 4),
        "served_outside": round(served_share(outside), 4),
        "served_during_without_cache": round(plain_share, 4),
        "served_outside_without_cache": round(plain_share_out, 4),
        "statuses_during": dict(Counter(str(c.status) for c in during)),
        "latency_ms_during": latency_by_kind(during),
        "latency_ms_outside": latency_by_kind(outside),
        "readyz_during": [s["readyz_redis"] for s in measured.samples if s["phase"] == "Redis down"],
        "spooled": count_in_logs(measured.folder, b"records go to the spool") > 0,  # the gateway's warning
    }
    checks.add(
        "/readyz reported Redis down during the outage",
        "down" in outage["readyz_during"],
        f"/readyz said redis: {', '.join(map(str, outage['readyz_during'])) or '(not sampled)'}",
        advisory=True,
    )
    checks.add(
        "calls served while Redis was down (no cache asked)",
        plain_share >= plain_share_out - margin,
        f"{plain_share:.1%} of {len(plain_in)} kept calls without X-Sluice-Cache got a 200, "
        f"{plain_share_out:.1%} outside the outage ({margin:.1%} less allowed: 3 s.d.)",
        advisory=True,
    )
    return outage


def check_shutdown(checks: Checks, measured: Measured) -> None:
    """SIGTERM ended the gateway with exit code 0."""
    checks.add(
        "SIGTERM: exit code 0", measured.exit_code == 0, f"exit code {measured.exit_code} after {measured.stop_s:.1f} s"
    )


def kept_calls(calls: list[Call]) -> list[Call]:
    """The calls whose client did not leave early: the ones that can be judged by their status."""
    return [c for c in calls if not c.disconnect]


def _id_order(request_id: str | None) -> int:
    """A request id's call number (soak-<run>-<n>), for listing ids in the order sent."""
    with contextlib.suppress(ValueError, AttributeError, IndexError):
        return int(str(request_id).rsplit("-", 1)[1])
    return -1


# ---------------------------------------------------------------- the run's files


def count_needles(data: bytes, needles: dict[str, bytes]) -> dict[str, int]:
    """How often each needle found in `data` occurs there."""
    return {name: data.count(needle) for name, needle in needles.items() if needle in data}


def _files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield path


def scan_for_keys(folder: Path, needles: dict[str, bytes]) -> dict[str, int]:
    """Every file the run left (gateway and provider logs, Redis's AOF and dump, the ledger spool)."""
    found: dict[str, int] = {}
    for path in _files(folder):
        with contextlib.suppress(OSError):
            data = path.read_bytes()
            for name, count in count_needles(data, needles).items():
                found[f"{path.relative_to(folder)} ({name})"] = count
    return found


def count_in_logs(folder: Path, needle: bytes) -> int:
    """How often `needle` occurs in the gateway's stdout and stderr files (every run of it)."""
    total = 0
    for path in folder.glob("gateway*.*"):
        with contextlib.suppress(OSError):
            total += path.read_bytes().count(needle)
    return total


def access_log_ids(folder: Path, prefix: str) -> Counter[str]:
    """Request ids of the access log lines (JSON, one per call) on the gateway's first run's stdout."""
    ids: Counter[str] = Counter()
    with contextlib.suppress(OSError), (folder / "gateway.out").open("rb") as lines:
        for line in lines:
            if not line.startswith(b"{"):
                continue
            with contextlib.suppress(ValueError):
                request_id = json.loads(line).get("request_id", "")
                if request_id.startswith(prefix):
                    ids[request_id] += 1
    return ids


def _describe_leaks(leaks: dict[str, int]) -> str:
    if not leaks:
        return "none found"
    return "; ".join(f"{where}: {n}" for where, n in sorted(leaks.items())[:8]) + (" ..." if len(leaks) > 8 else "")
