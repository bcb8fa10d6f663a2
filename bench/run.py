"""The Sluice benchmark: the gateway next to calling the upstream directly, on loopback, in one run.

    .venv/bin/python bench/run.py            # full run, ~5 min: 3 repeats, medians with [min, max]
    .venv/bin/python bench/run.py --quick    # smoke run, ~30 s: 1 repeat, small counts

It starts bench/fake_upstream.py and `sluice serve` as subprocesses (with two or more
cores: the upstream, this client and wrk on the first CPU, the gateway alone on the
second, via `taskset`), measures, prints a Markdown table with the targets, and writes
the figures as JSON to bench/results/latest.json. In each repeat it also measures
bench/reference_proxy.py (PERF-NOTES.md's minimal aiohttp proxy) the same way, so the
figures can be read against the reference box even when this one is slower or busier.
The other parts live in modules of their own, called from here: the full stack beside
these pass-through figures (bench/stack.py, per repeat), the cache hits (bench/cache.py,
per repeat) and racing (bench/race.py, once). bench/README.md says what each figure
means. Every subprocess is stopped on the way out (finally, atexit, and a parent-death
signal), every loop is bounded in count and time, and nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import cache  # bench/cache.py: the cache-hit figures
import race  # bench/race.py: the racing figures
import stack  # bench/stack.py: the full-stack figures

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LUA = BENCH / "post.lua"
HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
CHUNKS = 50  # the fake upstream's stream: 49 events then `data: [DONE]`
MESSAGES = '[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello, how are you today?"}]'
BODY = ('{"model": "bench/m", "messages": ' + MESSAGES + "}").encode()
STREAM_BODY = ('{"model": "bench/m", "messages": ' + MESSAGES + ', "stream": true}').encode()
CLIENT_KEY = "sk-client-bench"  # what the client sends as its bearer key (post.lua's default too)
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
MAX_RESPONSE = 16 * MIB

# key, label, comparison, target (None: reported, not judged), unit
Row = tuple[str, str, str, float | None, str]
TARGETS: list[Row] = [
    ("added_p50_ms", "added latency p50, c=1", "<=", 0.25, "ms"),
    ("added_p99_ms", "added latency p99, c=1", "<=", 0.5, "ms"),
    ("stream_first_added_ms", "stream: added time to first chunk", "<=", 0.3, "ms"),
    ("stream_per_chunk_added_ms", "stream: added time per chunk (back to back)", "<=", 0.01, "ms"),
    ("rps_c32", "req/s at c=32 (gateway on one core)", ">=", 8000, "req/s"),
    ("p99_c32_ms", "p99 at c=32", "<=", 10, "ms"),
    ("cpu_ms_per_req", "gateway CPU per request (c=32)", "<=", 0.125, "ms"),
    ("rss_idle_mib", "gateway RSS idle, after start-up", "<=", 60, "MiB"),
    ("startup_s", "start-up: spawn to first 200 on /healthz", "<=", 0.3, "s"),
    ("rss_after_load_mib", "gateway RSS after load", "<=", None, "MiB"),
    ("cpu_ms_per_req_c1", "gateway CPU per request (c=1)", "<=", None, "ms"),
    ("cpu_ms_per_paced_chunk", "gateway CPU per chunk (paced 1 ms apart)", "<=", None, "ms"),
]
# The direct (no gateway) and via-gateway figures shown beside a result, where there are some.
BESIDE = {
    "added_p50_ms": ("direct_p50_ms", "gateway_p50_ms"),
    "added_p99_ms": ("direct_p99_ms", "gateway_p99_ms"),
    "stream_first_added_ms": ("direct_first_ms", "gateway_first_ms"),
    "stream_per_chunk_added_ms": ("direct_span_ms", "gateway_span_ms"),
    "rps_c32": ("direct_rps_c32", "rps_c32"),
    "p99_c32_ms": ("direct_p99_c32_ms", "p99_c32_ms"),
    "ref_added_p50_ms": ("direct_p50_ms", "ref_p50_ms"),
    "ref_added_p99_ms": ("direct_p99_ms", "ref_p99_ms"),
    "ref_stream_first_added_ms": ("direct_first_ms", "ref_first_ms"),
    "ref_stream_per_chunk_added_ms": ("direct_span_ms", "ref_span_ms"),
    "ref_rps_c32": ("direct_rps_c32", "ref_rps_c32"),
    "ref_p99_c32_ms": ("direct_p99_c32_ms", "ref_p99_c32_ms"),
}
# PERF-NOTES.md's figures for the reference proxy (raw ASGI + aiohttp + gc.freeze) on the reference box.
REFERENCE = {
    "added_p50_ms": 0.162,
    "added_p99_ms": 0.192,
    "rps_c32": 13432,
    "cpu_ms_per_req": 0.074,
    "stream_first_added_ms": 0.222,
    "startup_s": 0.18,
    "p99_c32_ms": 3.1,
}
CALIBRATION: list[Row] = [
    ("ref_added_p50_ms", "reference proxy: added p50, c=1", "~", REFERENCE["added_p50_ms"], "ms"),
    ("ref_added_p99_ms", "reference proxy: added p99, c=1", "~", REFERENCE["added_p99_ms"], "ms"),
    ("ref_stream_first_added_ms", "reference proxy: added first chunk", "~", 0.222, "ms"),
    ("ref_stream_per_chunk_added_ms", "reference proxy: added time per chunk", "~", None, "ms"),
    ("ref_rps_c32", "reference proxy: req/s at c=32", "~", REFERENCE["rps_c32"], "req/s"),
    ("ref_p99_c32_ms", "reference proxy: p99 at c=32", "~", REFERENCE["p99_c32_ms"], "ms"),
    ("ref_cpu_ms_per_req", "reference proxy: CPU per request (c=32)", "~", REFERENCE["cpu_ms_per_req"], "ms"),
    ("ref_startup_s", "reference proxy: start-up to first 200", "~", REFERENCE["startup_s"], "s"),
    ("ref_cpu_ms_per_paced_chunk", "reference proxy: CPU per chunk (paced)", "~", None, "ms"),
    ("gw_over_ref_rps", "gateway ÷ reference proxy: req/s", ">=", round(8000 / REFERENCE["rps_c32"], 3), "x"),
    ("gw_over_ref_cpu", "gateway ÷ reference proxy: CPU per request", "<=", round(0.125 / 0.074, 3), "x"),
    ("gw_minus_ref_cpu_ms", "gateway minus reference proxy: CPU per request", "<=", None, "ms"),
    ("adj_added_p50_ms", "adjusted to the reference box: added p50, c=1", "<=", 0.25, "ms"),
    ("adj_added_p99_ms", "adjusted to the reference box: added p99, c=1", "<=", 0.5, "ms"),
    ("adj_stream_first_added_ms", "adjusted to the reference box: added first chunk", "<=", 0.3, "ms"),
    ("adj_startup_s", "adjusted to the reference box: start-up", "<=", 0.3, "s"),
    ("adj_rps_c32", "adjusted to the reference box: req/s at c=32", ">=", 8000, "req/s"),
    ("adj_p99_c32_ms", "adjusted to the reference box: p99 at c=32", "<=", 10, "ms"),
    ("adj_cpu_ms_per_req", "adjusted to the reference box: CPU per request", "<=", 0.125, "ms"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the Sluice gateway against calling a fake upstream directly (loopback only).",
        epilog="See bench/README.md for what each figure means.",
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run: 1 repeat, small counts, 2 s wrk runs")
    parser.add_argument("--repeats", type=int, help="gateway starts, each measured in full (default 3; quick 1)")
    parser.add_argument("--requests", type=int, help="sequential requests per side at c=1 (default 3000; quick 300)")
    parser.add_argument("--streams", type=int, help="sequential streams per side (default 300; quick 40)")
    parser.add_argument("--paced", type=int, help="paced streams for the CPU-per-chunk figure (default 30; quick 10)")
    parser.add_argument("--duration", type=float, help="seconds per measured wrk run (default 10; quick 2)")
    parser.add_argument("--warmup", type=float, help="seconds of wrk warm-up before each run (default 2; quick 0.5)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1; they share the first CPU)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--no-calibrate", action="store_true", help="skip the reference proxy (saves ~14 s a repeat)")
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "latest.json", help="JSON results file")
    parser.add_argument("--fail-on-miss", action="store_true", help="exit 1 when a target is missed")
    cache.add_arguments(parser)
    stack.add_arguments(parser)
    race.add_arguments(parser)
    args = parser.parse_args(argv)
    quick = {"repeats": 1, "requests": 300, "streams": 40, "paced": 10, "duration": 2.0, "warmup": 0.5, **race.QUICK}
    full = {"repeats": 3, "requests": 3000, "streams": 300, "paced": 30, "duration": 10.0, "warmup": 2.0, **race.FULL}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.repeats < 1 or args.requests < 10 or args.streams < 5 or args.duration <= 0 or args.connections < 1:
        parser.error("--repeats >= 1, --requests >= 10, --streams >= 5, --duration > 0 and --connections >= 1")
    if args.cache_only and args.race_only:
        parser.error("--cache-only and --race-only: choose one")
    race.check_arguments(parser, args)
    return args


# ---------------------------------------------------------------- processes


class Processes:
    """Every subprocess this run started; `stop_all` ends them (by their own pids only)."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str], cpu: int | None, pinning: str, **popen: Any) -> subprocess.Popen[bytes]:
        prefix = ["taskset", "-c", str(cpu)] if cpu is not None and pinning == "taskset" else []
        proc = subprocess.Popen(prefix + argv, preexec_fn=_die_with_parent, **popen)
        self.running.append(proc)
        if cpu is not None and pinning == "sched_setaffinity":
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, {cpu})
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(2)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.running):
            with contextlib.suppress(Exception):
                self.stop(proc, grace=3.0)


def _die_with_parent() -> None:
    """In the child: get SIGKILL if this script dies without cleaning up (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def choose_pinning(no_pin: bool) -> tuple[str, int | None, int | None]:
    """(how, cpu for upstream + client + wrk, cpu for the gateway)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if no_pin or len(cpus) < 2:
        return ("none (fewer than 2 CPUs)" if len(cpus) < 2 else "none (--no-pin)"), None, None
    if shutil.which("taskset"):
        return "taskset", cpus[0], cpus[1]
    print("note: taskset not found; pinning with os.sched_setaffinity instead", file=sys.stderr)
    return "sched_setaffinity", cpus[0], cpus[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_upstream(
    procs: Processes, pinning: str, cpu: int | None, log: Path, options: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], int]:
    """Spawn bench/fake_upstream.py (with `options`, e.g. --delay-ms); return it and its port."""
    argv = [sys.executable, str(BENCH / "fake_upstream.py"), "--host", HOST, "--port", "0", *options]
    with log.open("wb") as err:
        proc = procs.spawn(argv, cpu, pinning, stdout=subprocess.PIPE, stderr=err)
    assert proc.stdout is not None
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 15
        while not line.endswith(b"\n") and time.monotonic() < deadline and proc.poll() is None:
            if sel.select(0.1):
                line += os.read(proc.stdout.fileno(), 256)
    match = re.match(rb"listening [\d.]+:(\d+)", line)
    if match is None:
        raise RuntimeError(f"the fake upstream did not start: {line!r} {log.read_text(errors='replace')[-2000:]}")
    return proc, int(match.group(1))


def gateway_command() -> list[str]:
    script = Path(sys.executable).parent / "sluice"
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy"]


def write_config(folder: Path, upstream_port: int) -> Path:
    path = folder / "bench.toml"
    path.write_text(
        f'[providers.bench]\nbase_url = "http://{HOST}:{upstream_port}/v1"\napi_key = "sk-bench"\nmodels = ["m"]\n'
    )
    return path


def start_server(
    procs: Processes,
    argv: list[str],
    cpu: int | None,
    pinning: str,
    port: int,
    log: Path,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], float]:
    """Spawn a server (`env` added to this process's environment); return it and the seconds to its first 200."""
    environ = {**os.environ, **env} if env else None
    with log.open("ab") as out:
        started = time.perf_counter()
        proc = procs.spawn(argv, cpu, pinning, stdout=out, stderr=subprocess.STDOUT, cwd=str(log.parent), env=environ)
    deadline = started + 20
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited ({proc.returncode}): {log.read_text(errors='replace')[-3000:]}")
        if healthz_ok(port):
            return proc, time.perf_counter() - started
        time.sleep(0.001)
    procs.stop(proc)
    raise RuntimeError(f"{argv} did not answer /healthz within 20 s: {log.read_text(errors='replace')[-3000:]}")


def gateway_argv(config: Path, port: int) -> list[str]:
    return [*gateway_command(), "serve", "--config", str(config), "--host", HOST, "--port", str(port)]


def reference_argv(upstream_port: int, port: int) -> list[str]:
    script = str(BENCH / "reference_proxy.py")
    return [sys.executable, script, "--upstream", f"http://{HOST}:{upstream_port}", "--host", HOST, "--port", str(port)]


def healthz_ok(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                more = sock.recv(65536)
                if not more:
                    break
                data += more
            return data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))
    except OSError:
        return False


# ---------------------------------------------------------------- /proc readings


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process, in clock ticks (/proc/PID/stat fields 14 and 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` in ns (/proc/PID/task/*/schedstat), finer than the ticks of stat."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / MIB
    return math.nan


# ---------------------------------------------------------------- the c=1 client


def http_request(port: int, body: bytes, query: str = "", key: str = CLIENT_KEY) -> bytes:
    head = (
        f"POST {PATH}{query} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json\r\nAuthorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Client:
    """One keep-alive connection on a raw socket; `exchange` times one request."""

    def __init__(self, port: int, request: bytes) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = request

    def close(self) -> None:
        self.sock.close()

    def exchange(self) -> tuple[float, float, float, bytes]:
        """(sent, first body byte, response complete) as perf_counter times, and the whole response."""
        sock, buf = self.sock, bytearray()
        head_end, length, first = -1, -1, 0.0
        sent = time.perf_counter()
        sock.sendall(self.request)
        while True:  # bounded: each recv times out after 10 s, and a response over 16 MiB or 30 s is an error
            data = sock.recv(262144)
            now = time.perf_counter()
            if not data:
                raise ConnectionError("the server closed the connection mid-response")
            buf += data
            if len(buf) > MAX_RESPONSE or now - sent > 30:
                raise RuntimeError(f"response over {MAX_RESPONSE} bytes or 30 s: {bytes(buf[:300])!r}")
            if head_end < 0:
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    continue
                head_end += 4
                found = re.search(rb"\r\ncontent-length:\s*(\d+)", bytes(buf[:head_end]), re.IGNORECASE)
                length = int(found.group(1)) if found else -1
            if not first and len(buf) > head_end:
                first = now
            if length >= 0:
                if len(buf) - head_end >= length:
                    return sent, first, now, bytes(buf)
            elif buf.endswith(b"\r\n0\r\n\r\n") or (len(buf) - head_end == 5 and buf.endswith(b"0\r\n\r\n")):
                return sent, first, now, bytes(buf)


def check_response(response: bytes, chunks: int | None) -> None:
    if not response.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected response: {response[:300]!r}")
    if chunks is not None and response.count(b"data: ") != chunks:
        raise RuntimeError(f"expected {chunks} SSE events, got {response.count(b'data: ')}")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in 0..100."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


Timing = tuple[float, float, float]  # (sent, first body byte, done), perf_counter


def interleaved(clients: Sequence[Client], count: int, budget_s: float, chunks: int | None) -> list[list[Timing]]:
    """`count` exchanges on each client, one each in turn, bounded by `budget_s`; each (sent, first, done)."""
    warm = max(20, count // 20)
    for client in tuple(clients) * warm:
        check_response(client.exchange()[3], chunks)
    sides: list[list[Timing]] = [[] for _ in clients]
    deadline = time.perf_counter() + budget_s
    with no_gc():
        for _ in range(count):
            for side, client in zip(sides, clients, strict=True):
                sent, first, done, response = client.exchange()
                side.append((sent, first, done))
            if time.perf_counter() > deadline:
                break
    check_response(response, chunks)
    return sides


def measure_c1(upstream_port: int, proxy_port: int, proxy_pid: int, count: int) -> dict[str, float]:
    """Added latency at c=1 (p50, p99 of `count` sequential requests each side) and the proxy's CPU per request."""
    direct = Client(upstream_port, http_request(upstream_port, BODY))
    proxy = Client(proxy_port, http_request(proxy_port, BODY))
    try:
        before = cpu_ns(proxy_pid)
        d, p = interleaved((direct, proxy), count, 60.0, None)
        cpu_ms = (cpu_ns(proxy_pid) - before) / 1e6
    finally:
        direct.close()
        proxy.close()
    dl = [(done - sent) * 1000 for sent, _, done in d]
    pl = [(done - sent) * 1000 for sent, _, done in p]
    out = {
        "direct_p50_ms": percentile(dl, 50),
        "direct_p99_ms": percentile(dl, 99),
        "proxy_p50_ms": percentile(pl, 50),
        "proxy_p99_ms": percentile(pl, 99),
        "requests": len(pl),
        "cpu_ms_per_req": cpu_ms / (len(pl) + max(20, count // 20)),  # the warm-up requests are in the CPU time
    }
    out["added_p50_ms"] = out["proxy_p50_ms"] - out["direct_p50_ms"]
    out["added_p99_ms"] = out["proxy_p99_ms"] - out["direct_p99_ms"]
    return out


def stream_pair(upstream_port: int, proxy_port: int, count: int, query: str) -> list[list[Any]]:
    direct = Client(upstream_port, http_request(upstream_port, STREAM_BODY, query))
    proxy = Client(proxy_port, http_request(proxy_port, STREAM_BODY, query))
    try:
        return interleaved((direct, proxy), count, 60.0, CHUNKS)
    finally:
        direct.close()
        proxy.close()


def measure_stream(upstream_port: int, proxy_port: int, count: int) -> dict[str, float]:
    """Time to the first chunk (the upstream holds the other 49 back 1 ms), then back-to-back chunk cost."""
    out: dict[str, float] = {}
    held = stream_pair(upstream_port, proxy_port, count, "?hold_ms=1")
    burst = stream_pair(upstream_port, proxy_port, count, "")
    out["streams"] = len(burst[1])
    for name, h, b in zip(("direct", "proxy"), held, burst, strict=True):
        first = [(first - sent) * 1000 for sent, first, _ in h]
        out[f"{name}_first_ms"] = statistics.median(first)
        out[f"{name}_first_p99_ms"] = percentile(first, 99)
        out[f"{name}_span_ms"] = statistics.median((done - first) * 1000 for _, first, done in b)
        out[f"{name}_burst_first_ms"] = statistics.median((first - sent) * 1000 for sent, first, _ in b)
    out["stream_first_added_ms"] = out["proxy_first_ms"] - out["direct_first_ms"]
    out["stream_per_chunk_added_ms"] = (out["proxy_span_ms"] - out["direct_span_ms"]) / (CHUNKS - 1)
    return out


def measure_paced(gateway_port: int, gateway_pid: int, count: int) -> dict[str, float]:
    """Gateway CPU per chunk when chunks arrive one at a time (1 ms apart), as real LLM streams do."""
    if count <= 0:
        return {}
    per_stream: dict[int, float] = {}
    for chunks in (CHUNKS, 2):
        client = Client(gateway_port, http_request(gateway_port, STREAM_BODY, f"?chunks={chunks}&gap_ms=1"))
        try:
            check_response(client.exchange()[3], chunks)  # warm
            deadline = time.perf_counter() + 30
            before, done = cpu_ns(gateway_pid), 0
            for _ in range(count):
                response = client.exchange()[3]
                done += 1
                if time.perf_counter() > deadline:
                    break
            per_stream[chunks] = (cpu_ns(gateway_pid) - before) / 1e6 / done
            check_response(response, chunks)
        finally:
            client.close()
    return {
        "cpu_ms_per_paced_stream": per_stream[CHUNKS],
        "cpu_ms_per_paced_chunk": (per_stream[CHUNKS] - per_stream[2]) / (CHUNKS - 2),
    }


# ---------------------------------------------------------------- wrk


def run_wrk(port: int, duration: float, args: argparse.Namespace, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One wrk run with post.lua; `env` adds variables for the script (BENCH_CACHE, BENCH_EXPECT_CACHE)."""
    argv = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        f"http://{HOST}:{port}{PATH}",
    ]
    result = subprocess.run(
        argv,
        capture_output=True,
        timeout=duration + 60,
        env={**os.environ, "BENCH_BODY": BODY.decode(), **(env or {})},
        check=False,
        preexec_fn=_die_with_parent,
    )
    out = result.stdout.decode(errors="replace")
    line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({result.returncode}): {out[-2000:]} {result.stderr.decode()[-2000:]}")
    figures: dict[str, Any] = json.loads(line[len("BENCH_JSON ") :])
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    figures["error_count"] = sum(figures["errors"].values())
    return figures


def wrk_direct(upstream_port: int, args: argparse.Namespace) -> dict[str, Any]:
    if args.warmup > 0:
        run_wrk(upstream_port, args.warmup, args)
    direct = run_wrk(upstream_port, args.duration, args)
    return {
        "direct_rps_c32": direct["rps"],
        "direct_p99_c32_ms": direct["latency_us"]["p99"] / 1000,
        "wrk_errors_direct": direct["error_count"],
        "wrk_direct": direct,
    }


def wrk_proxy(port: int, pid: int, args: argparse.Namespace, env: dict[str, str] | None = None) -> dict[str, Any]:
    """req/s and latency at c=32, and the proxy's CPU per request from /proc/PID/stat around the measured run."""
    if args.warmup > 0:
        run_wrk(port, args.warmup, args, env)
    ticks, ns = cpu_ticks(pid), cpu_ns(pid)
    via = run_wrk(port, args.duration, args, env)
    ticks, ns = cpu_ticks(pid) - ticks, cpu_ns(pid) - ns
    requests = max(1, via["requests"])
    return {
        "rps_c32": via["rps"],
        "p50_c32_ms": via["latency_us"]["p50"] / 1000,
        "p99_c32_ms": via["latency_us"]["p99"] / 1000,
        "cpu_ms_per_req": ticks * 1000 / CLK_TCK / requests,
        "cpu_ms_per_req_schedstat": ns / 1e6 / requests,
        "wrk_errors": via["error_count"],
        "wrk": via,
    }


# ---------------------------------------------------------------- one repeat


def one_repeat(
    procs: Processes,
    upstream_port: int,
    config: Path,
    pins: tuple[str, int | None, int | None],
    args: argparse.Namespace,
) -> dict[str, Any]:
    pinning, _, cpu = pins
    port = free_port()
    proc, startup = start_server(procs, gateway_argv(config, port), cpu, pinning, port, config.parent / "gateway.log")
    figures: dict[str, Any] = {"startup_s": startup}
    try:
        time.sleep(0.2)  # let start-up settle before reading the idle RSS
        figures["rss_idle_mib"] = rss_mib(proc.pid)
        c1 = step("gateway c=1", lambda: measure_c1(upstream_port, port, proc.pid, args.requests))
        figures.update({k.replace("proxy_", "gateway_"): v for k, v in c1.items() if k != "cpu_ms_per_req"})
        figures["cpu_ms_per_req_c1"] = c1["cpu_ms_per_req"]
        streams = step("gateway streams", lambda: measure_stream(upstream_port, port, args.streams))
        figures.update({k.replace("proxy_", "gateway_"): v for k, v in streams.items()})
        figures.update(step("gateway paced streams", lambda: measure_paced(port, proc.pid, args.paced)))
        if shutil.which("wrk"):
            figures.update(step("upstream direct, wrk", lambda: wrk_direct(upstream_port, args)))
            figures.update(step("gateway, wrk", lambda: wrk_proxy(port, proc.pid, args)))
        figures["rss_after_load_mib"] = rss_mib(proc.pid)
        figures["rss_peak_mib"] = rss_mib(proc.pid, "VmHWM")
    finally:
        procs.stop(proc)
    if not args.no_calibrate:
        figures.update(reference_repeat(procs, upstream_port, pins, args, config.parent / "reference.log"))
    return figures


def reference_repeat(
    procs: Processes, upstream_port: int, pins: tuple[str, int | None, int | None], args: argparse.Namespace, log: Path
) -> dict[str, Any]:
    """The reference proxy, measured like the gateway (c=1 and wrk), on the gateway's CPU."""
    pinning, _, cpu = pins
    port = free_port()
    proc, startup = start_server(procs, reference_argv(upstream_port, port), cpu, pinning, port, log)
    try:
        c1 = step("reference proxy c=1", lambda: measure_c1(upstream_port, port, proc.pid, args.requests))
        streams = step("reference proxy streams", lambda: measure_stream(upstream_port, port, args.streams))
        out = {f"ref_{k}": v for k, v in (c1 | streams).items() if not k.startswith("direct")}
        out = {k.replace("ref_proxy_", "ref_"): v for k, v in out.items()}
        out["ref_startup_s"] = startup
        paced = step("reference proxy paced streams", lambda: measure_paced(port, proc.pid, args.paced))
        out.update({f"ref_{k}": v for k, v in paced.items()})
        if shutil.which("wrk"):
            load = step("reference proxy, wrk", lambda: wrk_proxy(port, proc.pid, args))
            out.update({f"ref_{k}": v for k, v in load.items()})
        return out
    finally:
        procs.stop(proc)


T = TypeVar("T")


def step(name: str, work: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = work()
    print(f"  {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return result


# ---------------------------------------------------------------- summary and table


def derived(r: dict[str, Any]) -> dict[str, float]:
    """Per repeat: the gateway against the reference proxy measured in the same repeat."""
    out: dict[str, float] = {}
    if r.get("ref_rps_c32") and "rps_c32" in r:
        out["gw_over_ref_rps"] = r["rps_c32"] / r["ref_rps_c32"]
        out["adj_rps_c32"] = r["rps_c32"] * REFERENCE["rps_c32"] / r["ref_rps_c32"]
    if r.get("ref_cpu_ms_per_req") and "cpu_ms_per_req" in r:
        out["gw_over_ref_cpu"] = r["cpu_ms_per_req"] / r["ref_cpu_ms_per_req"]
        out["gw_minus_ref_cpu_ms"] = r["cpu_ms_per_req"] - r["ref_cpu_ms_per_req"]
        out["adj_cpu_ms_per_req"] = r["cpu_ms_per_req"] * REFERENCE["cpu_ms_per_req"] / r["ref_cpu_ms_per_req"]
    for key in ("added_p50_ms", "added_p99_ms", "stream_first_added_ms", "startup_s", "p99_c32_ms"):
        if r.get(f"ref_{key}", 0) > 0 and key in r:
            out[f"adj_{key}"] = r[key] * REFERENCE[key] / r[f"ref_{key}"]
    return out


def summarise(repeats: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for r in repeats:
        r.update(derived(r))
    keys = {k for r in repeats for k, v in r.items() if isinstance(v, int | float)}
    summary: dict[str, dict[str, Any]] = {}
    for key in sorted(keys):
        values = [r[key] for r in repeats if isinstance(r.get(key), int | float)]
        summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}
    for key, _, comparison, target, _ in TARGETS + CALIBRATION:
        if key in summary and target is not None and comparison in ("<=", ">="):
            median = summary[key]["median"]
            met = median <= target if comparison == "<=" else median >= target
            summary[key].update(target=target, comparison=comparison, met=met)
        elif key in summary:
            summary[key].update(target=target, comparison=comparison, met=None)
    return summary


def fmt(value: float, unit: str) -> str:
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit == "MiB":
        return f"{value:.1f}"
    if unit in ("s", "x"):
        return f"{value:.3f}" if unit == "s" else f"{value:.2f}"
    return f"{value:.3f}" if abs(value) >= 0.01 else f"{value:.4f}"


def table(summary: dict[str, dict[str, Any]], rows: list[Row], repeats: int, target_title: str) -> str:
    spread = "[min, max]" if repeats > 1 else "one run"
    lines = [
        f"| figure | upstream direct | via proxy | result (median {spread}) | {target_title} | |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, comparison, target, unit in rows:
        s = summary.get(key)
        if s is None:
            lines.append(f"| {label} | | | not measured | {target_text(comparison, target, unit)} | n/a |")
            continue
        pair = BESIDE.get(key)
        direct = fmt(summary[pair[0]]["median"], unit) if pair and pair[0] in summary else ""
        via = fmt(summary[pair[1]]["median"], unit) if pair and pair[1] in summary else ""
        if key.endswith("stream_per_chunk_added_ms"):
            direct, via = f"{direct} (span)", f"{via} (span)"
        sign = "+" if "added" in key and s["median"] >= 0 else ""
        result = f"{sign}{fmt(s['median'], unit)} {unit}"
        if repeats > 1:
            result += f" [{fmt(s['min'], unit)}, {fmt(s['max'], unit)}]"
        verdict = "info" if s.get("met") is None else ("**met**" if s["met"] else "**MISSED**")
        if key.startswith("adj_") and s.get("met") is not None:
            verdict = "would meet" if s["met"] else "would miss"
        lines.append(f"| {label} | {direct} | {via} | {result} | {target_text(comparison, target, unit)} | {verdict} |")
    return "\n".join(lines)


def target_text(comparison: str, target: float | None, unit: str) -> str:
    if target is None:
        return "—"
    symbol = {"<=": "≤", ">=": "≥"}.get(comparison, "")
    number = f"{target:,.0f}" if unit == "req/s" else f"{target:g}"
    return f"{symbol} {number} {unit}".strip()


def metadata(args: argparse.Namespace, pins: tuple[str, int | None, int | None]) -> dict[str, Any]:
    def command(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((x.split(":", 1)[1].strip() for x in cpuinfo if x.startswith("model name")), "")
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": command("git", "rev-parse", "--short", "HEAD") + (" (dirty)" if command("git", "status", "-s") else ""),
        "python": platform.python_version(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "pinning": pins[0],
        "cpu_upstream_client_wrk": pins[1],
        "cpu_gateway": pins[2],
        "wrk": command("wrk", "--version").splitlines()[0] if shutil.which("wrk") else None,
        "pythonpath": os.environ.get("PYTHONPATH"),  # set when the gateway's code is taken from elsewhere
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("wrk"):
        print(
            "wrk is not installed, so the c=32 figures (req/s, p99, CPU per request) will be skipped.\n"
            "Install it with: apt-get update && apt-get install -y wrk",
            file=sys.stderr,
        )
    pins = choose_pinning(args.no_pin)
    procs = Processes()
    atexit.register(procs.stop_all)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _: sys.exit(128 + number))
    started = time.perf_counter()
    parts = Parts(args)
    upstream_rss: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as folder:
        try:
            if pins[1] is not None:
                os.sched_setaffinity(0, {pins[1]})  # this client and wrk (inherited) share the upstream's CPU
            upstream, upstream_port = start_upstream(procs, pins[0], pins[1], Path(folder) / "upstream.log")
            upstream_rss.append(rss_mib(upstream.pid))
            config = write_config(Path(folder), upstream_port)
            for n in range(args.repeats if parts.per_repeat else 0):
                print(f"repeat {n + 1}/{args.repeats}", file=sys.stderr, flush=True)
                if parts.foundation:
                    parts.repeats.append(one_repeat(procs, upstream_port, config, pins, args))
                if parts.full_stack:  # compared with the foundation's figures of this repeat, when there are some
                    foundation = parts.repeats[-1] if parts.foundation else None
                    parts.stack.append(stack.one_repeat(procs, upstream_port, Path(folder), pins, args, foundation))
                if parts.cache:  # with the reference proxy's figures of this repeat, when there are some
                    reference = parts.repeats[-1] if parts.repeats and not args.no_calibrate else None
                    parts.cache_repeats.append(
                        cache.one_repeat(procs, upstream_port, Path(folder), pins, args, reference)
                    )
                upstream_rss.append(rss_mib(upstream.pid))  # the fake upstream must not grow per request
            if parts.race:
                print("racing", file=sys.stderr, flush=True)
                parts.race_result = race.measure(procs, upstream_port, Path(folder), pins, args)
        finally:
            procs.stop_all()
            if parts.cache:
                cache.final_flush(args)
    meta = metadata(args, pins)
    if args.cache_only:
        return cache.cache_only(args, meta, parts.cache_repeats, upstream_rss, started)
    meta["upstream_rss_mib"] = upstream_rss
    return report(args, meta, parts, started)


class Parts:
    """Which parts of the benchmark this run measures, and what each measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        some = not (args.cache_only or args.race_only)
        self.foundation = some and args.stack != "full"
        self.full_stack = some and args.stack != "foundation"
        self.cache = not (args.no_cache or args.race_only)
        self.race = not (args.no_race or args.cache_only)
        self.per_repeat = self.foundation or self.full_stack or self.cache
        self.repeats: list[dict[str, Any]] = []
        self.stack: list[dict[str, Any]] = []
        self.cache_repeats: list[dict[str, Any]] = []
        self.race_result: dict[str, Any] | None = None


def report(args: argparse.Namespace, meta: dict[str, Any], parts: Parts, started: float) -> int:
    """Print every table; write the JSON (a run without the foundation keeps the file's other sections)."""
    result: dict[str, Any] = {}
    missed: list[str] = []
    errors = 0.0
    print(
        f"\nSluice benchmark, {meta['when']}, git {meta['git']}, pinning: {meta['pinning']}, {args.repeats} repeat(s)"
    )
    if parts.foundation:
        summary = summarise(parts.repeats)
        print()
        print(table(summary, TARGETS, args.repeats, "target"))
        if not args.no_calibrate:
            print("\nCalibration: PERF-NOTES.md's reference proxy measured in the same repeats, on the same CPU.")
            print("'adjusted' = the gateway's figure times (reference box ÷ this box) for the reference proxy.\n")
            print(table(summary, CALIBRATION, args.repeats, "PERF-NOTES / target"))
        errors = max(summary.get(k, {}).get("max", 0) for k in ("wrk_errors", "wrk_errors_direct", "ref_wrk_errors"))
        if errors:
            print(f"\nwarning: wrk counted {errors:.0f} errors (non-2xx, timeouts or socket errors) in a run")
        result = {"meta": meta, "summary": summary, "repeats": parts.repeats}
        missed = [key for key, *_ in TARGETS if summary.get(key, {}).get("met") is False]
    else:  # keep what the file holds; replace only what was measured
        with contextlib.suppress(OSError, ValueError):
            result = json.loads(args.output.read_text())
        result = result if isinstance(result, dict) else {}
    if parts.stack:
        result["full_stack"] = stack.report(parts.stack, meta)
        missed += result["full_stack"]["missed"]
        errors = max(errors, result["full_stack"]["summary"].get("full_wrk_errors", {}).get("max", 0))
    if parts.race_result is not None:
        result["race"] = race.report(parts.race_result, meta)
    if parts.per_repeat:
        rss = ", ".join(f"{x:.1f}" for x in meta["upstream_rss_mib"])
        print(f"\nfake upstream RSS (MiB) at start and after each repeat: {rss}")
    if parts.cache_repeats:
        result["cache"] = cache.report(parts.cache_repeats, args, meta)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    sections = ", ".join(f'"{k}"' for k in ("full_stack", "race", "cache") if k in result)
    print(f"\n{time.perf_counter() - started:.0f} s; JSON in {args.output} ({sections or 'no sections'} included)")
    if parts.cache_repeats and result["cache"].get("invalid"):
        return 1  # hits that were not hits: the cache figures are wrong, whatever --fail-on-miss says
    if parts.race_result is not None and not parts.race_result["valid"]:
        return 1  # a race loser left answering, or a check failed: the racing figures do not hold
    return 1 if args.fail_on_miss and (missed or errors) else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; every process this run started has been stopped", file=sys.stderr)
        raise SystemExit(130) from None
