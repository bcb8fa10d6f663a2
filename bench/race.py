"""The racing figures of the Sluice benchmark: a fast and a slow target raced, plain and hedged.

    .venv/bin/python bench/run.py --race-only      # just these, ~30 s
    .venv/bin/python bench/run.py                  # everything, these included (measured once, after the repeats)

`measure` starts a second fake upstream, the slow one (`fake_upstream.py --delay-ms 200`:
every answer's first byte 200 ms late), beside run.py's fast one, both on the first CPU,
and one `sluice serve` on the gateway's CPU with providers `fast` and `slow` and three
routes, all `strategy = "race"`:

- `race`:       [fast/m, slow/m], both racers start at once;
- `hedge-fast`: [fast/m, slow/m], `hedge_delay_ms = 50`: the fast target answers within
  the 50 ms, so the hedge never fires and the slow upstream must see nothing;
- `hedge-slow`: [slow/m, fast/m], `hedge_delay_ms = 50`: the slow target is asked first,
  the hedge fires after 50 ms, the fast target wins, the slow one is cancelled.

For each route, non-stream and stream, one sequential loop (c=1) sends one request each
in turn straight to the fast upstream, through the gateway to the fast target alone
(`"model": "fast/m"`), and through the route; so "over fast alone" compares figures of
the same minutes. Stream figures are the time to the first body byte (a racer commits
at its first content chunk) and to the stream's end.

The checks (each loop; any failure is reported and makes run.py exit 1): every answer
is a 200 from `fast` (X-Sluice-Provider); the slow upstream answered nothing (no loser
left to answer); right after the loop nothing waits at the slow upstream and no
connection to it is open (its `/_stats`: `in_flight`, `open_connections`); with the
fast target first the slow upstream received no request and no connection; with the
slow target first it received every call and the hedge reached the fast one every time.
The slow upstream also says how long after reading a request its connection was
closed (the loser's cancel). The gateway's open file descriptors before and after all
loops show that nothing leaks.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import run

QUICK = {"race_requests": 100, "race_hedged_requests": 15}
FULL = {"race_requests": 1000, "race_hedged_requests": 100}
_PROVIDER = re.compile(rb"\r\n(?i:x-sluice-provider):[ \t]*([^\r\n]*)")
# route name, label; its targets are written by write_config
ROUTES = [
    ("race", "race [fast, slow]"),
    ("hedge-fast", "hedged, fast first"),
    ("hedge-slow", "hedged, slow first"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("racing (bench/race.py, measured once per run)")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument("--race-only", action="store_true", help="measure only the racing figures")
    mode.add_argument("--no-race", action="store_true", help="skip the racing figures")
    group.add_argument(
        "--race-requests", type=int, help="calls per side, race and hedged-fast-first loops (default 1000; quick 100)"
    )
    group.add_argument(
        "--race-hedged-requests", type=int, help="calls per side, hedged-slow-first loop (default 100; quick 15)"
    )
    group.add_argument("--slow-ms", type=float, default=200.0, help="the slow upstream's delay (default 200)")
    group.add_argument("--hedge-ms", type=float, default=50.0, help="the hedged routes' hedge_delay_ms (default 50)")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.race_requests < 10 or args.race_hedged_requests < 5:
        parser.error("--race-requests >= 10 and --race-hedged-requests >= 5")
    if not 0 < args.hedge_ms < args.slow_ms <= 5000:
        parser.error("0 < --hedge-ms < --slow-ms <= 5000 (the hedge must fire before the slow answer)")


def write_config(folder: Path, fast_port: int, slow_port: int, hedge_ms: float) -> Path:
    path = folder / "race.toml"
    providers = "".join(
        f'[providers.{name}]\nbase_url = "http://{run.HOST}:{port}/v1"\napi_key = "sk-bench"\nmodels = ["m"]\n\n'
        for name, port in (("fast", fast_port), ("slow", slow_port))
    )
    routes = (
        '[routes.race]\nstrategy = "race"\ntargets = ["fast/m", "slow/m"]\n\n'
        f'[routes.hedge-fast]\nstrategy = "race"\ntargets = ["fast/m", "slow/m"]\nhedge_delay_ms = {hedge_ms:g}\n\n'
        f'[routes.hedge-slow]\nstrategy = "race"\ntargets = ["slow/m", "fast/m"]\nhedge_delay_ms = {hedge_ms:g}\n'
    )
    path.write_text(providers + routes)
    return path


def body(model: str, stream: bool) -> bytes:
    tail = ', "stream": true}' if stream else "}"
    return ('{"model": "' + model + '", "messages": ' + run.MESSAGES + tail).encode()


class Stats:
    """A fake upstream's GET /_stats (see fake_upstream.py), on one keep-alive connection of its own.

    One connection for every reading, so the upstream's connection counts are the gateway's
    alone: `open_connections` leaves this one out.
    """

    def __init__(self, port: int) -> None:
        self.client = run.Client(port, f"GET /_stats HTTP/1.1\r\nHost: {run.HOST}:{port}\r\n\r\n".encode())

    def read(self) -> dict[str, Any]:
        response = self.client.exchange()[3]
        if not response.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the fake upstream's /_stats answered {response[:200]!r}")
        stats: dict[str, Any] = json.loads(response.partition(b"\r\n\r\n")[2])
        stats["open_connections"] -= 1  # this one
        return stats

    def close(self) -> None:
        self.client.close()


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


# ---------------------------------------------------------------- measuring


def rounds(
    clients: list[run.Client], count: int, budget_s: float
) -> tuple[list[list[run.Timing]], list[list[bytes]], int]:
    """Warm-up, then `count` rounds of one exchange per client in turn; timings, responses, warm-up calls per side."""
    warm = max(5, count // 20)
    warm_responses: list[list[bytes]] = [[] for _ in clients]
    for _ in range(warm):
        for side, client in zip(warm_responses, clients, strict=True):
            side.append(client.exchange()[3])
    timings: list[list[run.Timing]] = [[] for _ in clients]
    responses: list[list[bytes]] = [[] for _ in clients]
    deadline = time.perf_counter() + budget_s
    with run.no_gc():
        for _ in range(count):
            for side, kept, client in zip(timings, responses, clients, strict=True):
                sent, first, done, response = client.exchange()
                side.append((sent, first, done))
                kept.append(response)  # checked after the loop
            if time.perf_counter() > deadline:
                break
    for kept, warmed in zip(responses, warm_responses, strict=True):
        kept.extend(warmed)
    return timings, responses, warm


def provider_of(response: bytes) -> str:
    if not response.startswith(b"HTTP/1.1 200"):
        return "status " + response[9:12].decode(errors="replace")
    found = _PROVIDER.search(response[: response.find(b"\r\n\r\n") + 2])
    return found.group(1).decode() if found else "?"


def wait_closed(slow: Stats, timeout_s: float = 2.0) -> tuple[dict[str, Any], float]:
    """The slow upstream's stats once nothing waits there and no connection is open (or at the timeout)."""
    started = time.perf_counter()
    longest = 0.0  # aborted_ms_max is since the previous reading
    while True:
        stats = slow.read()
        longest = stats["aborted_ms_max"] = max(longest, stats["aborted_ms_max"])
        waited = time.perf_counter() - started
        if (stats["in_flight"] == 0 and stats["open_connections"] == 0) or waited > timeout_s:
            return stats, waited * 1000
        time.sleep(0.002)


def measure_loop(
    route: str, stream: bool, ports: dict[str, int], stats: dict[str, Stats], count: int, chunks: int | None
) -> dict[str, Any]:
    """direct / fast alone / `route`, one each in turn; latencies, winners and both upstreams' counts."""
    fast, gateway = ports["fast"], ports["gateway"]
    clients = [
        run.Client(fast, run.http_request(fast, body("fast/m", stream))),
        run.Client(gateway, run.http_request(gateway, body("fast/m", stream))),
        run.Client(gateway, run.http_request(gateway, body(route, stream))),
    ]
    fast_before, slow_before = stats["fast"].read(), stats["slow"].read()  # (also resets aborted_ms_max)
    try:
        timings, responses, warm = rounds(clients, count, 120.0)
    finally:
        for client in clients:
            client.close()
    slow_after, closed_ms = wait_closed(stats["slow"])
    fast_after = stats["fast"].read()
    calls = len(timings[2]) + warm
    out: dict[str, Any] = {"route": route, "stream": stream, "calls": len(timings[2]), "warm_calls": warm}
    for name, side in zip(("direct", "alone", "route"), timings, strict=True):
        if stream:
            first = [(first - sent) * 1000 for sent, first, _ in side]
            out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = run.percentile(first, 50), run.percentile(first, 99)
            out[f"{name}_whole_p50_ms"] = statistics.median((done - sent) * 1000 for sent, _, done in side)
        else:
            total = [(done - sent) * 1000 for sent, _, done in side]
            out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = run.percentile(total, 50), run.percentile(total, 99)
    out["over_alone_p50_ms"] = out["route_p50_ms"] - out["alone_p50_ms"]
    out["over_alone_p99_ms"] = out["route_p99_ms"] - out["alone_p99_ms"]
    out["alone_over_direct_p50_ms"] = out["alone_p50_ms"] - out["direct_p50_ms"]
    out["answered_by"] = dict(collections.Counter(provider_of(r) for r in responses[2]))
    out["alone_answered_by"] = dict(collections.Counter(provider_of(r) for r in responses[1]))
    bad_direct = sum(not r.startswith(b"HTTP/1.1 200") for r in responses[0])
    wrong_chunks = (
        sum(r.count(b"data: ") != chunks for side in responses for r in side if r.startswith(b"HTTP/1.1 200"))
        if chunks
        else 0
    )
    out["direct_not_200"] = bad_direct
    out["streams_with_wrong_event_count"] = wrong_chunks
    for key in ("received", "requests", "aborted", "connections", "aborted_ms_sum"):
        out[f"slow_{key}"] = slow_after[key] - slow_before[key]
    out["slow_aborted_ms_max"] = slow_after["aborted_ms_max"]
    out["slow_closed_after_ms_mean"] = out["slow_aborted_ms_sum"] / out["slow_aborted"] if out["slow_aborted"] else None
    out["slow_in_flight_after"] = slow_after["in_flight"]
    out["slow_open_connections_after"] = slow_after["open_connections"]
    out["ms_until_slow_closed"] = closed_ms
    out["fast_received_from_route"] = fast_after["received"] - fast_before["received"] - 2 * calls
    out["fast_new_connections"] = fast_after["connections"] - fast_before["connections"]  # the gateway's
    out["checks"] = checks(route, out, calls)
    out["valid"] = all(out["checks"].values())
    return out


def checks(route: str, out: dict[str, Any], calls: int) -> dict[str, bool]:
    """What must hold for this loop (see the module's docstring)."""
    every_fast = {"fast": calls}
    left = out["slow_in_flight_after"] + out["slow_open_connections_after"]
    found = {
        "every answer a 200 from fast": out["answered_by"] == every_fast and out["alone_answered_by"] == every_fast,
        "direct calls all 200, streams whole": not out["direct_not_200"] and not out["streams_with_wrong_event_count"],
        "slow upstream answered nothing": out["slow_requests"] == 0,
        "nothing left waiting or open at the slow upstream": left == 0,
    }
    if route == "hedge-fast":
        found["hedge never fired: slow upstream got no request, no connection"] = (
            out["slow_received"] == 0 and out["slow_connections"] == 0
        )
    if route == "hedge-slow":
        found["slow first every call, the hedge reached fast every call"] = (
            out["slow_received"] == calls and out["fast_received_from_route"] == calls
        )
    return found


def measure(
    procs: run.Processes,
    fast_port: int,
    folder: Path,
    pins: tuple[str, int | None, int | None],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The slow upstream and a racing gateway started, every loop measured, both stopped."""
    pinning, client_cpu, cpu = pins
    options = ["--delay-ms", f"{args.slow_ms:g}"]
    slow, slow_port = run.start_upstream(procs, pinning, client_cpu, folder / "slow-upstream.log", options)
    result: dict[str, Any] = {"slow_ms": args.slow_ms, "hedge_ms": args.hedge_ms, "loops": {}}
    try:
        config = write_config(folder, fast_port, slow_port, args.hedge_ms)
        port = run.free_port()
        gateway, startup = run.start_server(
            procs, run.gateway_argv(config, port), cpu, pinning, port, folder / "race.log"
        )
        result["startup_s"] = startup
        ports = {"fast": fast_port, "slow": slow_port, "gateway": port}
        stats = {"fast": Stats(fast_port), "slow": Stats(slow_port)}
        try:
            result["gateway_fds_before"] = open_fds(gateway.pid)
            for stream in (False, True):
                mode = "stream" if stream else "non-stream"
                for route, _ in ROUTES:
                    count = args.race_hedged_requests if route == "hedge-slow" else args.race_requests
                    if stream and route != "hedge-slow":
                        count = min(count, args.streams)
                    chunks = run.CHUNKS if stream else None
                    work = functools.partial(measure_loop, route, stream, ports, stats, count, chunks)
                    loop = run.step(f"{route}, {mode}", work)
                    result["loops"][f"{route} {mode}"] = loop
            time.sleep(0.2)
            result["gateway_fds_after"] = open_fds(gateway.pid)
            result["gateway_rss_after_mib"] = run.rss_mib(gateway.pid)
        finally:
            for reader in stats.values():
                reader.close()
            procs.stop(gateway)
    finally:
        procs.stop(slow)
    fds = (result.get("gateway_fds_before", -1), result.get("gateway_fds_after", -1))
    result["fds_ok"] = fds[0] >= 0 and fds[1] <= fds[0] + 2  # an idle keep-alive connection or two may come and go
    result["valid"] = result["fds_ok"] and all(loop["valid"] for loop in result["loops"].values())
    return result


# ---------------------------------------------------------------- the tables


def latency_table(result: dict[str, Any]) -> str:
    loops = result["loops"]
    lines = [
        "| call (c=1, one at a time) | non-stream p50 / p99 | over fast alone p50 / p99 "
        "| stream first byte p50 / p99 | over fast alone p50 / p99 | whole stream p50 |",
        "|---|---|---|---|---|---|",
    ]

    def pair(loop: dict[str, Any], a: str, b: str, sign: bool = False) -> str:
        fmt = "{:+.3f}" if sign else "{:.3f}"
        return f"{fmt.format(loop[a])} / {fmt.format(loop[b])} ms"

    plain, streamed = loops.get("race non-stream"), loops.get("race stream")
    for side, label in (
        ("direct", "straight to the fast upstream"),
        ("alone", "gateway, fast target alone (`fast/m`)"),
    ):
        cells = [label]
        for loop in (plain, streamed):
            cells += [pair(loop, f"{side}_p50_ms", f"{side}_p99_ms") if loop else "", "—"]
        cells.append(f"{streamed[f'{side}_whole_p50_ms']:.3f} ms" if streamed else "")
        lines.append("| " + " | ".join(cells) + " |")
    for route, label in ROUTES:
        cells = [f"gateway, {label_of(route, label, result)}"]
        for mode in ("non-stream", "stream"):
            loop = loops.get(f"{route} {mode}")
            if loop is None:
                cells += ["", ""]
                continue
            cells += [
                pair(loop, "route_p50_ms", "route_p99_ms"),
                pair(loop, "over_alone_p50_ms", "over_alone_p99_ms", True),
            ]
        loop = loops.get(f"{route} stream")
        cells.append(f"{loop['route_whole_p50_ms']:.3f} ms" if loop else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def label_of(route: str, label: str, result: dict[str, Any]) -> str:
    slow, hedge = f"{result['slow_ms']:g}", f"{result['hedge_ms']:g}"
    return {
        "race": f"race [fast, slow +{slow} ms] (`{route}`)",
        "hedge-fast": f"hedged {hedge} ms, fast first (`{route}`)",
        "hedge-slow": f"hedged {hedge} ms, slow first (`{route}`)",
    }.get(route, label)


def upstream_table(result: dict[str, Any]) -> str:
    lines = [
        "| loop | calls | answered by | slow upstream: received / answered / aborted / new connections "
        "| slow: closed after (mean / max) | left at slow after | fast got from the route | checks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, loop in result["loops"].items():
        calls = loop["calls"] + loop["warm_calls"]
        answered = ", ".join(f"{k} {v}" for k, v in loop["answered_by"].items())
        slow = (
            f"{loop['slow_received']} / {loop['slow_requests']} / {loop['slow_aborted']} / {loop['slow_connections']}"
        )
        mean = loop["slow_closed_after_ms_mean"]
        closed = f"{mean:.1f} / {loop['slow_aborted_ms_max']:.1f} ms" if mean is not None else "—"
        left = f"{loop['slow_in_flight_after']} waiting, {loop['slow_open_connections_after']} open"
        failed = [k for k, ok in loop["checks"].items() if not ok]
        verdict = "**met**" if not failed else "**FAILED**: " + "; ".join(failed)
        lines.append(
            f"| {name} | {calls} | {answered} | {slow} | {closed} | {left} | {loop['fast_received_from_route']} "
            f"| {verdict} |"
        )
    return "\n".join(lines)


def report(result: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Print the racing tables; return what goes under "race" in the JSON."""
    latency, upstreams = latency_table(result), upstream_table(result)
    print(
        f"\nRacing: a fast upstream and a slow one (+{result['slow_ms']:g} ms to the first byte), one gateway, "
        f"hedge {result['hedge_ms']:g} ms.\nSequential (c=1), one loop per route: a call each in turn straight to "
        "the fast upstream, through the gateway\nto the fast target alone, through the route. 'calls' include the "
        "warm-up.\n"
    )
    print(latency)
    print()
    print(upstreams)
    fds = f"gateway open fds before / after the loops: {result['gateway_fds_before']} / {result['gateway_fds_after']}"
    print(f"\n{fds} ({'ok' if result['fds_ok'] else 'LEAK?'})")
    if not result["valid"]:
        print("\nRACE CHECKS FAILED: see the checks column", file=sys.stderr)
    return {"meta": meta, **result, "tables": [latency, upstreams]}
