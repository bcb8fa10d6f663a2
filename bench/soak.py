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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import platform
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PROVIDERS = ("p1", "p2", "p3")
POOL_IDLE_S = 2.0  # a client connection idle longer is not reused (uvicorn closes idle ones after 5 s)
CACHE_BODIES = 20  # distinct bodies of the cache-on calls, so some are hits
# --gc-probe: `sluice serve` with a SIGUSR1 handler that counts the live objects by type, runs
# gc.collect() and counts again, and prints it all as one JSON line on stderr. Diagnosis only.
GC_PROBE = """
import collections, gc, json, signal, sys

def probe(signum, frame):
    objects = gc.get_objects()
    before = collections.Counter(type(o).__qualname__ for o in objects)
    del objects
    collected = gc.collect()
    after = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    line = {"objects_before": sum(before.values()), "collected": collected, "objects_after": sum(after.values()),
            "garbage": dict((before - after).most_common(15)), "types": dict(after.most_common(60))}
    print("gc_probe " + json.dumps(line), file=sys.stderr, flush=True)

signal.signal(signal.SIGUSR1, probe)
from proxy.cli import main
sys.exit(main(sys.argv[1:]))
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=float, default=50.0, help="requests per second, open loop (default 50)")
    p.add_argument(
        "--minutes", type=float, default=10.0, help="soak length after warm-up (default 10; RELIABILITY: 30)"
    )
    p.add_argument("--seconds", type=float, help="soak length in seconds (overrides --minutes; for short runs)")
    p.add_argument("--warmup-s", type=float, default=60.0, help="warm-up traffic before the baseline (default 60)")
    p.add_argument("--settle-s", type=float, default=5.0, help="idle time before the baseline and end samples")
    p.add_argument("--sample-s", type=float, default=10.0, help="sampling interval during the soak (default 10)")
    p.add_argument("--fault-rate", type=float, default=0.2, help="share of upstream requests that fail (default 0.2)")
    p.add_argument("--disconnect-rate", type=float, default=0.1, help="share of calls the client abandons")
    p.add_argument("--stream-share", type=float, default=0.5, help="share of calls that stream (default 0.5)")
    p.add_argument("--cache-share", type=float, default=0.1, help="share of calls with X-Sluice-Cache: on")
    p.add_argument("--redis-port", type=int, default=6390, help="the soak's own redis-server (default 6390)")
    p.add_argument("--redis-down-s", type=float, default=15.0, help="how long Redis stays killed (default 15)")
    p.add_argument("--no-redis-kill", action="store_true", help="do not kill Redis midway")
    p.add_argument("--first-byte-s", type=float, default=1.0, help="the gateway's first_byte_s (and idle_s)")
    p.add_argument("--stall-s", type=float, default=5.0, help="how long the fake provider stalls")
    p.add_argument("--rss-budget-mib", type=float, default=20.0, help="allowed RSS growth, idle to idle (MiB)")
    p.add_argument("--fd-slack", type=int, default=4, help="allowed growth of non-pool fds (default 4)")
    p.add_argument("--task-slack", type=int, default=3, help="allowed growth of asyncio tasks (default 3)")
    p.add_argument("--min-served", type=float, default=0.9, help="least share of kept calls answered 200")
    p.add_argument("--client-timeout-s", type=float, default=30.0, help="a call taking longer is a hang")
    p.add_argument("--seed", type=int, default=28)
    p.add_argument("--no-pin", action="store_true", help="do not pin the gateway to its own CPU")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, Redis files)")
    p.add_argument(
        "--gc-probe",
        action="store_true",
        help="diagnosis: at the baseline and end samples, count the gateway's objects by type\n"
        "and run gc.collect() in it (SIGUSR1; starts it as python -c ... instead of `sluice`)",
    )
    p.add_argument("--out", default=str(BENCH / "results" / "soak.json"), help="where to write the JSON summary")
    args = p.parse_args(argv)
    args.duration_s = args.seconds if args.seconds is not None else args.minutes * 60
    if args.rate <= 0 or args.duration_s <= 0:
        p.error("--rate and the duration must be positive")
    return args


# ---------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """In the child: SIGKILL when this script dies without cleaning up (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)


class Processes:
    """The subprocesses this run started; only these are ever signalled, by their own pids."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str], cpu: int | None, **popen: Any) -> subprocess.Popen[bytes]:
        prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
        proc = subprocess.Popen(prefix + argv, preexec_fn=_die_with_parent, **popen)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0, sig: int = signal.SIGTERM) -> float:
        """Signal `proc` and wait for it (SIGKILL after `grace`); the seconds it took."""
        started = time.monotonic()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self.running:
            self.running.remove(proc)
        return time.monotonic() - started

    def stop_all(self) -> None:
        for proc in list(self.running):
            with contextlib.suppress(Exception):
                self.stop(proc, grace=3.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def gateway_command() -> list[str]:
    script = Path(sys.executable).parent / "sluice"
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy"]


def wait_for(predicate: Any, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not ready within {timeout:g} s")


def healthz_ok(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def redis_command(port: int, *words: str, timeout: float = 2.0) -> bytes | None:
    """One command in RESP on a fresh connection; the raw reply, or None when Redis does not answer."""
    request = f"*{len(words)}\r\n".encode() + b"".join(f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words)
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(request)
            data = sock.recv(65536)
            if data.startswith(b"$"):
                size = int(data[1 : data.index(b"\r\n")])
                while size >= 0 and len(data) < data.index(b"\r\n") + 2 + size + 2:
                    more = sock.recv(65536)
                    if not more:
                        break
                    data += more
            return data
    except (OSError, ValueError):
        return None


def redis_clients(port: int) -> int | None:
    """Redis's connected_clients, not counting the connection that asks."""
    reply = redis_command(port, "INFO", "clients", timeout=1.0)
    match = re.search(rb"connected_clients:(\d+)", reply or b"")
    return int(match.group(1)) - 1 if match else None


class SoakRedis:
    """The soak's own redis-server: append-only (a SIGKILL loses no acknowledged write), files in `folder`."""

    def __init__(self, procs: Processes, port: int, folder: Path, cpu: int | None) -> None:
        self.procs = procs
        self.port = port
        self.folder = folder
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "yes"]
        argv += ["--appendfsync", "everysec", "--rdbcompression", "no", "--dir", str(self.folder)]
        argv += ["--logfile", str(self.folder / "redis.log"), "--daemonize", "no"]
        self.proc = self.procs.spawn(argv, self.cpu, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.starts += 1
        wait_for(lambda: redis_command(self.port, "PING", timeout=0.5) == b"+PONG\r\n", 30, "redis-server", self.proc)

    def kill(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc, grace=5.0, sig=signal.SIGKILL)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc, grace=10.0)
            self.proc = None


def start_upstream(
    procs: Processes, folder: Path, args: argparse.Namespace, keys: dict[str, str], cpu: int | None
) -> tuple[subprocess.Popen[bytes], int]:
    argv = [sys.executable, str(BENCH / "soak_upstream.py"), "--host", HOST, "--port", "0"]
    argv += ["--fault-rate", str(args.fault_rate), "--stall-s", str(args.stall_s), "--seed", str(args.seed)]
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["SOAK_UPSTREAM_KEYS"] = json.dumps(keys)
    with (folder / "upstream.err").open("wb") as err:
        proc = procs.spawn(argv, cpu, stdout=subprocess.PIPE, stderr=err, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "listening HOST:PORT", printed once it listens
    match = re.match(rb"listening [\d.]+:(\d+)", line)
    if match is None:
        raise RuntimeError(f"the fake provider did not start: {line!r}")
    return proc, int(match.group(1))


def write_config(folder: Path, port: int, upstream_port: int, redis_port: int, first_byte_s: float) -> Path:
    lines = [
        "[server]",
        f'host = "{HOST}"',
        f"port = {port}",
        "",
        "[auth]",
        'admin_key = "env:SOAK_ADMIN_KEY"',
        'keys = [{ id = "soak", key = "env:SOAK_TENANT_KEY" }]',
        "",
        "[redis]",
        f'url = "redis://{HOST}:{redis_port}/0"',
        "op_timeout_ms = 50",
        "",
        "[timeouts]",
        "connect_s = 1",
        f"first_byte_s = {first_byte_s}",
        f"idle_s = {first_byte_s}",
        "total_s = 10",
        "",
        "[ledger]",
        f"path = {json.dumps(str(folder / 'ledger.db'))}",
        "",
        "[routes.soak]",
        'strategy = "fallback"',
        "targets = [" + ", ".join(f'"{name}/m"' for name in PROVIDERS) + "]",
    ]
    for name in PROVIDERS:
        lines += ["", f"[providers.{name}]", f'base_url = "http://{HOST}:{upstream_port}/{name}/v1"']
        lines += [f'api_key = "env:SOAK_KEY_{name.upper()}"', 'models = ["m"]']
        lines += ["", f'[prices."{name}/m"]', "input = 0.5", "output = 1.5"]
    path = folder / "soak.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Keys:
    """This run's secrets: random, distinctive, given to processes in their environment only."""

    providers: dict[str, str] = field(default_factory=dict)
    tenant: str = ""
    admin: str = ""

    @classmethod
    def fresh(cls) -> Keys:
        providers = {name: f"sk-soak-SECRET-{name}-{secrets.token_hex(12)}" for name in PROVIDERS}
        return cls(providers, f"sk-soak-GWKEY-{secrets.token_hex(12)}", f"sk-soak-ADMIN-{secrets.token_hex(12)}")

    def needles(self) -> dict[str, bytes]:
        """What must appear nowhere: each key, and its random tail alone (a partly masked or cut key)."""
        named = {f"provider key {n}": k for n, k in self.providers.items()}
        named.update({"tenant key": self.tenant, "admin key": self.admin})
        found: dict[str, bytes] = {}
        for name, key in named.items():
            found[name] = key.encode()
            found[name + " (tail)"] = key.rsplit("-", 1)[1].encode()
        return found

    def gateway_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}  # no real key near a soak
        env.update({f"SOAK_KEY_{n.upper()}": k for n, k in self.providers.items()})
        env.update(SOAK_TENANT_KEY=self.tenant, SOAK_ADMIN_KEY=self.admin)
        return env


class Gateway:
    """`sluice serve` on the soak config, on the gateway's CPU; stdout and stderr to files."""

    def __init__(
        self, procs: Processes, config: Path, port: int, folder: Path, keys: Keys, cpu: int | None, gc_probe: bool
    ) -> None:
        self.procs, self.config, self.port, self.folder, self.keys, self.cpu = procs, config, port, folder, keys, cpu
        self.gc_probe = gc_probe
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        self.runs += 1
        argv = [*gateway_command(), "serve", "--config", str(self.config)]
        if self.gc_probe:
            argv = [sys.executable, "-c", GC_PROBE, "serve", "--config", str(self.config)]
        suffix = "" if self.runs == 1 else f"-{self.runs}"
        with (
            (self.folder / f"gateway{suffix}.out").open("wb") as out,
            (self.folder / f"gateway{suffix}.err").open("wb") as err,
        ):
            started = time.monotonic()
            self.proc = self.procs.spawn(
                argv, self.cpu, stdout=out, stderr=err, env=self.keys.gateway_env(), cwd=str(self.folder)
            )
        wait_for(lambda: healthz_ok(self.port), 30, "sluice serve", self.proc)
        return time.monotonic() - started

    def probe(self) -> dict[str, Any] | None:
        """--gc-probe: SIGUSR1, then the JSON line it printed (objects by type, before and after gc.collect())."""
        assert self.proc is not None
        err = self.folder / "gateway.err"
        seen = err.read_bytes().count(b"gc_probe ")
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            healthz_ok(self.port)  # wakes the event loop, so the handler runs
            lines = [x for x in err.read_bytes().splitlines() if x.startswith(b"gc_probe ")]
            if len(lines) > seen:
                return dict(json.loads(lines[-1][len(b"gc_probe ") :]))
            time.sleep(0.2)
        return None

    def terminate(self) -> tuple[int | None, float]:
        """SIGTERM (the ledger and access log are flushed); its exit code and how long it took."""
        assert self.proc is not None
        proc = self.proc
        took = self.procs.stop(proc, grace=45.0)
        self.proc = None
        return proc.returncode, took


# ---------------------------------------------------------------- /proc readings


def proc_status(pid: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "Threads"):
            found[name] = float(value.split()[0])
    return found


def cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tcp_sockets() -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) of every TCP socket on the machine."""
    states = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN"}
    found: dict[int, tuple[int, int, str]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) < 10:
                    continue
                local = int(parts[1].rsplit(":", 1)[1], 16)
                remote = int(parts[2].rsplit(":", 1)[1], 16)
                found[int(parts[9])] = (local, remote, states.get(parts[3], parts[3]))
    return found


def unix_sockets() -> set[int]:
    """The inodes of every unix socket on the machine."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 7:
                with contextlib.suppress(ValueError):
                    found.add(int(parts[6]))
    return found


def fd_breakdown(pid: int, gateway_port: int, upstream_port: int, redis_port: int) -> dict[str, int]:
    """The gateway's fds: total, its sockets by peer (clients, upstream, redis, other), and CLOSE_WAIT ones.

    `close_wait_redis` counts the CLOSE_WAIT sockets to Redis, `close_wait` all others.
    """
    counts = Counter({"fds": 0, "client": 0, "upstream": 0, "redis": 0, "listen": 0, "other_socket": 0})
    counts.update(close_wait=0, close_wait_redis=0, not_socket=0, unix=0)
    tcp = tcp_sockets()
    unix = unix_sockets()
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        counts["fds"] += 1
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match is None:
            counts["not_socket"] += 1
            continue
        info = tcp.get(int(match.group(1)))
        if info is None:  # a unix socket, or a TCP one no longer in /proc/net/tcp (reset, closed) but not closed here
            counts["unix" if int(match.group(1)) in unix else "other_socket"] += 1
            continue
        local, remote, state = info
        if state == "CLOSE_WAIT":  # the peer closed, the gateway has not
            counts["close_wait_redis" if remote == redis_port else "close_wait"] += 1
        if state == "LISTEN":
            counts["listen"] += 1
        elif local == gateway_port:
            counts["client"] += 1
        elif remote == upstream_port:
            counts["upstream"] += 1
        elif remote == redis_port:
            counts["redis"] += 1
        else:
            counts["other_socket"] += 1
    return dict(counts)


# ---------------------------------------------------------------- HTTP


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


async def http_get(
    port: int, path: str, headers: dict[str, str] | None = None, limit_s: float = 30.0
) -> tuple[int, bytes]:
    """(status, body) of one GET on a fresh connection (`Connection: close`)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    async with asyncio.timeout(limit_s):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n{extra}\r\n".encode())
            data = await reader.read()
        finally:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    if b"\r\ntransfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def metric_values(text: str) -> dict[str, float]:
    """Unlabelled gauges, and `sluice_requests_total` summed over its labels."""
    found: dict[str, float] = {"sluice_requests_total": 0.0}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, _, value = line.rpartition(" ")
        try:
            number = float(value)
        except ValueError:
            continue
        if name.startswith("sluice_requests_total{"):
            found["sluice_requests_total"] += number
        elif "{" not in name:
            found[name] = number
    return found


# ---------------------------------------------------------------- the client


@dataclass(slots=True)
class Call:
    n: int
    request_id: str
    planned: float  # loop time it was due
    stream: bool
    disconnect: bool
    cache: bool
    began: float | None = None  # loop time its task started (minus `planned`: the open-loop send lag)
    sent: float | None = None  # loop time its bytes were handed to the kernel
    status: int | None = None
    outcome: str = "pending"  # ok, truncated, http_error, disconnected, client_timeout, client_error
    first_byte: float | None = None
    done: float | None = None
    detail: str | None = None


class Client:
    """An open-loop HTTP/1.1 keep-alive client for the gateway's chat endpoint; raw asyncio, little CPU."""

    def __init__(self, port: int, tenant_key: str, args: argparse.Namespace, run_id: str, needles: dict[str, bytes]):
        self.port = port
        self.key = tenant_key
        self.args = args
        self.run_id = run_id
        self.needles = needles
        self.rng = random.Random(args.seed)  # the mix: call n's kind depends on the seed and n only
        self.act_rng = random.Random(args.seed + 1)  # when and how a disconnecting client leaves
        self.calls: list[Call] = []
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.leaks: Counter[str] = Counter()  # needles seen in answers
        self.in_flight = 0

    def request(self, call: Call) -> bytes:
        if call.cache:
            content = f"soak cached question {call.n % CACHE_BODIES}"
        else:
            content = f"soak question {call.n}: how are you?"
        body: dict[str, Any] = {"model": "soak", "messages": [{"role": "user", "content": content}]}
        if call.stream:
            body["stream"] = True
        data = json.dumps(body).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
            f"X-Request-Id: {call.request_id}\r\n{'X-Sluice-Cache: on' + chr(13) + chr(10) if call.cache else ''}"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        return head.encode() + data

    async def drive(self, duration_s: float, rate: float) -> None:
        """Start one call every 1/rate s for `duration_s`, at fixed times (open loop); return when all are sent."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        i = 0
        args = self.args
        while True:
            due = start + i / rate
            if due >= start + duration_s:
                return
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            n = len(self.calls)
            call = Call(
                n,
                f"soak-{self.run_id}-{n}",
                due,
                stream=self.rng.random() < args.stream_share,
                disconnect=self.rng.random() < args.disconnect_rate,
                cache=self.rng.random() < args.cache_share,
            )
            self.calls.append(call)
            task = asyncio.create_task(self.one(call))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            i += 1

    async def finish(self) -> None:
        """Wait for every call started; then close the idle connections."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = asyncio.get_running_loop().time()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if now - since < POOL_IDLE_S and not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        reader, writer = await asyncio.open_connection(HOST, self.port)
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def one(self, call: Call) -> None:
        loop = asyncio.get_running_loop()
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        keep = False
        call.began = loop.time()
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.args.client_timeout_s):
                reader, writer = await self._connection()
                writer.write(self.request(call))
                await writer.drain()
                call.sent = loop.time()
                if call.disconnect and not call.stream:
                    await asyncio.sleep(self.act_rng.uniform(0.005, 0.25))
                    call.outcome = "disconnected"
                    return
                keep = await self._read_answer(call, reader, writer, loop)
        except TimeoutError:
            call.outcome = "client_timeout"
        except (OSError, asyncio.IncompleteReadError, ValueError, asyncio.LimitOverrunError) as exc:
            call.outcome = "client_error"
            call.detail = type(exc).__name__
        finally:
            self.in_flight -= 1
            call.done = loop.time()
            if writer is not None:
                if keep and reader is not None:
                    self.idle.append((reader, writer, loop.time()))
                else:
                    writer.close()

    async def _read_answer(
        self, call: Call, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, loop: asyncio.AbstractEventLoop
    ) -> bool:
        """Read the answer (or its first chunk, then leave); whether the connection may be reused."""
        head = await reader.readuntil(b"\r\n\r\n")
        call.first_byte = loop.time()
        call.status = int(head.split(b" ", 2)[1])
        lower = head.lower()
        self._scan(head)
        keep = b"\r\nconnection: close" not in lower
        if b"\r\ntransfer-encoding: chunked" in lower:
            body = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
                if call.disconnect:  # after the first chunk: close, half of them with an RST
                    self._scan(bytes(body))
                    if self.act_rng.random() < 0.5:
                        _set_linger0(writer)
                    call.outcome = "disconnected"
                    return False
        else:
            match = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
            if match is None:
                body = bytearray(await reader.read())
                keep = False
            else:
                body = bytearray(await reader.readexactly(int(match.group(1))))
        self._scan(bytes(body))
        if call.disconnect:  # the whole answer came before the client could leave
            call.outcome = "disconnected"
            call.detail = "answered first"
            return False
        if call.status != 200:
            call.outcome = "http_error"
        elif call.stream and b"data: [DONE]" not in body:
            call.outcome = "truncated"
        else:
            call.outcome = "ok"
        return keep

    def _scan(self, data: bytes) -> None:
        for name, needle in self.needles.items():
            if needle in data:
                self.leaks[name] += 1


def _set_linger0(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# ---------------------------------------------------------------- the run


class Soak:
    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.folder = folder
        self.procs = Processes()
        self.keys = Keys.fresh()
        self.needles = self.keys.needles()
        self.run_id = secrets.token_hex(3)
        self.samples: list[dict[str, Any]] = []
        self.events: dict[str, float] = {}
        self.load_start = 0.0
        self.gateway_cpu_s = (0.0, 0.0)
        cpus = sorted(os.sched_getaffinity(0))
        self.pinning = "none"
        self.gateway_cpu: int | None = None
        self.other_cpu: int | None = None
        if not args.no_pin and len(cpus) >= 2 and shutil.which("taskset"):
            self.pinning = f"gateway on CPU {cpus[1]}; client, fake provider and Redis on CPU {cpus[0]}"
            self.gateway_cpu, self.other_cpu = cpus[1], cpus[0]
            os.sched_setaffinity(0, {cpus[0]})
        self.checks: list[dict[str, Any]] = []

    # --- sampling

    async def sample(self, phase: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        pid = self.gateway.pid
        s: dict[str, Any] = {
            "phase": phase,
            "t_s": round(loop.time() - self.load_start, 1) if self.load_start else None,
        }
        status = proc_status(pid)
        s["rss_mib"] = round(status.get("VmRSS", 0) / 1024, 2)
        s["hwm_mib"] = round(status.get("VmHWM", 0) / 1024, 2)
        s["threads"] = int(status.get("Threads", 0))
        s.update(fd_breakdown(pid, self.gateway.port, self.upstream_port, self.args.redis_port))
        admin = {"Authorization": f"Bearer {self.keys.admin}"}
        try:
            _, text = await http_get(self.gateway.port, "/metrics", admin, limit_s=5)
            values = metric_values(text.decode())
            s["tasks"] = int(values.get("sluice_asyncio_tasks", -1))
            s["requests_total"] = int(values["sluice_requests_total"])
            self.last_metrics = text
        except (OSError, TimeoutError, ValueError, IndexError):
            s["tasks"] = None
        try:
            _, ready = await http_get(self.gateway.port, "/readyz", limit_s=5)
            s["readyz_redis"] = json.loads(ready).get("redis")
        except (OSError, TimeoutError, ValueError, IndexError):
            s["readyz_redis"] = None
        try:
            _, stats = await http_get(self.upstream_port, "/_stats", limit_s=5)
            upstream = json.loads(stats)
            s["upstream_open"] = upstream.get("open_connections", 0) - 1  # not the one asking
            s["upstream_in_flight"] = upstream.get("in_flight", 0)
        except (OSError, TimeoutError, ValueError, IndexError):
            s["upstream_open"] = s["upstream_in_flight"] = None
        s["redis_clients"] = await asyncio.to_thread(redis_clients, self.args.redis_port)
        s["client_in_flight"] = self.client.in_flight
        s["calls_sent"] = len(self.client.calls)
        self.samples.append(s)
        return s

    async def sampler(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.args.sample_s)
            if not stop.is_set():
                s = await self.sample("load")
                print(_sample_line(s), flush=True)

    async def redis_outage(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.args.duration_s / 2)
        s = await self.sample("mid (before the Redis kill)")
        print(_sample_line(s), flush=True)
        await asyncio.to_thread(self.redis.kill)
        self.events["redis_killed"] = loop.time()
        print(f"  redis-server SIGKILLed at +{loop.time() - self.load_start:.0f} s", flush=True)
        await asyncio.sleep(self.args.redis_down_s / 2)
        s = await self.sample("Redis down")
        print(_sample_line(s), flush=True)
        await asyncio.sleep(max(0.0, self.events["redis_killed"] + self.args.redis_down_s - loop.time()))
        self.events["redis_restarting"] = loop.time()
        await asyncio.to_thread(self.redis.start)
        self.events["redis_back"] = loop.time()
        took = self.events["redis_back"] - self.events["redis_restarting"]
        print(
            f"  redis-server restarted at +{loop.time() - self.load_start:.0f} s ({took:.1f} s to answer)", flush=True
        )

    async def idle_sample(self, phase: str) -> dict[str, Any]:
        await self.client.finish()
        await asyncio.sleep(self.args.settle_s)
        s = await self.sample(phase)
        print(_sample_line(s), flush=True)
        if self.args.gc_probe:
            s["gc"] = await asyncio.to_thread(self.gateway.probe)
            s["rss_after_gc_mib"] = round(proc_status(self.gateway.pid).get("VmRSS", 0) / 1024, 2)
            s["fds_after_gc"] = fd_breakdown(
                self.gateway.pid, self.gateway.port, self.upstream_port, self.args.redis_port
            )
            if s["gc"] is not None:
                print(
                    f"  gc probe: {s['gc']['objects_before']} objects, gc.collect() freed {s['gc']['collected']}, "
                    f"{s['gc']['objects_after']} left; RSS then {s['rss_after_gc_mib']} MiB",
                    flush=True,
                )
        return s

    # --- the phases

    async def traffic(self) -> None:
        args = self.args
        loop = asyncio.get_running_loop()
        self.client = Client(self.gateway.port, self.keys.tenant, args, self.run_id, self.needles)
        print(f"warm-up: {args.warmup_s:g} s at {args.rate:g} req/s", flush=True)
        await self.client.drive(args.warmup_s, args.rate)
        self.baseline = await self.idle_sample("baseline (idle, after warm-up)")
        self.warmup_calls = len(self.client.calls)
        print(f"soak: {args.duration_s:g} s at {args.rate:g} req/s", flush=True)
        self.load_start = loop.time()
        cpu0 = cpu_seconds(self.gateway.pid)
        stop = asyncio.Event()
        sampler = asyncio.create_task(self.sampler(stop))
        outage = None if args.no_redis_kill else asyncio.create_task(self.redis_outage())
        await self.client.drive(args.duration_s, args.rate)
        self.events["load_end"] = loop.time()
        stop.set()
        await sampler
        if outage is not None:
            await outage
        self.end_load = await self.sample("end of load")
        print(_sample_line(self.end_load), flush=True)
        self.end = await self.idle_sample("end (idle)")
        self.gateway_cpu_s = (cpu_seconds(self.gateway.pid) - cpu0, loop.time() - self.load_start)

    async def read_ledger(self) -> dict[str, Any]:
        """Poll /sluice/usage until its call count stops moving; then every row through /sluice/calls."""
        admin = {"Authorization": f"Bearer {self.keys.admin}"}
        since = quote(datetime.fromtimestamp(self.wall_start - 5, UTC).isoformat(timespec="seconds"))
        sent = len(self.client.calls)
        usage_calls = -1
        stable_since = time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body = await http_get(self.gateway.port, f"/sluice/usage?since={since}&by=key", admin)
            calls = json.loads(body)["totals"]["calls"] if status == 200 else -1
            if calls != usage_calls:
                usage_calls, stable_since = calls, time.monotonic()
            if usage_calls == sent or (usage_calls >= 0 and time.monotonic() - stable_since > 10):
                break
            await asyncio.sleep(1)
        rows: list[dict[str, Any]] = []
        raw: list[bytes] = []
        cursor: str | None = None
        while True:
            path = "/sluice/calls?limit=1000" + (f"&before={quote(cursor)}" if cursor else "")
            status, body = await http_get(self.gateway.port, path, admin)
            if status != 200:
                raise RuntimeError(f"/sluice/calls answered {status}: {body[:300]!r}")
            raw.append(body)
            page = json.loads(body)
            rows.extend(page["data"])
            cursor = page.get("next")
            if not cursor:
                break
        _, usage_body = await http_get(self.gateway.port, f"/sluice/usage?since={since}&by=key", admin)
        raw.append(usage_body)
        return {"usage_calls": usage_calls, "rows": rows, "raw": b"\n".join(raw)}

    async def run(self) -> dict[str, Any]:
        args = self.args
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        if port_in_use(args.redis_port):
            raise RuntimeError(f"port {args.redis_port} is taken; choose another with --redis-port")
        loop = asyncio.get_running_loop()
        self.wall_start = time.time()
        meta = self.meta()
        self.redis = SoakRedis(self.procs, args.redis_port, self.folder / "redis", self.other_cpu)
        self.redis.start()
        upstream, self.upstream_port = start_upstream(
            self.procs, self.folder, args, self.keys.providers, self.other_cpu
        )
        port = free_port()
        config = write_config(self.folder, port, self.upstream_port, args.redis_port, args.first_byte_s)
        self.gateway = Gateway(self.procs, config, port, self.folder, self.keys, self.gateway_cpu, args.gc_probe)
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
        metrics_text = getattr(self, "last_metrics", b"")
        _, upstream_stats_body = await http_get(self.upstream_port, "/_stats")
        upstream_stats = json.loads(upstream_stats_body)

        ledger = await self.read_ledger()
        rc, stop_s = self.gateway.terminate()
        reread = None
        if len(ledger["rows"]) != len(self.client.calls):
            print("ledger rows != calls: restarting the gateway to read them again", flush=True)
            self.gateway.start()
            await asyncio.sleep(5)
            reread = await self.read_ledger()
            self.gateway.terminate()
        await asyncio.to_thread(redis_command, args.redis_port, "SAVE", timeout=30)
        self.redis.stop()
        self.procs.stop(upstream)
        meta["loadavg_end"] = os.getloadavg()
        meta["wall_s"] = round(time.time() - self.wall_start, 1)
        return self.report(meta, ledger, reread, rc, stop_s, upstream_stats, metrics_text)

    def meta(self) -> dict[str, Any]:
        args = self.args
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
            "started": datetime.fromtimestamp(self.wall_start, UTC).isoformat(timespec="seconds"),
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
            "pinning": self.pinning,
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
            "python": platform.python_version(),
            "pythonpath": os.environ.get("PYTHONPATH"),
            "redis": redis_version.stdout.split(" sha=")[0].strip(),
        }

    # --- the checks and the report

    def check(self, name: str, ok: bool, detail: str, advisory: bool = False) -> None:
        """A check's result; an advisory one is reported (partial) but does not fail the run."""
        self.checks.append({"check": name, "ok": bool(ok), "advisory": advisory, "detail": detail})

    def report(
        self,
        meta: dict[str, Any],
        ledger: dict[str, Any],
        reread: dict[str, Any] | None,
        rc: int | None,
        stop_s: float,
        upstream: dict[str, Any],
        metrics_text: bytes,
    ) -> dict[str, Any]:
        args = self.args
        calls = self.client.calls
        sent = len(calls)
        outcomes = Counter(c.outcome for c in calls)
        statuses = Counter(str(c.status) for c in calls if c.status is not None)
        lags = sorted(max(0.0, (c.began or c.planned) - c.planned) * 1000 for c in calls)
        base, end = self.baseline, self.end

        # flat
        growth = end["rss_mib"] - base["rss_mib"]
        self.check(
            "RSS flat",
            growth <= args.rss_budget_mib,
            f"{growth:+.1f} MiB idle to idle (budget {args.rss_budget_mib:g})",
        )
        if base["tasks"] is not None and end["tasks"] is not None:
            self.check(
                "asyncio tasks back to baseline",
                end["tasks"] <= base["tasks"] + args.task_slack,
                f"{base['tasks']} -> {end['tasks']} (slack {args.task_slack})",
            )
        else:
            self.check("asyncio tasks back to baseline", False, "sluice_asyncio_tasks missing from /metrics")
        non_pool = [s["fds"] - s["upstream"] - s["redis"] for s in (base, end)]
        self.check(
            "fds back to baseline (pooled connections aside)",
            non_pool[1] <= non_pool[0] + args.fd_slack,
            f"{non_pool[0]} -> {non_pool[1]} (all fds {base['fds']} -> {end['fds']}; slack {args.fd_slack})",
        )
        self.check(
            "no client or upstream socket left in CLOSE_WAIT", end["close_wait"] == 0, f"{end['close_wait']} at the end"
        )
        self.check(
            "stale Redis connections dropped after the restart",
            end["close_wait_redis"] == 0,
            f"{end['close_wait_redis']} sockets to the killed Redis still in CLOSE_WAIT at the end "
            f"({max((x['close_wait_redis'] for x in self.samples), default=0)} at most)",
            advisory=True,
        )
        self.check(
            "upstream pool: every socket is open at the provider too",
            end["upstream_open"] is not None and end["upstream"] <= end["upstream_open"],
            f"gateway {end['upstream']} sockets, provider sees {end['upstream_open']}",
        )
        self.check(
            "Redis pool: every live socket is open at Redis too",
            end["redis_clients"] is not None and end["redis"] - end["close_wait_redis"] <= end["redis_clients"],
            f"gateway {end['redis'] - end['close_wait_redis']} live sockets (and {end['close_wait_redis']} stale), "
            f"Redis sees {end['redis_clients']} clients",
        )
        self.check(
            "nothing in flight at the provider",
            end["upstream_in_flight"] == 0,
            f"{end['upstream_in_flight']} requests in flight at the end",
        )

        # the ledger
        final = reread or ledger
        rows = final["rows"]
        ids = Counter(r.get("request_id") for r in rows)
        mine = {c.request_id for c in calls}
        missing = sorted(mine - set(ids), key=_id_order)
        extra = sorted(set(ids) - mine)
        duplicated = sorted((i for i, n in ids.items() if n > 1), key=_id_order)
        row_status = Counter(str(r.get("status")) for r in rows)
        status_of = {r.get("request_id"): r.get("status") for r in rows}
        disconnected_rows = Counter(str(status_of.get(c.request_id)) for c in calls if c.outcome == "disconnected")
        answered = [c for c in calls if c.outcome in ("ok", "http_error", "truncated")]
        row_errors = Counter(f"{r.get('status')}: {r.get('error')}" for r in rows if (r.get("status") or 0) >= 400)
        mismatched = Counter(
            f"{c.status}->{status_of.get(c.request_id)}" for c in answered if c.status != status_of.get(c.request_id)
        )
        self.check(
            "ledger: one row per call sent",
            len(rows) == sent and not missing and not extra and not duplicated,
            f"{sent} calls, {len(rows)} rows; missing {len(missing)}, extra {len(extra)}, duplicated {len(duplicated)}"
            + (" (after a restart)" if reread else ""),
        )
        self.check(
            "ledger: /sluice/usage agrees",
            final["usage_calls"] == sent,
            f"usage totals.calls {final['usage_calls']} "
            f"(live read: {ledger['usage_calls']}, rows {len(ledger['rows'])})",
        )
        requests_total = end.get("requests_total")
        self.check(
            "metrics: sluice_requests_total agrees",
            requests_total == sent,
            f"sluice_requests_total {requests_total}",
        )
        access = access_log_ids(self.folder, f"soak-{self.run_id}-")
        self.check(
            "access log: one line per call",
            sum(access.values()) == sent and len(access) == sent,
            f"{sum(access.values())} lines, {len(access)} distinct ids",
        )

        # keys
        leaks = scan_for_keys(self.folder, self.needles)
        leaks.update(
            {f"ledger rows / usage ({name})": n for name, n in count_needles(final["raw"], self.needles).items()}
        )
        if reread:
            leaks.update(
                {f"ledger rows, live read ({k})": n for k, n in count_needles(ledger["raw"], self.needles).items()}
            )
        leaks.update({f"/metrics ({name})": n for name, n in count_needles(metrics_text, self.needles).items()})
        leaks.update({f"answers to the client ({name})": n for name, n in self.client.leaks.items()})
        self.check("no key in logs, ledger, Redis, spool, metrics or answers", not leaks, _describe_leaks(leaks))

        # the gateway's behaviour
        tracebacks = count_in_logs(self.folder, b"Traceback (most recent call last)")
        self.check("no traceback in the gateway's logs", tracebacks == 0, f"{tracebacks} tracebacks")
        self.check(
            "stalled upstream requests closed by the gateway",
            upstream.get("stall_late", 0) == 0,
            f"{upstream.get('stall_closed', 0)} closed (mean {upstream.get('stall_close_ms_mean')} ms, "
            f"max {upstream.get('stall_close_ms_max')} ms after the stall began), "
            f"{upstream.get('stall_late', 0)} answered late",
        )
        self.check(
            "every provider got its own key", upstream.get("wrong_key", 0) == 0, f"{upstream.get('wrong_key', 0)} wrong"
        )
        timeouts = outcomes.get("client_timeout", 0)
        self.check("no call hung", timeouts == 0, f"{timeouts} calls over {args.client_timeout_s:g} s")
        kept = [c for c in calls if not c.disconnect]
        served = sum(1 for c in kept if c.status == 200) / max(1, len(kept))
        self.check("calls served", served >= args.min_served, f"{served:.1%} of {len(kept)} kept calls got a 200")
        unanswered = Counter(c.outcome for c in calls if c.outcome == "client_error")
        unanswered.update(str(c.status) for c in calls if c.status is not None and c.status not in (200, 429, 502, 504))
        self.check(
            "every call got an answer of the gateway's contract",
            not unanswered,
            "none reset without an answer, no 500 or 503"
            if not unanswered
            else ", ".join(f"{k}: {n}" for k, n in unanswered.items()),
        )
        outage: dict[str, Any] = {}
        if "redis_killed" in self.events:
            t0, t1 = self.events["redis_killed"], self.events["redis_back"]
            during = [c for c in kept if t0 <= c.planned <= t1]
            outside = [c for c in kept if c.planned < t0 or c.planned > t1 + 5]
            share = sum(1 for c in during if c.status == 200) / max(1, len(during))
            share_out = sum(1 for c in outside if c.status == 200) / max(1, len(outside))
            # Redis down should not cost calls of its own. Compared on the calls without X-Sluice-Cache:
            # with the cache down the would-be hits go upstream and meet its faults (fail open, as meant),
            # which costs the cache-on calls, and a little the others through the extra upstream load.
            plain_in = [c for c in during if not c.cache]
            plain_out = [c for c in outside if not c.cache]
            plain_share = sum(1 for c in plain_in if c.status == 200) / max(1, len(plain_in))
            plain_share_out = sum(1 for c in plain_out if c.status == 200) / max(1, len(plain_out))
            margin = max(0.02, 3 * math.sqrt(plain_share_out * (1 - plain_share_out) / max(1, len(plain_in))))
            outage = {
                "killed_at_s": round(t0 - self.load_start, 1),
                "down_s": round(self.events["redis_restarting"] - t0, 1),
                "back_after_s": round(t1 - t0, 1),
                "kept_calls_during": len(during),
                "served_during": round(share, 4),
                "served_outside": round(share_out, 4),
                "served_during_without_cache": round(plain_share, 4),
                "served_outside_without_cache": round(plain_share_out, 4),
                "statuses_during": dict(Counter(str(c.status) for c in during)),
                "latency_ms_during": latency_by_kind(during),
                "latency_ms_outside": latency_by_kind(outside),
                "readyz_during": [s["readyz_redis"] for s in self.samples if s["phase"] == "Redis down"],
                "spooled": count_in_logs(self.folder, b"records go to the spool") > 0,  # the gateway's warning
            }
            self.check(
                "/readyz reported Redis down during the outage",
                "down" in outage["readyz_during"],
                f"/readyz said redis: {', '.join(map(str, outage['readyz_during'])) or '(not sampled)'}",
                advisory=True,
            )
            self.check(
                "calls served while Redis was down (no cache asked)",
                plain_share >= plain_share_out - margin,
                f"{plain_share:.1%} of {len(plain_in)} kept calls without X-Sluice-Cache got a 200, "
                f"{plain_share_out:.1%} outside the outage ({margin:.1%} less allowed: 3 s.d.)",
                advisory=True,
            )
        self.check("SIGTERM: exit code 0", rc == 0, f"exit code {rc} after {stop_s:.1f} s")

        cpu_s, wall_s = self.gateway_cpu_s
        summary = {
            "ok": all(c["ok"] or c["advisory"] for c in self.checks),
            "meta": meta,
            "client": {
                "sent": sent,
                "warmup_calls": self.warmup_calls,
                "streams": sum(c.stream for c in calls),
                "disconnecting": sum(c.disconnect for c in calls),
                "cache_on": sum(c.cache for c in calls),
                "outcomes": dict(outcomes),
                "statuses": dict(statuses),
                "send_lag_ms": {
                    "p50": _pct(lags, 50),
                    "p99": _pct(lags, 99),
                    "max": round(lags[-1], 1) if lags else None,
                },
                "latency_ms_ok": latency_by_kind(kept),
                "client_errors": dict(Counter(c.detail for c in calls if c.outcome == "client_error")),
            },
            "gateway": {
                "cpu_share_during_soak": round(cpu_s / wall_s, 3) if wall_s else None,
                "shutdown_s": round(stop_s, 2),
                "exit_code": rc,
            },
            "upstream": upstream,
            "ledger": {
                "rows": len(rows),
                "usage_calls": final["usage_calls"],
                "live_rows": len(ledger["rows"]),
                "reread_after_restart": reread is not None,
                "by_status": dict(row_status),
                "missing": missing[:20],
                "extra": extra[:20],
                "duplicated": duplicated[:20],
                "access_log_lines": sum(access.values()),
                "rows_of_disconnected_calls": dict(disconnected_rows),
                "attempts": dict(Counter(str(r.get("attempts")) for r in rows)),
                "errors": dict(row_errors.most_common(12)),
                "status_client_saw_vs_row": dict(mismatched),
            },
            "redis_outage": outage,
            "flat": {
                "baseline": base,
                "end": end,
                "rss_growth_mib": round(growth, 2),
                "rss_slope_mib_per_10min": rss_slope([s for s in self.samples if s["phase"] == "load"]),
                "gc_probe": gc_growth(base.get("gc"), end.get("gc")),
            },
            "samples": self.samples,
            "checks": self.checks,
            "leaks": leaks,
        }
        return summary


def _id_order(request_id: str | None) -> int:
    with contextlib.suppress(ValueError, AttributeError, IndexError):
        return int(str(request_id).rsplit("-", 1)[1])
    return -1


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))], 1)


def latency_by_kind(calls: Iterable[Call]) -> dict[str, Any]:
    """Latency of the complete calls without X-Sluice-Cache (no hits), streams and the others apart."""
    complete = [c for c in calls if c.outcome == "ok" and not c.cache]
    return {
        "plain": latency_summary(c for c in complete if not c.stream),
        "stream": latency_summary(c for c in complete if c.stream),
    }


def _latencies(by_kind: dict[str, Any]) -> str:
    plain, stream = by_kind["plain"], by_kind["stream"]
    return f"{plain['p50']}/{plain['p99']} ms (streams {stream['p50']}/{stream['p99']} ms)"


def latency_summary(calls: Iterable[Call]) -> dict[str, Any]:
    times = sorted((c.done - c.sent) * 1000 for c in calls if c.done is not None and c.sent is not None)
    return {"n": len(times), "p50": _pct(times, 50), "p99": _pct(times, 99)}


def rss_slope(samples: list[dict[str, Any]]) -> float | None:
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


def count_needles(data: bytes, needles: dict[str, bytes]) -> dict[str, int]:
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


def _sample_line(s: dict[str, Any]) -> str:
    t = f"+{s['t_s']:.0f}s" if s.get("t_s") is not None else "-"
    return (
        f"  {s['phase']:<32} {t:>6}  rss {s['rss_mib']:.1f} MiB  fds {s['fds']} "
        f"(up {s['upstream']}, redis {s['redis']},"
        f" clients {s['client']}, close_wait {s['close_wait']}+{s['close_wait_redis']})"
        f"  tasks {s['tasks']}  redis {s['readyz_redis']}"
        f"  provider open {s['upstream_open']} in flight {s['upstream_in_flight']}  calls {s['calls_sent']}"
    )


def markdown(summary: dict[str, Any]) -> str:
    meta, client, flat, ledger = summary["meta"], summary["client"], summary["flat"], summary["ledger"]
    minutes = meta["duration_s"] / 60
    lines = [
        f"Soak: {minutes:g} min at {meta['rate']:g} req/s after a {meta['warmup_s']:g} s warm-up, "
        f"{meta['fault_rate']:.0%} upstream faults, {meta['disconnect_rate']:.0%} client disconnects, "
        + (f"Redis killed for {meta['redis_down_s']:g} s midway" if meta["redis_down_s"] else "Redis not killed")
        + f"; commit {meta['commit']}, {meta['started']}, "
        f"{meta['pinning']}, load average {meta['loadavg_start'][0]:.2f} at the start and "
        f"{meta['loadavg_end'][0]:.2f} at the end.",
        "",
        "| sample | RSS MiB | fds (upstream / Redis pooled) | asyncio tasks | Redis (/readyz) |",
        "|---|---|---|---|---|",
    ]
    chosen = [flat["baseline"]]
    load = summary["samples"]
    load_only = [s for s in load if s["phase"] == "load"]
    if load_only:
        chosen.append(load_only[0])
    chosen += [s for s in load if s["phase"].startswith("mid") or s["phase"] == "Redis down"]
    outage = summary.get("redis_outage") or {}
    chosen += [s for s in load if s["phase"] == "end of load"] + [flat["end"]]
    for s in chosen:
        label = (
            s["phase"]
            if s["phase"] in ("baseline (idle, after warm-up)", "end (idle)")
            else f"{s['phase']}, +{s['t_s']:.0f} s"
        )
        lines.append(
            f"| {label} | {s['rss_mib']:.1f} | {s['fds']} ({s['upstream']} / {s['redis']}) | {s['tasks']} "
            f"| {s['readyz_redis']} |"
        )
    slope = flat["rss_slope_mib_per_10min"]
    lines += [
        "",
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
    ]
    lines.append(
        f"Attempts per call: {_inline(ledger['attempts'])}. Failed rows by error: "
        + "; ".join(f"{text} ({n})" for text, n in list(ledger["errors"].items())[:6])
        + "."
    )
    up = summary["upstream"]
    faults = {k.removeprefix("fault_"): v for k, v in up.items() if k.startswith("fault_")}
    lines.append(
        f"Fake provider: {up.get('requests', 0)} requests ({_inline(up.get('by_provider', {}))}), "
        f"faults {_inline(faults)}; stalls closed by the gateway {up.get('stall_closed', 0)}, "
        f"late {up.get('stall_late', 0)}; "
        f"answers cut short by the gateway (its client left) {up.get('aborted', 0)}."
    )
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
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c['check']} | {_verdict(c)} | {c['detail']} |" for c in summary["checks"]]
    lines += ["", f"**{'PASS' if summary['ok'] else 'FAIL'}**"]
    return "\n".join(lines)


def _verdict(check: dict[str, Any]) -> str:
    if check["ok"]:
        return "pass"
    return "partial (advisory)" if check["advisory"] else "**FAIL**"


def _inline(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))) or "-"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    folder = Path(tempfile.mkdtemp(prefix="sluice-soak-"))
    soak = Soak(args, folder)
    try:
        summary = asyncio.run(soak.run())
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
