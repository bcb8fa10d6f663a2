"""The Sluice soak: a fixed request rate for minutes through faults, disconnects and a Redis kill (RELIABILITY 28).

    .venv/bin/python bench/soak.py                       # 10 minutes at 50 req/s (about 12 min in all)
    .venv/bin/python bench/soak.py --minutes 30          # the length RELIABILITY scenario 28 asks for
    .venv/bin/python bench/soak.py --seconds 60 --warmup-s 15   # a quick run while developing
    .venv/bin/python bench/soak.py --help

What it starts, all on loopback and all its own (stopped by pid at the end):

- `bench/soak_upstream.py`, a fake OpenAI provider in its own process that answers 20%
  of its requests (`--fault-rate`) with a fault: 429s with short reset headers, 500 /
  502 / 503 (the 500 echoes the key it got), stalls longer than the gateway's
  `first_byte_s` / `idle_s`, and cuts (a stream or body closed halfway, a connection
  reset before any answer);
- a `redis-server` on `--redis-port` (default 6390, never the machine's 6379), its files
  in a temporary folder, with an append-only file so a SIGKILL loses no acknowledged
  write (without it the kill would wipe the ledger rows written before it and the row
  count could not be checked);
- `sluice serve` (uvicorn, real sockets) on a config with three providers `p1`..`p3`
  (the fake, on three paths) in one fallback route `soak`, `[redis]` on the soak's
  Redis (cache, cooldowns and the ledger, spooled to the temporary folder while Redis
  is away), `[auth]` with an admin key and one tenant key, and small timeouts. Every
  key is a fresh random `sk-soak-...` string given to the processes in their
  environment only.

Then an open-loop client (raw asyncio HTTP/1.1 keep-alive, so it costs little next to
the gateway) sends `--rate` requests a second at fixed times: half streams, 10% with
`X-Sluice-Cache: on`, 10% disconnecting (a non-stream request closed 5-250 ms after it
was sent, a stream closed after its first chunk, half of those with an RST). Each call
carries its own `X-Request-Id`, so the ledger can be matched call by call. The client,
the fake provider and Redis share one CPU; the gateway has the other to itself
(`taskset`; `--no-pin` to leave scheduling alone).

1. warm-up (`--warmup-s`), then traffic stops and the gateway idles (`--settle-s`):
   the baseline sample;
2. the soak (`--minutes`), sampled every `--sample-s`; halfway the soak's Redis is
   killed (SIGKILL) and restarted `--redis-down-s` later on the same port;
3. traffic stops, every call is finished, the gateway idles: the end sample;
4. the ledger is read through `/sluice/usage` and `/sluice/calls` (polled until its
   count stops moving), the gateway is stopped with SIGTERM (its exit code and the
   time it took are checked), and if the rows were short it is started again on the
   same Redis to read them once more.

A sample is the gateway's RSS and open fds (`/proc/PID/status`, `/proc/PID/fd`, each
socket classified via `/proc/net/tcp*` and `/proc/net/unix`: client, upstream, Redis,
unix, and `other_socket`, a TCP socket the kernel no longer lists (reset or closed by
its peer) whose fd is still open; and the CLOSE_WAIT ones, to Redis apart), its
asyncio task count (`sluice_asyncio_tasks` on `/metrics`),
`/readyz`'s Redis state, the fake provider's open connections and requests in flight,
and Redis's connected clients.

The checks (any failure exits 1; the ones marked advisory only print "partial"):

- flat: RSS at the end (idle) at most `--rss-budget-mib` above the baseline (idle,
  after warm-up); asyncio tasks and the fds that are not pooled upstream or Redis
  connections back to the baseline within `--task-slack` / `--fd-slack`; no client or
  upstream socket in CLOSE_WAIT; the pooled upstream and live Redis sockets no more
  than the connections the fake provider and Redis themselves see open; nothing in
  flight at the fake provider; advisory: no socket to the killed Redis still in
  CLOSE_WAIT (redis-py drops a stale pooled connection only when it next hands it out);
- ledger: one row per call sent (disconnected ones included; the gateway records
  those as 499): as many rows as calls, every request id present once, none extra;
  `/sluice/usage` and the `sluice_requests_total` counters agree, and so does the
  access log (one line per call on the gateway's stdout);
- keys: no provider, tenant or admin key (nor its random tail) in the gateway's
  stdout/stderr, the ledger rows, `/metrics`, any file in the temporary folder (the
  Redis append-only file and a SAVEd dump included, the ledger spool) or any answer the
  client got;
- the gateway: no traceback in its logs, no stalled upstream request answered late
  (it closed every one), every provider got its own key, no client call timed out
  (`--client-timeout-s`), every call got an HTTP answer of the contract (no reset
  without one, no 500 or 503: upstream failures are 502s, all targets cooling a 429),
  at least `--min-served` of the calls that did not disconnect got a 200, and SIGTERM
  ended it with exit code 0; advisory: `/readyz` said Redis was down during the outage,
  and the calls without `X-Sluice-Cache` were served as often while Redis was down as
  otherwise (within 3 standard deviations). The cache-on calls are left out of that
  comparison: with Redis down the cache fails open, so their would-be hits go upstream
  and meet its 20% faults, which lowers their share by design.

`--gc-probe` (diagnosis, when RSS grows): the gateway is started as `python -c ...`
with a SIGUSR1 handler, and at the baseline and end samples it counts its objects by
type, runs `gc.collect()` and counts again; the JSON's `flat.gc_probe` then says
whether the growth is live objects (and which types) or garbage and allocator slack.

It prints a Markdown summary and writes everything, samples included, as JSON to
`--out` (default bench/results/soak.json, git-ignored).

This file is the entry point (the options and `main`); the rest is in bench/soak_*.py:
soak_processes (starting and stopping Redis, the fake provider and the gateway, their
config and keys), soak_client (the open-loop client), soak_sampling (/proc, sockets,
/metrics, /readyz, /_stats and the ledger), soak_run (the phases, in order), soak_checks
(the verdicts), soak_figures (percentiles, latency, the RSS trend) and soak_report (the
JSON summary and the Markdown). soak_upstream is the fake provider's own process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from soak_processes import BENCH
from soak_report import markdown, summarize
from soak_run import SoakRun

# The command-line options in --help's order: flag, type (bool: a switch), default, help.
OPTIONS: list[tuple[str, type, Any, str | None]] = [
    ("--rate", float, 50.0, "requests per second, open loop (default 50)"),
    ("--minutes", float, 10.0, "soak length after warm-up (default 10; RELIABILITY: 30)"),
    ("--seconds", float, None, "soak length in seconds (overrides --minutes; for short runs)"),
    ("--warmup-s", float, 60.0, "warm-up traffic before the baseline (default 60)"),
    ("--settle-s", float, 5.0, "idle time before the baseline and end samples"),
    ("--sample-s", float, 10.0, "sampling interval during the soak (default 10)"),
    ("--fault-rate", float, 0.2, "share of upstream requests that fail (default 0.2)"),
    ("--disconnect-rate", float, 0.1, "share of calls the client abandons"),
    ("--stream-share", float, 0.5, "share of calls that stream (default 0.5)"),
    ("--cache-share", float, 0.1, "share of calls with X-Sluice-Cache: on"),
    ("--redis-port", int, 6390, "the soak's own redis-server (default 6390)"),
    ("--redis-down-s", float, 15.0, "how long Redis stays killed (default 15)"),
    ("--no-redis-kill", bool, False, "do not kill Redis midway"),
    ("--first-byte-s", float, 1.0, "the gateway's first_byte_s (and idle_s)"),
    ("--stall-s", float, 5.0, "how long the fake provider stalls"),
    ("--rss-budget-mib", float, 20.0, "allowed RSS growth, idle to idle (MiB)"),
    ("--fd-slack", int, 4, "allowed growth of non-pool fds (default 4)"),
    ("--task-slack", int, 3, "allowed growth of asyncio tasks (default 3)"),
    ("--min-served", float, 0.9, "least share of kept calls answered 200"),
    ("--client-timeout-s", float, 30.0, "a call taking longer is a hang"),
    ("--seed", int, 28, None),
    ("--no-pin", bool, False, "do not pin the gateway to its own CPU"),
    ("--keep", bool, False, "keep the temporary folder (logs, Redis files)"),
    (
        "--gc-probe",
        bool,
        False,
        "diagnosis: at the baseline and end samples, count the gateway's objects by type\n"
        "and run gc.collect() in it (SIGUSR1; starts it as python -c ... instead of `sluice`)",
    ),
    ("--out", str, str(BENCH / "results" / "soak.json"), "where to write the JSON summary"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options (`OPTIONS`), with `duration_s` from --seconds or --minutes."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    for flag, kind, default, help_text in OPTIONS:
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=default, help=help_text)
    args = parser.parse_args(argv)
    args.duration_s = args.seconds if args.seconds is not None else args.minutes * 60
    if args.rate <= 0 or args.duration_s <= 0:
        parser.error("--rate and the duration must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print the summary, write the JSON; 0 when every check passed, 1 when one failed."""
    args = parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    folder = Path(tempfile.mkdtemp(prefix="sluice-soak-"))
    soak = SoakRun(args, folder)
    try:
        measured = asyncio.run(soak.run())
        summary = summarize(measured, args)  # reads the run's files, so before they are removed
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        soak.procs.stop_all()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    text = markdown(summary)
    print()
    print(text)
    summary["markdown"] = text
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        print(f"\nJSON: {out}" + (f"; files kept in {folder}" if args.keep else ""))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
