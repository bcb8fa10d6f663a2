"""One soak run, phase by phase: start everything, warm up, soak (Redis killed midway), idle, read the ledger, stop.

`SoakRun.run` prints a line per sample as it goes and returns what it measured
(`Measured`); judging and reporting it is soak_report's job.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from soak_client import Call, Client, Mix
from soak_processes import (
    BENCH,
    Gateway,
    Keys,
    Processes,
    SoakRedis,
    free_port,
    pin_cpus,
    port_in_use,
    redis_command,
    start_upstream,
    write_config,
)
from soak_sampling import LedgerReading, Sampler, cpu_seconds, http_get, read_ledger, sample_line

ROOT = BENCH.parent


@dataclass
class Measured:
    """Everything a run measured, for the checks and the report."""

    meta: dict[str, Any]
    folder: Path  # the run's files: gateway and provider logs, Redis's files, the ledger and its spool
    run_id: str  # in every request id: soak-<run_id>-<n>
    needles: dict[str, bytes]  # the keys that must appear nowhere
    calls: list[Call]
    warmup_calls: int
    client_leaks: Counter[str]  # keys seen in answers
    samples: list[dict[str, Any]]
    baseline: dict[str, Any]  # idle, after the warm-up
    end: dict[str, Any]  # idle, after the soak
    events: dict[str, float]  # loop times: redis_killed, redis_restarting, redis_back, load_end
    load_start: float  # loop time the soak's load began
    gateway_cpu_s: tuple[float, float]  # the gateway's CPU seconds over the soak, and the wall seconds
    metrics_text: bytes  # the last /metrics read
    upstream: dict[str, Any]  # the fake provider's /_stats at the end
    ledger: LedgerReading  # read live, before SIGTERM
    reread: LedgerReading | None  # read after a restart, when the live read was short
    exit_code: int | None
    stop_s: float  # how long SIGTERM took


class SoakRun:
    """The soak's phases over its processes; `procs` holds every child, for the caller to stop on the way out."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.folder = folder
        self.procs = Processes()
        self.keys = Keys.fresh()
        self.needles = self.keys.needles()
        self.run_id = secrets.token_hex(3)
        self.events: dict[str, float] = {}
        self.gateway_cpu_s = (0.0, 0.0)
        self.cpus = pin_cpus(args.no_pin)

    async def run(self) -> Measured:
        """Start everything, drive the traffic, read the ledger, stop everything; what it all measured."""
        args = self.args
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        if port_in_use(args.redis_port):
            raise RuntimeError(f"port {args.redis_port} is taken; choose another with --redis-port")
        loop = asyncio.get_running_loop()
        self.wall_start = time.time()
        meta = run_meta(args, self.cpus.description, self.wall_start)
        self.redis = SoakRedis(self.procs, args.redis_port, self.folder / "redis", self.cpus.others)
        self.redis.start()
        upstream, self.upstream_port = start_upstream(
            self.procs, self.folder, self.keys.providers, args.fault_rate, args.stall_s, args.seed, self.cpus.others
        )
        port = free_port()
        config = write_config(self.folder, port, self.upstream_port, args.redis_port, args.first_byte_s)
        self.gateway = Gateway(self.procs, config, port, self.folder, self.keys, self.cpus.gateway, args.gc_probe)
        meta["gateway_startup_s"] = round(self.gateway.start(), 3)
        print(
            f"gateway pid {self.gateway.pid} on :{port}; fake provider :{self.upstream_port}; "
            f"redis :{args.redis_port}; files in {self.folder}",
            flush=True,
        )
        started = loop.time()
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        await self.traffic()
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        client_cpu = usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
        meta["client_cpu_share"] = round(client_cpu / (loop.time() - started), 3)
        _, upstream_stats_body = await http_get(self.upstream_port, "/_stats")
        upstream_stats = json.loads(upstream_stats_body)

        sent = len(self.client.calls)
        ledger = await read_ledger(self.gateway.port, self.keys.admin, self.wall_start - 5, sent)
        exit_code, stop_s = self.gateway.terminate()
        reread = None
        if len(ledger.rows) != sent:
            print("ledger rows != calls: restarting the gateway to read them again", flush=True)
            self.gateway.start()
            await asyncio.sleep(5)
            reread = await read_ledger(self.gateway.port, self.keys.admin, self.wall_start - 5, sent)
            self.gateway.terminate()
        await asyncio.to_thread(redis_command, args.redis_port, "SAVE", timeout=30)  # a dump to scan for keys
        self.redis.stop()
        self.procs.stop(upstream)
        meta["loadavg_end"] = os.getloadavg()
        meta["wall_s"] = round(time.time() - self.wall_start, 1)
        return Measured(
            meta=meta,
            folder=self.folder,
            run_id=self.run_id,
            needles=self.needles,
            calls=self.client.calls,
            warmup_calls=self.warmup_calls,
            client_leaks=self.client.leaks,
            samples=self.sampler.samples,
            baseline=self.baseline,
            end=self.end,
            events=self.events,
            load_start=self.sampler.load_start,
            gateway_cpu_s=self.gateway_cpu_s,
            metrics_text=self.sampler.last_metrics,
            upstream=upstream_stats,
            ledger=ledger,
            reread=reread,
            exit_code=exit_code,
            stop_s=stop_s,
        )

    async def traffic(self) -> None:
        """Warm up, take the idle baseline, soak (sampling, and the Redis outage midway), take the idle end."""
        args = self.args
        loop = asyncio.get_running_loop()
        mix = Mix(args.stream_share, args.disconnect_rate, args.cache_share, args.seed)
        self.client = Client(self.gateway.port, self.keys.tenant, mix, args.client_timeout_s, self.run_id, self.needles)
        self.sampler = Sampler(self.gateway, self.upstream_port, args.redis_port, self.keys.admin, self.client)
        print(f"warm-up: {args.warmup_s:g} s at {args.rate:g} req/s", flush=True)
        await self.client.drive(args.warmup_s, args.rate)
        self.baseline = await self.idle_sample("baseline (idle, after warm-up)")
        self.warmup_calls = len(self.client.calls)
        print(f"soak: {args.duration_s:g} s at {args.rate:g} req/s", flush=True)
        self.sampler.load_start = loop.time()
        cpu0 = cpu_seconds(self.gateway.pid)
        stop = asyncio.Event()
        sampling = asyncio.create_task(self.sample_every(args.sample_s, stop))
        outage = None if args.no_redis_kill else asyncio.create_task(self.redis_outage())
        await self.client.drive(args.duration_s, args.rate)
        self.events["load_end"] = loop.time()
        stop.set()
        await sampling
        if outage is not None:
            await outage
        await self.sample("end of load")
        self.end = await self.idle_sample("end (idle)")
        self.gateway_cpu_s = (cpu_seconds(self.gateway.pid) - cpu0, loop.time() - self.sampler.load_start)

    async def sample(self, phase: str) -> dict[str, Any]:
        """Take a sample and print its line."""
        s = await self.sampler.take(phase)
        print(sample_line(s), flush=True)
        return s

    async def sample_every(self, interval_s: float, stop: asyncio.Event) -> None:
        """A "load" sample every `interval_s` until `stop` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if not stop.is_set():
                await self.sample("load")

    async def redis_outage(self) -> None:
        """Halfway through the soak: SIGKILL Redis, sample while it is down, restart it `--redis-down-s` later."""
        loop = asyncio.get_running_loop()
        load_start = self.sampler.load_start
        await asyncio.sleep(self.args.duration_s / 2)
        await self.sample("mid (before the Redis kill)")
        await asyncio.to_thread(self.redis.kill)
        self.events["redis_killed"] = loop.time()
        print(f"  redis-server SIGKILLed at +{loop.time() - load_start:.0f} s", flush=True)
        await asyncio.sleep(self.args.redis_down_s / 2)
        await self.sample("Redis down")
        await asyncio.sleep(max(0.0, self.events["redis_killed"] + self.args.redis_down_s - loop.time()))
        self.events["redis_restarting"] = loop.time()
        await asyncio.to_thread(self.redis.start)
        self.events["redis_back"] = loop.time()
        took = self.events["redis_back"] - self.events["redis_restarting"]
        print(f"  redis-server restarted at +{loop.time() - load_start:.0f} s ({took:.1f} s to answer)", flush=True)

    async def idle_sample(self, phase: str) -> dict[str, Any]:
        """Finish every call, let the gateway idle `--settle-s`, then sample (and --gc-probe it)."""
        await self.client.finish()
        await asyncio.sleep(self.args.settle_s)
        s = await self.sample(phase)
        if self.args.gc_probe:
            s["gc"] = await asyncio.to_thread(self.gateway.probe)
            s["rss_after_gc_mib"] = self.sampler.rss_mib()
            s["fds_after_gc"] = self.sampler.fds()
            if s["gc"] is not None:
                print(
                    f"  gc probe: {s['gc']['objects_before']} objects, gc.collect() freed {s['gc']['collected']}, "
                    f"{s['gc']['objects_after']} left; RSS then {s['rss_after_gc_mib']} MiB",
                    flush=True,
                )
        return s


def run_meta(args: argparse.Namespace, pinning: str, wall_start: float) -> dict[str, Any]:
    """Where and how the run ran: commit, options, pinning, load average, versions."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "proxy", "middleware"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
    return {
        "started": datetime.fromtimestamp(wall_start, UTC).isoformat(timespec="seconds"),
        "commit": commit + (" (proxy/ or middleware/ modified)" if dirty else ""),
        "rate": args.rate,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "fault_rate": args.fault_rate,
        "disconnect_rate": args.disconnect_rate,
        "stream_share": args.stream_share,
        "cache_share": args.cache_share,
        "redis_down_s": None if args.no_redis_kill else args.redis_down_s,
        "first_byte_s": args.first_byte_s,
        "stall_s": args.stall_s,
        "seed": args.seed,
        "pinning": pinning,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "pythonpath": os.environ.get("PYTHONPATH"),
        "redis": redis_version.stdout.split(" sha=")[0].strip(),
    }
