"""The cache-hit figures of the Sluice benchmark: answers from the memory store and from Redis.

    .venv/bin/python bench/run.py --cache-only      # just these, ~2.5 min: 3 repeats
    .venv/bin/python bench/run.py                   # everything, these included

bench/run.py calls `one_repeat` once per repeat. For each store (memory: no `[redis]`
table; Redis: `[redis] url = --redis-url`, db 14 by default) it starts a fresh
`sluice serve` on the gateway's CPU, primes one entry with one request carrying
`X-Sluice-Cache: on` (it must be a MISS), then measures identical requests, which must
all be HITs:

- hit latency p50/p99 at c=1, client to client (run.py's raw keep-alive socket client);
  every response's `X-Sluice-Cache` is checked, and the ones that are not HIT counted;
- hits/s and p99 at c=32 with wrk (post.lua with BENCH_CACHE=on, and
  BENCH_EXPECT_CACHE=HIT so that wrk counts every response that is not a 200 HIT);
- the gateway's CPU per hit (utime + stime around the measured wrk run), and for Redis
  the redis-server's CPU per hit too, when its /proc entry is readable.

The proof that hits are hits: the fake upstream counts the requests it answers
(`GET /_stats`), and over each gateway's whole life it must have answered exactly
one, the priming MISS. With Redis, db N must hold exactly one `sluice:v1:cache:` key
afterwards. Any breach is reported in the table and makes run.py exit 1: a hit
benchmark that silently measures misses is worthless.

Calibration is run.py's: the reference proxy measured in the same repeat (run.py's own
figures in a full run; measured here, c=1 and wrk only, with --cache-only), and
"adjusted" = figure times (PERF-NOTES' reference figure ÷ the reference figure now).

Redis: only the database named in --redis-url (default db 14) is touched. It is
flushed before and after each Redis gateway, and only when every key in it is under
`sluice:v1:`; otherwise the Redis figures are skipped, nothing deleted.

run.py imports this module and this module imports `run`: when run.py runs as a
script it is loaded a second time under that name, which is harmless (it has no
import-time side effects and keeps no module state).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import run

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
KEY_PREFIX = b"sluice:v1:"
CACHE_HEADERS = {"BENCH_CACHE": "on", "BENCH_EXPECT_CACHE": "HIT"}  # post.lua's parameters
_CACHE_STATUS = re.compile(rb"\r\n(?i:x-sluice-cache):[ \t]*([A-Za-z]*)")

# Per store: figure suffix, label, comparison, target, unit. Targets are for one core.
STORE_TARGETS = {
    "memory": {"hit_p50_ms": 0.15, "hits_per_s": 15000},
    "redis": {"hit_p50_ms": 0.3, "hits_per_s": 6000},
}
FIGURES: list[tuple[str, str, str, str]] = [
    ("hit_p50_ms", "hit latency p50, c=1 (client to client)", "<=", "ms"),
    ("hit_p99_ms", "hit latency p99, c=1", "<=", "ms"),
    ("hits_per_s", "hits/s at c=32 (gateway on one core)", ">=", "req/s"),
    ("p99_c32_ms", "p99 at c=32", "<=", "ms"),
    ("cpu_ms_per_hit", "gateway CPU per hit (c=32)", "<=", "ms"),
    ("redis_server_cpu_ms_per_hit", "redis-server CPU per hit (c=32)", "<=", "ms"),
]
# Which of the reference proxy's figures scales which hit figure, for "adjusted". Both c=1 figures
# by its added p50: its added p99 is a difference of two tails, too noisy to scale by (2x to 20x).
SCALED_BY = {
    "hit_p50_ms": "added_p50_ms",
    "hit_p99_ms": "added_p50_ms",
    "hits_per_s": "rps_c32",
    "p99_c32_ms": "p99_c32_ms",
    "cpu_ms_per_hit": "cpu_ms_per_req",
    "redis_server_cpu_ms_per_hit": "cpu_ms_per_req",
}
REFERENCE_ROWS: list[tuple[str, str, str]] = [
    ("added_p50_ms", "reference proxy: added p50, c=1", "ms"),
    ("added_p99_ms", "reference proxy: added p99, c=1", "ms"),
    ("rps_c32", "reference proxy: req/s at c=32", "req/s"),
    ("p99_c32_ms", "reference proxy: p99 at c=32", "ms"),
    ("cpu_ms_per_req", "reference proxy: CPU per request (c=32)", "ms"),
]
REFERENCE_KEYS = [f"ref_{key}" for key, _, _ in REFERENCE_ROWS] + ["direct_p50_ms", "direct_p99_ms"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cache hits (bench/cache.py)")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument("--cache-only", action="store_true", help="measure only the cache-hit figures")
    mode.add_argument("--no-cache", action="store_true", help="skip the cache-hit figures")
    group.add_argument("--no-redis", action="store_true", help="cache hits from the memory store only")
    group.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help=f"Redis for the Redis store; its db is flushed (default {DEFAULT_REDIS_URL})",
    )


# ---------------------------------------------------------------- the fake upstream's counter and Redis


def upstream_requests(port: int) -> int:
    """How many requests the fake upstream has answered (GET /_stats)."""
    client = run.Client(port, f"GET /_stats HTTP/1.1\r\nHost: {run.HOST}:{port}\r\n\r\n".encode())
    try:
        response = client.exchange()[3]
    finally:
        client.close()
    if not response.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"the fake upstream's /_stats answered {response[:200]!r}")
    return int(json.loads(response.partition(b"\r\n\r\n")[2])["requests"])


class RedisDb:
    """The one database the Redis figures use: checked, flushed when it holds only Sluice's keys, read."""

    def __init__(self, url: str) -> None:
        import redis  # the gateway's own dependency

        path = urlsplit(url).path.strip("/")
        if not path.isdigit():
            raise ValueError(f"--redis-url must name its database, e.g. redis://127.0.0.1:6379/14 (got {url!r})")
        self.db = int(path)
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.server_pid: int | None = None
        self.server_cpus = ""  # the CPUs redis-server may run on (we neither start nor pin it)

    def problem(self) -> str | None:
        """Why the Redis figures cannot be measured, or None."""
        try:
            self.client.ping()
            pid = int(self.client.info("server").get("process_id", 0))
        except Exception as exc:
            return f"Redis does not answer ({type(exc).__name__}: {exc})"
        comm = Path(f"/proc/{pid}/comm")
        with contextlib.suppress(OSError):  # another PID namespace: no redis-server CPU figure
            if "redis" in comm.read_text():
                self.server_pid = pid
                status = Path(f"/proc/{pid}/status").read_text()
                self.server_cpus = next(
                    (x.split()[1] for x in status.splitlines() if x.startswith("Cpus_allowed_l")), ""
                )
        foreign = [key for key in self.keys() if not key.startswith(KEY_PREFIX)]
        if foreign:
            return f"db {self.db} holds {len(foreign)} keys not under {KEY_PREFIX.decode()} ({foreign[0]!r}...)"
        return None

    def keys(self) -> list[bytes]:
        return list(self.client.scan_iter(count=1000))

    def flush(self) -> None:
        """FLUSHDB on this database only, and only while every key in it is Sluice's."""
        if self.problem() is None:
            self.client.flushdb()

    def server_ticks(self) -> int | None:
        if self.server_pid is None:
            return None
        try:
            return run.cpu_ticks(self.server_pid)
        except OSError:
            return None

    def close(self) -> None:
        self.client.close()


def write_config(folder: Path, upstream_port: int, redis_url: str | None) -> Path:
    path = folder / ("cache-redis.toml" if redis_url else "cache-memory.toml")
    text = run.write_config(folder, upstream_port).read_text()
    if redis_url:
        text += f'\n[redis]\nurl = "{redis_url}"\nop_timeout_ms = 50\n'
    path.write_text(text)
    return path


# ---------------------------------------------------------------- measuring


def cache_status(response: bytes) -> str:
    """The X-Sluice-Cache of a 200 response ("" when absent), or "status NNN" for any other."""
    if not response.startswith(b"HTTP/1.1 200"):
        return "status " + response[9:12].decode(errors="replace")
    head = response[: response.find(b"\r\n\r\n") + 2]
    found = _CACHE_STATUS.search(head)
    return found.group(1).decode() if found else ""


def hits_c1(client: run.Client, pid: int, count: int) -> dict[str, Any]:
    """`count` sequential hits (after a warm-up), each response's X-Sluice-Cache counted."""
    seen: collections.Counter[str] = collections.Counter()
    warm = max(20, count // 20)
    for _ in range(warm):
        seen[cache_status(client.exchange()[3])] += 1
    latencies: list[float] = []
    responses: list[bytes] = []
    before = run.cpu_ns(pid)
    deadline = time.perf_counter() + 60
    with run.no_gc():
        for _ in range(count):
            sent, _, done, response = client.exchange()
            latencies.append((done - sent) * 1000)
            responses.append(response)  # checked after the loop, outside the timing
            if time.perf_counter() > deadline:
                break
    cpu_ms = (run.cpu_ns(pid) - before) / 1e6
    seen.update(cache_status(response) for response in responses)
    return {
        "hit_p50_ms": run.percentile(latencies, 50),
        "hit_p99_ms": run.percentile(latencies, 99),
        "hit_mean_ms": statistics.fmean(latencies),
        "hits_c1": len(latencies),
        "cpu_ms_per_hit_c1": cpu_ms / len(latencies),
        "c1_statuses": dict(seen),
        "non_hits_c1": sum(n for status, n in seen.items() if status != "HIT"),
    }


def hits_wrk(port: int, pid: int, args: argparse.Namespace, redis: RedisDb | None) -> dict[str, Any]:
    """hits/s and p99 at c=32, the gateway's (and redis-server's) CPU per hit; wrk checks every response."""
    warm = run.run_wrk(port, args.warmup, args, CACHE_HEADERS) if args.warmup > 0 else None
    ticks, ns = run.cpu_ticks(pid), run.cpu_ns(pid)
    redis_ticks = redis.server_ticks() if redis else None
    via = run.run_wrk(port, args.duration, args, CACHE_HEADERS)
    ticks, ns = run.cpu_ticks(pid) - ticks, run.cpu_ns(pid) - ns
    redis_after = redis.server_ticks() if redis else None
    hits = max(1, via["requests"])
    out: dict[str, Any] = {
        "hits_per_s": via["rps"],
        "p50_c32_ms": via["latency_us"]["p50"] / 1000,
        "p99_c32_ms": via["latency_us"]["p99"] / 1000,
        "cpu_ms_per_hit": ticks * 1000 / run.CLK_TCK / hits,
        "cpu_ms_per_hit_schedstat": ns / 1e6 / hits,
        "wrk_errors": via["error_count"] + (warm["error_count"] if warm else 0),
        "non_hits_wrk": via["cache_other"] + (warm["cache_other"] if warm else 0),
        "wrk_checked": via["cache_checked"] + (warm["cache_checked"] if warm else 0),
        "wrk": via,
    }
    if redis_ticks is not None and redis_after is not None:
        out["redis_server_cpu_ms_per_hit"] = (redis_after - redis_ticks) * 1000 / run.CLK_TCK / hits
    return out


def measure_store(
    store: str,
    procs: run.Processes,
    upstream_port: int,
    folder: Path,
    pins: tuple[str, int | None, int | None],
    args: argparse.Namespace,
    redis: RedisDb | None,
) -> dict[str, Any]:
    """One gateway with `store`: prime one entry, hits at c=1, hits at c=32; figures keyed without the store."""
    pinning, _, cpu = pins
    config = write_config(folder, upstream_port, args.redis_url if redis else None)
    if redis:
        redis.flush()
    answered_before = upstream_requests(upstream_port)
    port = run.free_port()
    log = folder / f"gateway-{store}.log"
    proc, startup = run.start_server(procs, run.gateway_argv(config, port), cpu, pinning, port, log)
    figures: dict[str, Any] = {"startup_s": startup}
    client = run.Client(port, cache_request(port))
    try:
        sent, _, done, response = client.exchange()
        figures["prime_status"] = cache_status(response)
        figures["prime_misses"] = int(figures["prime_status"] == "MISS")
        figures["miss_ms"] = (done - sent) * 1000
        if not response.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{store}: the priming request failed: {response[:300]!r}")
        figures.update(run.step(f"{store} hits c=1", lambda: hits_c1(client, proc.pid, args.requests)))
        client.close()
        if shutil.which("wrk"):
            figures.update(run.step(f"{store} hits, wrk", lambda: hits_wrk(port, proc.pid, args, redis)))
        figures["rss_after_load_mib"] = run.rss_mib(proc.pid)
        figures["upstream_requests"] = upstream_requests(upstream_port) - answered_before
    finally:
        client.close()
        procs.stop(proc)
    if redis:
        figures["redis_server_cpus"] = redis.server_cpus
        keys = redis.keys()
        figures["redis_entries"] = sum(key.startswith(KEY_PREFIX + b"cache:") for key in keys)
        figures["redis_other_keys"] = len(keys) - figures["redis_entries"]
        redis.flush()
    figures["non_hits"] = figures["non_hits_c1"] + figures.get("non_hits_wrk", 0)
    figures["valid"] = (
        figures["prime_misses"] == 1
        and figures["non_hits"] == 0
        and figures["upstream_requests"] == 1
        and figures.get("wrk_errors", 0) == 0
        and figures.get("redis_entries", 1) == 1
    )
    return figures


def cache_request(port: int) -> bytes:
    head, _, body = run.http_request(port, run.BODY).partition(b"\r\n\r\n")
    return head + b"\r\nX-Sluice-Cache: on\r\n\r\n" + body


def measure_reference(
    procs: run.Processes,
    upstream_port: int,
    folder: Path,
    pins: tuple[str, int | None, int | None],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The reference proxy's figures the adjustment needs: c=1 (added p50, p99) and wrk (req/s, p99, CPU)."""
    pinning, _, cpu = pins
    port = run.free_port()
    log = folder / "reference-cache.log"
    proc, startup = run.start_server(procs, run.reference_argv(upstream_port, port), cpu, pinning, port, log)
    try:
        c1 = run.step("reference proxy c=1", lambda: run.measure_c1(upstream_port, port, proc.pid, args.requests))
        out = {"ref_startup_s": startup, "direct_p50_ms": c1["direct_p50_ms"], "direct_p99_ms": c1["direct_p99_ms"]}
        out.update({f"ref_{k}": c1[k] for k in ("added_p50_ms", "added_p99_ms", "proxy_p50_ms", "proxy_p99_ms")})
        if shutil.which("wrk"):
            load = run.step("reference proxy, wrk", lambda: run.wrk_proxy(port, proc.pid, args))
            out.update({f"ref_{k}": v for k, v in load.items() if k != "wrk"})
        return out
    finally:
        procs.stop(proc)


def one_repeat(
    procs: run.Processes,
    upstream_port: int,
    folder: Path,
    pins: tuple[str, int | None, int | None],
    args: argparse.Namespace,
    reference: dict[str, Any] | None,
) -> dict[str, Any]:
    """Both stores, then the reference proxy unless `reference` (run.py's figures of this repeat) is given."""
    figures: dict[str, Any] = {}
    for store in ("memory", "redis"):
        redis = None
        if store == "redis":
            if args.no_redis:
                continue
            redis = RedisDb(args.redis_url)
            problem = redis.problem()
            if problem:
                print(f"  redis: skipped: {problem}", file=sys.stderr, flush=True)
                figures["redis_skipped"] = problem
                redis.close()
                continue
        try:
            measured = measure_store(store, procs, upstream_port, folder, pins, args, redis)
        finally:
            if redis:
                redis.close()
        figures.update({f"{store}_{k}": v for k, v in measured.items()})
    if reference is not None:  # run.py's repeat: only what the adjustment and the table use
        figures.update({k: v for k, v in reference.items() if k in REFERENCE_KEYS})
    elif not args.no_calibrate:
        figures.update(measure_reference(procs, upstream_port, folder, pins, args))
    return figures


def final_flush(args: argparse.Namespace) -> None:
    """Leave the Redis database as found before the run: empty of Sluice's keys."""
    if args.no_redis:
        return
    with contextlib.suppress(Exception):
        redis = RedisDb(args.redis_url)
        try:
            redis.flush()
        finally:
            redis.close()


# ---------------------------------------------------------------- summary and table


def derived(r: dict[str, Any]) -> dict[str, float]:
    """Per repeat: each hit figure scaled by (PERF-NOTES' reference figure ÷ the reference figure now)."""
    out: dict[str, float] = {}
    for store in STORE_TARGETS:
        for suffix, ref_key in SCALED_BY.items():
            value, now = r.get(f"{store}_{suffix}"), r.get(f"ref_{ref_key}")
            if isinstance(value, int | float) and isinstance(now, int | float) and now > 0:
                out[f"adj_{store}_{suffix}"] = value * run.REFERENCE[ref_key] / now
    return out


def summarise(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    for r in repeats:
        r.update(derived(r))
    keys = {k for r in repeats for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    summary: dict[str, Any] = {}
    for key in sorted(keys):
        values = [r[key] for r in repeats if isinstance(r.get(key), int | float)]
        summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}
    for store, targets in STORE_TARGETS.items():
        for suffix, _, comparison, _ in FIGURES:
            for key in (f"{store}_{suffix}", f"adj_{store}_{suffix}"):
                if key in summary:
                    target = targets.get(suffix)
                    median = summary[key]["median"]
                    met = None if target is None else (median <= target if comparison == "<=" else median >= target)
                    summary[key].update(target=target, comparison=comparison, met=met)
        valid = [r.get(f"{store}_valid") for r in repeats if f"{store}_valid" in r]
        if valid:
            summary[f"{store}_valid"] = all(valid)
    return summary


def invalid(summary: dict[str, Any]) -> list[str]:
    """The stores whose hit figures cannot be trusted (a non-HIT, an upstream call, a wrk error)."""
    return [store for store in STORE_TARGETS if summary.get(f"{store}_valid") is False]


def table(summary: dict[str, Any], repeats: int) -> str:
    spread = "[min, max]" if repeats > 1 else "one run"
    lines = [
        f"| figure | result (median {spread}) | target | met/missed | adjusted to the reference box |",
        "|---|---|---|---|---|",
    ]

    def result(key: str, unit: str) -> str:
        s = summary[key]
        text = f"{run.fmt(s['median'], unit)} {unit}"
        return text + (f" [{run.fmt(s['min'], unit)}, {run.fmt(s['max'], unit)}]" if repeats > 1 else "")

    for store, targets in STORE_TARGETS.items():
        if f"{store}_hit_p50_ms" not in summary:
            lines.append(f"| {store}: not measured | | | | |")
            continue
        for suffix, label, comparison, unit in FIGURES:
            key = f"{store}_{suffix}"
            if key not in summary:
                continue
            s, target = summary[key], targets.get(suffix)
            verdict = "info" if s["met"] is None else ("**met**" if s["met"] else "**MISSED**")
            adjusted = ""
            if f"adj_{key}" in summary:
                a = summary[f"adj_{key}"]
                would = "" if a["met"] is None else (", would meet" if a["met"] else ", would miss")
                adjusted = f"{run.fmt(a['median'], unit)} {unit}{would}"
            target_text = run.target_text(comparison, target, unit)
            lines.append(f"| {store}: {label} | {result(key, unit)} | {target_text} | {verdict} | {adjusted} |")
        lines.append(check_row(summary, store, "prime_misses", "the priming call was a MISS", 1))
        lines.append(check_row(summary, store, "non_hits", "responses that were not a 200 HIT (c=1 + wrk)", 0))
        if f"{store}_wrk_errors" in summary:
            lines.append(check_row(summary, store, "wrk_errors", "wrk errors (socket, timeout, status)", 0))
        lines.append(check_row(summary, store, "upstream_requests", "upstream requests per gateway (the prime)", 1))
        if store == "redis":
            lines.append(check_row(summary, store, "redis_entries", "Redis entries after the run", 1))
    for key, label, unit in REFERENCE_ROWS:
        s = summary.get(f"ref_{key}")
        if s is not None:
            factor = s["median"] / run.REFERENCE[key]
            slower = factor if key != "rps_c32" else 1 / factor
            perf_notes = f"PERF-NOTES: {run.fmt(run.REFERENCE[key], unit)} {unit}"
            lines.append(f"| {label} | {result('ref_' + key, unit)} | {perf_notes} | info | box {slower:.2f}x slower |")
    if "direct_p50_ms" in summary:
        lines.append(
            f"| for scale: the fake upstream called directly, p50 c=1 | {result('direct_p50_ms', 'ms')} | — | info | |"
        )
    return "\n".join(lines)


def check_row(summary: dict[str, Any], store: str, name: str, label: str, expected: int) -> str:
    s = summary.get(f"{store}_{name}")
    if s is None:
        return f"| {store}: {label} | not measured | = {expected} | n/a | |"
    values = [int(v) for v in s["values"]]
    ok = all(v == expected for v in values)
    shown = ", ".join(str(v) for v in values)
    return f"| {store}: {label} | {shown} | = {expected} | {'**met**' if ok else '**INVALID**'} | |"


def report(repeats: list[dict[str, Any]], args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    """Print the cache table; return what goes under "cache" in the JSON."""
    summary = summarise(repeats)
    text = table(summary, len(repeats))
    print(f"\nCache hits, {len(repeats)} repeat(s). 'adjusted' = the figure times (PERF-NOTES' figure for the")
    print("reference proxy ÷ the reference proxy's figure measured in the same repeat, on the same CPU).\n")
    print(text)
    for store in STORE_TARGETS:
        if f"{store}_c1_statuses" in (repeats[0] if repeats else {}):
            seen = [r.get(f"{store}_c1_statuses") for r in repeats]
            print(f"{store}: X-Sluice-Cache at c=1 per repeat: {seen}")
    skipped = {r["redis_skipped"] for r in repeats if "redis_skipped" in r}
    if skipped:
        print(f"redis: skipped: {'; '.join(sorted(skipped))}")
    bad = invalid(summary)
    if bad:
        print(f"\nINVALID: {', '.join(bad)}: some calls were not served from the cache; see the check rows")
    return {"meta": meta, "summary": summary, "repeats": repeats, "table": text, "invalid": bad}


def cache_only(
    args: argparse.Namespace, meta: dict[str, Any], repeats: list[dict[str, Any]], rss: list[float], started: float
) -> int:
    """--cache-only: print the cache table; replace only "cache" in the JSON file, keeping what else it holds."""
    print(f"\nSluice cache-hit benchmark, {meta['when']}, git {meta['git']}, pinning: {meta['pinning']}")
    meta["upstream_rss_mib"] = rss
    section = report(repeats, args, meta)
    result: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        result = json.loads(args.output.read_text())
    result = result if isinstance(result, dict) else {}
    result["cache"] = section
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f'\n{time.perf_counter() - started:.0f} s; JSON in {args.output} ("cache"; its own "meta" inside)')
    missed = [
        key
        for key, s in section["summary"].items()
        if isinstance(s, dict) and not key.startswith("adj_") and s.get("met") is False
    ]
    return 1 if section["invalid"] or (args.fail_on_miss and missed) else 0
