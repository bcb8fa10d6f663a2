"""The full-stack figures of the Sluice benchmark: gateway keys and a two-target fallback route.

    .venv/bin/python bench/run.py --stack full     # just these (and what they are compared with)
    .venv/bin/python bench/run.py                  # everything: foundation, full stack, racing, cache

The foundation (run.py's own figures) is the gateway in pass-through mode with one
target: `"model": "bench/m"`, no `[auth]`. The full stack adds what a real deployment
runs on every call:

- `[auth]` with one gateway key, read from the environment (`key = "env:SLUICE_BENCH_KEY"`,
  set in `sluice serve`'s environment only), which the client sends as its bearer key;
- a route `[routes.bench] targets = ["bench/m", "bench2/m"]` (strategy fallback): the
  request says `"model": "bench"`, so every call goes through the fallback strategy's
  plan (target states, retry budget, the held response start) and the backoff layer,
  and is answered by its first, healthy target. `bench2` is a second provider on the
  same fake upstream; it is never tried (checked: every answer names `bench`).

Per repeat, `one_repeat` starts a foundation gateway and a full-stack gateway side by
side on the gateway's CPU and measures, in one loop, one request each in turn: straight
to the upstream, through the foundation, through the full stack. So the c=1 and stream
figures of both come from the same minutes; their "added" is each minus straight to the
upstream. At c=32, wrk runs against the full stack; the foundation's c=32 figures are
run.py's of the same repeat (with `--stack both`, the default), or measured here
(`--stack full`). The judged line (issue 5, item 9): the full stack's overhead within
10% of the foundation's (added p50 and p99 at c=1, CPU per request at c=32: ≤ 1.10x;
req/s at c=32: ≥ 0.90x), on the medians of the per-repeat ratios.

Before measuring, the set-up is checked: a call without the key is refused (401, auth
is on) and a call with it is answered by `bench` (the first target).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
from pathlib import Path
from typing import Any

import run

KEY_ENV = "SLUICE_BENCH_KEY"
KEY = "sk-sluice-bench-gateway-key"
_PROVIDER = re.compile(rb"\r\n(?i:x-sluice-provider):[ \t]*([^\r\n]*)")

# key, label, unit, judged line of full ÷ foundation as (comparison, ratio) or None
Row = tuple[str, str, str, tuple[str, float] | None]
ROWS: list[Row] = [
    ("added_p50_ms", "added latency p50, c=1", "ms", ("<=", 1.10)),
    ("added_p99_ms", "added latency p99, c=1", "ms", ("<=", 1.10)),
    ("stream_first_added_ms", "stream: added time to first chunk", "ms", None),
    ("stream_per_chunk_added_ms", "stream: added time per chunk (back to back)", "ms", None),
    ("rps_c32", "req/s at c=32 (gateway on one core)", "req/s", (">=", 0.90)),
    ("p99_c32_ms", "p99 at c=32", "ms", None),
    ("cpu_ms_per_req", "gateway CPU per request (c=32)", "ms", ("<=", 1.10)),
    ("cpu_ms_per_req_c1", "gateway CPU per request (c=1)", "ms", None),
    ("startup_s", "start-up: spawn to first 200 on /healthz", "s", None),
    ("rss_after_load_mib", "gateway RSS after load", "MiB", None),
]
# The foundation's c=32 figures taken from run.py's repeat (its c=1 and stream figures are measured here).
FROM_RUN = ("rps_c32", "p99_c32_ms", "cpu_ms_per_req", "wrk_errors", "ref_cpu_ms_per_req")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("full stack (bench/stack.py)")
    group.add_argument(
        "--stack",
        choices=("foundation", "full", "both"),
        default="both",
        help="foundation: run.py's pass-through figures; full: gateway keys + a two-target fallback route, "
        "beside a foundation gateway; both (default): the two, the full stack compared with the foundation",
    )


def full_body(stream: bool = False) -> bytes:
    """run.py's request body with `"model": "bench"`, the fallback route (a function: run.py imports this module)."""
    return (
        run.BODY.replace(b'"bench/m"', b'"bench"') if not stream else run.STREAM_BODY.replace(b'"bench/m"', b'"bench"')
    )


def write_config(folder: Path, upstream_port: int) -> Path:
    """run.py's config plus [auth] (the key from the environment), a second provider and the fallback route."""
    path = folder / "full-stack.toml"
    base = run.write_config(folder, upstream_port).read_text()
    path.write_text(
        f'[auth]\nkeys = [{{ id = "bench", key = "env:{KEY_ENV}" }}]\n\n'
        + base
        + f'\n[providers.bench2]\nbase_url = "http://{run.HOST}:{upstream_port}/v1"\napi_key = "sk-bench"\n'
        'models = ["m"]\n\n[routes.bench]\ntargets = ["bench/m", "bench2/m"]\n'
    )
    return path


def check_setup(port: int) -> dict[str, Any]:
    """Auth is on (no key: 401) and the route's first target answers (X-Sluice-Provider: bench)."""
    out: dict[str, Any] = {}
    for name, key in (("status_without_key", "sk-not-a-gateway-key"), ("status_with_key", KEY)):
        client = run.Client(port, run.http_request(port, full_body(), key=key))
        try:
            response = client.exchange()[3]
        finally:
            client.close()
        out[name] = int(response[9:12])
        if key == KEY:
            found = _PROVIDER.search(response[: response.find(b"\r\n\r\n") + 2])
            out["answered_by"] = found.group(1).decode() if found else ""
    out["setup_ok"] = out == {"status_without_key": 401, "status_with_key": 200, "answered_by": "bench"}
    if not out["setup_ok"]:
        raise RuntimeError(f"the full-stack gateway is not set up as meant: {out}")
    return out


def both_orders(clients: list[run.Client], count: int, chunks: int | None) -> tuple[list[list[run.Timing]], int]:
    """run.interleaved over [direct, foundation, full], half the rounds with the two gateways the other way round
    (so neither always follows the direct call); the timings in that order, and the warm-up calls per side."""
    half = count // 2
    first = run.interleaved(clients, half, 45.0, chunks)
    second = run.interleaved([clients[0], clients[2], clients[1]], count - half, 45.0, chunks)
    warm = max(20, half // 20) + max(20, (count - half) // 20)
    return [first[0] + second[0], first[1] + second[2], first[2] + second[1]], warm


def measure_c1(upstream_port: int, ports: tuple[int, int], pids: tuple[int, int], count: int) -> dict[str, float]:
    """One request each in turn: direct, foundation, full stack (see both_orders); added p50/p99 and CPU."""
    clients = [
        run.Client(upstream_port, run.http_request(upstream_port, run.BODY)),
        run.Client(ports[0], run.http_request(ports[0], run.BODY)),
        run.Client(ports[1], run.http_request(ports[1], full_body(), key=KEY)),
    ]
    try:
        before = [run.cpu_ns(pid) for pid in pids]
        sides, warm = both_orders(clients, count, None)
        cpu_ms = [(run.cpu_ns(pid) - b) / 1e6 for pid, b in zip(pids, before, strict=True)]
    finally:
        for client in clients:
            client.close()
    latencies = [[(done - sent) * 1000 for sent, _, done in side] for side in sides]
    direct = latencies[0]
    out = {"direct_p50_ms": run.percentile(direct, 50), "direct_p99_ms": run.percentile(direct, 99)}
    for name, side, cpu in zip(("foundation", "full"), latencies[1:], cpu_ms, strict=True):
        out[f"{name}_p50_ms"] = run.percentile(side, 50)
        out[f"{name}_p99_ms"] = run.percentile(side, 99)
        out[f"{name}_added_p50_ms"] = out[f"{name}_p50_ms"] - out["direct_p50_ms"]
        out[f"{name}_added_p99_ms"] = out[f"{name}_p99_ms"] - out["direct_p99_ms"]
        out[f"{name}_cpu_ms_per_req_c1"] = cpu / (len(side) + warm)  # the warm-up calls are in the CPU time
    return out


def measure_stream(upstream_port: int, ports: tuple[int, int], count: int) -> dict[str, float]:
    """run.measure_stream's two figures, the three sides in turn (see both_orders)."""
    out: dict[str, float] = {}
    timings = {}
    for query in ("?hold_ms=1", ""):
        clients = [
            run.Client(upstream_port, run.http_request(upstream_port, run.STREAM_BODY, query)),
            run.Client(ports[0], run.http_request(ports[0], run.STREAM_BODY, query)),
            run.Client(ports[1], run.http_request(ports[1], full_body(stream=True), query, key=KEY)),
        ]
        try:
            timings[query] = both_orders(clients, count, run.CHUNKS)[0]
        finally:
            for client in clients:
                client.close()
    for name, held, burst in zip(("direct", "foundation", "full"), timings["?hold_ms=1"], timings[""], strict=True):
        out[f"{name}_first_ms"] = statistics.median((first - sent) * 1000 for sent, first, _ in held)
        out[f"{name}_span_ms"] = statistics.median((done - first) * 1000 for _, first, done in burst)
    for name in ("foundation", "full"):
        out[f"{name}_stream_first_added_ms"] = out[f"{name}_first_ms"] - out["direct_first_ms"]
        span = out[f"{name}_span_ms"] - out["direct_span_ms"]
        out[f"{name}_stream_per_chunk_added_ms"] = span / (run.CHUNKS - 1)
    return out


def one_repeat(
    procs: run.Processes,
    upstream_port: int,
    folder: Path,
    pins: tuple[str, int | None, int | None],
    args: argparse.Namespace,
    foundation: dict[str, Any] | None,
) -> dict[str, Any]:
    """A foundation gateway and a full-stack one, measured together; `foundation` is run.py's repeat, if any."""
    pinning, _, cpu = pins
    base_config = run.write_config(folder, upstream_port)
    full_config = write_config(folder, upstream_port)
    ports = (run.free_port(), run.free_port())
    base, startup = run.start_server(
        procs, run.gateway_argv(base_config, ports[0]), cpu, pinning, ports[0], folder / "foundation.log"
    )
    figures: dict[str, Any] = {"foundation_startup_s": startup}
    try:
        full, startup = run.start_server(
            procs,
            run.gateway_argv(full_config, ports[1]),
            cpu,
            pinning,
            ports[1],
            folder / "full-stack.log",
            env={KEY_ENV: KEY},
        )
        figures["full_startup_s"] = startup
        try:
            figures.update(check_setup(ports[1]))
            pids = (base.pid, full.pid)
            c1 = run.step("full stack c=1", lambda: measure_c1(upstream_port, ports, pids, args.requests))
            figures.update(c1)
            figures.update(run.step("full stack streams", lambda: measure_stream(upstream_port, ports, args.streams)))
            if shutil.which("wrk"):
                if foundation is None:  # --stack full: the foundation's c=32 figures too
                    figures.update(run.step("upstream direct, wrk", lambda: run.wrk_direct(upstream_port, args)))
                    load = run.step("foundation, wrk", lambda: run.wrk_proxy(ports[0], base.pid, args))
                    figures.update({f"foundation_{k}": v for k, v in load.items() if k != "wrk"})
                    figures["foundation_rss_after_load_mib"] = run.rss_mib(base.pid)
                    figures["foundation_c32_here"] = True
                procs.stop(base)  # alone on its CPU for the load
                env = {"BENCH_BODY": full_body().decode(), "BENCH_KEY": KEY}  # post.lua's body and bearer key
                load = run.step("full stack, wrk", lambda: run.wrk_proxy(ports[1], full.pid, args, env))
                figures.update({f"full_{k}": v for k, v in load.items()})
            figures["full_rss_after_load_mib"] = run.rss_mib(full.pid)
        finally:
            procs.stop(full)
    finally:
        procs.stop(base)
    if foundation is not None:
        figures.update({f"foundation_{k}": foundation[k] for k in FROM_RUN if k in foundation})
        if "rss_after_load_mib" in foundation:
            figures["foundation_rss_after_load_mib"] = foundation["rss_after_load_mib"]
    return figures


# ---------------------------------------------------------------- summary and table


def derived(r: dict[str, Any]) -> dict[str, float]:
    """Per repeat: full stack ÷ foundation for every figure both have; and against the reference proxy."""
    out: dict[str, float] = {}
    for key, *_ in ROWS:
        full, base = r.get(f"full_{key}"), r.get(f"foundation_{key}")
        if isinstance(full, int | float) and isinstance(base, int | float) and base > 0:
            out[f"ratio_{key}"] = full / base
            out[f"minus_{key}"] = full - base
    ref = r.get("foundation_ref_cpu_ms_per_req")
    if isinstance(ref, int | float) and ref > 0 and "full_cpu_ms_per_req" in r:
        out["full_over_ref_cpu"] = r["full_cpu_ms_per_req"] / ref
        out["foundation_over_ref_cpu"] = r["foundation_cpu_ms_per_req"] / ref
    return out


def summarise(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    for r in repeats:
        r.update(derived(r))
    keys = {k for r in repeats for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    summary: dict[str, Any] = {}
    for key in sorted(keys):
        values = [r[key] for r in repeats if isinstance(r.get(key), int | float)]
        summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}
    for key, _, _, line in ROWS:
        if line is not None and f"ratio_{key}" in summary:
            comparison, limit = line
            median = summary[f"ratio_{key}"]["median"]
            met = median <= limit if comparison == "<=" else median >= limit
            summary[f"ratio_{key}"].update(target=limit, comparison=comparison, met=met)
    return summary


def table(summary: dict[str, Any], repeats: int) -> str:
    spread = "[min, max]" if repeats > 1 else "one run"
    lines = [
        f"| figure | foundation | full stack | full - foundation | full ÷ foundation (median {spread}) | line | |",
        "|---|---|---|---|---|---|---|",
    ]

    def value(key: str, unit: str) -> str:
        s = summary.get(key)
        if s is None:
            return ""
        sign = "+" if "added" in key and s["median"] >= 0 else ""
        return f"{sign}{run.fmt(s['median'], unit)}"

    for key, label, unit, line in ROWS:
        ratio = summary.get(f"ratio_{key}")
        if f"full_{key}" not in summary:
            lines.append(f"| {label} | | | | not measured | | n/a |")
            continue
        base, full = value(f"foundation_{key}", unit), value(f"full_{key}", unit)
        minus = summary.get(f"minus_{key}")
        diff = f"{minus['median']:+,.0f}" if minus and unit == "req/s" else ""
        if minus and unit != "req/s":
            diff = f"{minus['median']:+.4f}" if abs(minus["median"]) < 0.01 else f"{minus['median']:+.3f}"
        if ratio is None:
            lines.append(f"| {label} | {base} | {full} {unit} | {diff} | — | — | info |")
            continue
        shown = f"{ratio['median']:.3f}x"
        if repeats > 1:
            shown += f" [{ratio['min']:.3f}, {ratio['max']:.3f}]"
        target = "—" if line is None else f"{'≤' if line[0] == '<=' else '≥'} {line[1]:.2f}x"
        verdict = "info" if ratio.get("met") is None else ("**met**" if ratio["met"] else "**MISSED**")
        lines.append(f"| {label} | {base} | {full} {unit} | {diff} | {shown} | {target} | {verdict} |")
    for key, label in (
        ("foundation_over_ref_cpu", "foundation ÷ reference proxy: CPU per request (c=32)"),
        ("full_over_ref_cpu", "full stack ÷ reference proxy: CPU per request (c=32)"),
    ):
        s = summary.get(key)
        if s is not None:
            shown = f"{s['median']:.2f}x" + (f" [{s['min']:.2f}, {s['max']:.2f}]" if repeats > 1 else "")
            lines.append(f"| {label} | | | | {shown} | ≤ 1.69x (PERF-NOTES) | info |")
    return "\n".join(lines)


def missed(summary: dict[str, Any]) -> list[str]:
    return [key for key, s in summary.items() if isinstance(s, dict) and s.get("met") is False]


def report(repeats: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Print the full-stack table; return what goes under "full_stack" in the JSON."""
    summary = summarise(repeats)
    text = table(summary, len(repeats))
    print(f"\nFull stack (gateway key + two-target fallback route) beside the foundation, {len(repeats)} repeat(s).")
    print("c=1 and stream figures: one loop, a request each in turn to the upstream, the foundation, the full stack;")
    here = any(r.get("foundation_c32_here") for r in repeats)
    print(
        f"c=32: wrk, {'here, the foundation first' if here else 'the foundation: its run of the same repeat'}.", end=" "
    )
    print(
        "The difference and ratio columns are medians of\nthe per-repeat differences and ratios, so they need not ",
        end="",
    )
    print("match the medians beside them.\n")
    print(text)
    errors = max(summary.get(k, {}).get("max", 0) for k in ("full_wrk_errors", "foundation_wrk_errors"))
    if errors:
        print(f"warning: wrk counted {errors:.0f} errors against a gateway (non-2xx, timeouts or socket errors)")
    return {"meta": meta, "summary": summary, "repeats": repeats, "table": text, "missed": missed(summary)}
