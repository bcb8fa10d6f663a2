"""The soak's processes: its own redis-server, the fake provider and `sluice serve`, with their config and keys.

Everything listens on 127.0.0.1 and is started by this run; `Processes` remembers each
child and signals only those, by their own pids.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
PROVIDERS = ("p1", "p2", "p3")
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


def _die_with_parent() -> None:
    """In the child: SIGKILL when this script dies without cleaning up (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)


class Processes:
    """The subprocesses this run started; only these are ever signalled, by their own pids."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str], cpu: int | None, **popen: Any) -> subprocess.Popen[bytes]:
        """Start `argv` (pinned to `cpu` with taskset unless it is None) and remember it."""
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
        """Stop whatever is still running (the way out, also after an error)."""
        for proc in list(self.running):
            with contextlib.suppress(Exception):
                self.stop(proc, grace=3.0)


@dataclass(frozen=True)
class CpuPlan:
    """Which CPU the gateway and the rest (this client, the fake provider, Redis) run on; None: not pinned."""

    description: str
    gateway: int | None
    others: int | None


def pin_cpus(no_pin: bool) -> CpuPlan:
    """The gateway gets the second CPU to itself; this process moves to the first now, its helpers follow."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin or len(cpus) < 2 or not shutil.which("taskset"):
        return CpuPlan("none", None, None)
    os.sched_setaffinity(0, {cpus[0]})
    return CpuPlan(f"gateway on CPU {cpus[1]}; client, fake provider and Redis on CPU {cpus[0]}", cpus[1], cpus[0])


def free_port() -> int:
    """A TCP port on HOST that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on HOST:`port`."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll `predicate` until it holds; RuntimeError when `proc` exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not ready within {timeout:g} s")


def healthz_ok(port: int) -> bool:
    """Whether the gateway on `port` answers 200 on /healthz (blocking, for start-up)."""
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
            if data.startswith(b"$"):  # a bulk string (INFO): read until all its bytes are in
                size = int(data[1 : data.index(b"\r\n")])
                while size >= 0 and len(data) < data.index(b"\r\n") + 2 + size + 2:
                    more = sock.recv(65536)
                    if not more:
                        break
                    data += more
            return data
    except (OSError, ValueError):
        return None


def environment_without_api_keys() -> dict[str, str]:
    """This process's environment minus every `*_API_KEY`: no real provider key goes near a soak."""
    return {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}


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
        """Start it (again, after a kill: same port, same files) and wait until it answers PING."""
        argv = ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "yes"]
        argv += ["--appendfsync", "everysec", "--rdbcompression", "no", "--dir", str(self.folder)]
        argv += ["--logfile", str(self.folder / "redis.log"), "--daemonize", "no"]
        self.proc = self.procs.spawn(argv, self.cpu, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.starts += 1
        wait_for(lambda: redis_command(self.port, "PING", timeout=0.5) == b"+PONG\r\n", 30, "redis-server", self.proc)

    def kill(self) -> None:
        """SIGKILL: the outage the soak puts the gateway through."""
        if self.proc is not None:
            self.procs.stop(self.proc, grace=5.0, sig=signal.SIGKILL)
            self.proc = None

    def stop(self) -> None:
        """SIGTERM at the end of the run."""
        if self.proc is not None:
            self.procs.stop(self.proc, grace=10.0)
            self.proc = None


def start_upstream(
    procs: Processes,
    folder: Path,
    provider_keys: dict[str, str],
    fault_rate: float,
    stall_s: float,
    seed: int,
    cpu: int | None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start bench/soak_upstream.py (the keys it expects in its environment); the process and its port."""
    argv = [sys.executable, str(BENCH / "soak_upstream.py"), "--host", HOST, "--port", "0"]
    argv += ["--fault-rate", str(fault_rate), "--stall-s", str(stall_s), "--seed", str(seed)]
    env = environment_without_api_keys()
    env["SOAK_UPSTREAM_KEYS"] = json.dumps(provider_keys)
    with (folder / "upstream.err").open("wb") as err:
        proc = procs.spawn(argv, cpu, stdout=subprocess.PIPE, stderr=err, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "listening HOST:PORT", printed once it listens
    match = re.match(rb"listening [\d.]+:(\d+)", line)
    if match is None:
        raise RuntimeError(f"the fake provider did not start: {line!r}")
    return proc, int(match.group(1))


def write_config(folder: Path, port: int, upstream_port: int, redis_port: int, first_byte_s: float) -> Path:
    """The gateway's soak.toml: p1..p3 on the fake provider in one fallback route, Redis, ledger, auth by env."""
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
        """New random keys: one per provider, the tenant's and the admin's."""
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
        """The gateway's environment: the keys its config names (`env:SOAK_...`), no real provider key."""
        env = environment_without_api_keys()
        env.update({f"SOAK_KEY_{n.upper()}": k for n, k in self.providers.items()})
        env.update(SOAK_TENANT_KEY=self.tenant, SOAK_ADMIN_KEY=self.admin)
        return env


def gateway_command() -> list[str]:
    """The venv's `sluice` script, or `python -m proxy` where it is not installed."""
    script = Path(sys.executable).parent / "sluice"
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy"]


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
        """The running gateway's pid."""
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        """Start it and wait for /healthz; the seconds that took. A restart logs to gateway-2.out/.err."""
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
