"""What the soak reads from the gateway and its neighbours: /proc, sockets, /metrics, /readyz, /_stats, the ledger.

A sample (`Sampler.take`) is the gateway's RSS, threads and fds (each socket classified by
its peer through /proc/net/tcp* and /proc/net/unix), its asyncio task count and request
counter from /metrics, /readyz's Redis state, the fake provider's open connections and
requests in flight, and Redis's connected clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from soak_client import Client
from soak_processes import HOST, Gateway, redis_command

T = TypeVar("T")
# What a reading during the run may meet: the server gone or slow, or an answer that does not parse.
READ_ERRORS = (OSError, TimeoutError, ValueError, IndexError)


# ---------------------------------------------------------------- /proc


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (KiB) and Threads from /proc/PID/status."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "Threads"):
            found[name] = float(value.split()[0])
    return found


def cpu_seconds(pid: int) -> float:
    """The process's CPU time so far, user plus system (/proc/PID/stat)."""
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


# ---------------------------------------------------------------- HTTP and Redis


def _dechunk(body: bytes) -> bytes:
    """The payload of a chunked HTTP body."""
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


async def read_or_none(
    port: int, path: str, parse: Callable[[bytes], T], headers: dict[str, str] | None = None
) -> T | None:
    """`parse` of a GET's body, or None when the server does not answer in 5 s or the body does not parse."""
    try:
        _, body = await http_get(port, path, headers, limit_s=5)
        return parse(body)
    except READ_ERRORS:
        return None


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


def _metrics(body: bytes) -> tuple[bytes, int, int]:
    """The /metrics body as read (scanned for keys later), the asyncio task count and sluice_requests_total."""
    values = metric_values(body.decode())
    return body, int(values.get("sluice_asyncio_tasks", -1)), int(values["sluice_requests_total"])


def redis_clients(port: int) -> int | None:
    """Redis's connected_clients, not counting the connection that asks."""
    reply = redis_command(port, "INFO", "clients", timeout=1.0)
    match = re.search(rb"connected_clients:(\d+)", reply or b"")
    return int(match.group(1)) - 1 if match else None


# ---------------------------------------------------------------- samples


class Sampler:
    """Takes the soak's samples and keeps them in order; `load_start` (loop time) is set when the soak begins."""

    def __init__(self, gateway: Gateway, upstream_port: int, redis_port: int, admin_key: str, client: Client) -> None:
        self.gateway = gateway
        self.upstream_port = upstream_port
        self.redis_port = redis_port
        self.admin = {"Authorization": f"Bearer {admin_key}"}
        self.client = client
        self.samples: list[dict[str, Any]] = []
        self.load_start = 0.0  # 0 until the soak's load begins: samples before it have no t_s
        self.last_metrics = b""  # the last /metrics body read, scanned for keys at the end

    def rss_mib(self) -> float:
        """The gateway's resident memory now."""
        return round(proc_status(self.gateway.pid).get("VmRSS", 0) / 1024, 2)

    def fds(self) -> dict[str, int]:
        """The gateway's fds now, sockets by peer (`fd_breakdown`)."""
        return fd_breakdown(self.gateway.pid, self.gateway.port, self.upstream_port, self.redis_port)

    async def take(self, phase: str) -> dict[str, Any]:
        """One sample, labelled `phase`; kept in `samples` and returned."""
        loop = asyncio.get_running_loop()
        s: dict[str, Any] = {
            "phase": phase,
            "t_s": round(loop.time() - self.load_start, 1) if self.load_start else None,
        }
        status = proc_status(self.gateway.pid)
        s["rss_mib"] = round(status.get("VmRSS", 0) / 1024, 2)
        s["hwm_mib"] = round(status.get("VmHWM", 0) / 1024, 2)
        s["threads"] = int(status.get("Threads", 0))
        s.update(self.fds())
        metrics = await read_or_none(self.gateway.port, "/metrics", _metrics, self.admin)
        if metrics is None:
            s["tasks"] = None
        else:
            self.last_metrics, tasks, requests_total = metrics
            s["tasks"] = tasks
            s["requests_total"] = requests_total
        ready = await read_or_none(self.gateway.port, "/readyz", json.loads)
        s["readyz_redis"] = None if ready is None else ready.get("redis")
        upstream = await read_or_none(self.upstream_port, "/_stats", json.loads)
        if upstream is None:
            s["upstream_open"] = s["upstream_in_flight"] = None
        else:
            s["upstream_open"] = upstream.get("open_connections", 0) - 1  # not the one asking
            s["upstream_in_flight"] = upstream.get("in_flight", 0)
        s["redis_clients"] = await asyncio.to_thread(redis_clients, self.redis_port)
        s["client_in_flight"] = self.client.in_flight
        s["calls_sent"] = len(self.client.calls)
        self.samples.append(s)
        return s


def sample_line(s: dict[str, Any]) -> str:
    """A sample as the one progress line printed while the soak runs."""
    t = f"+{s['t_s']:.0f}s" if s.get("t_s") is not None else "-"
    return (
        f"  {s['phase']:<32} {t:>6}  rss {s['rss_mib']:.1f} MiB  fds {s['fds']} "
        f"(up {s['upstream']}, redis {s['redis']},"
        f" clients {s['client']}, close_wait {s['close_wait']}+{s['close_wait_redis']})"
        f"  tasks {s['tasks']}  redis {s['readyz_redis']}"
        f"  provider open {s['upstream_open']} in flight {s['upstream_in_flight']}  calls {s['calls_sent']}"
    )


# ---------------------------------------------------------------- the ledger


@dataclass
class LedgerReading:
    """The ledger through the admin API: /sluice/usage's call count, every row, and the raw bodies read."""

    usage_calls: int
    rows: list[dict[str, Any]]
    raw: bytes  # every body read, scanned for keys


async def read_ledger(port: int, admin_key: str, since_wall: float, sent: int) -> LedgerReading:
    """Poll /sluice/usage until its call count stops moving; then every row through /sluice/calls."""
    admin = {"Authorization": f"Bearer {admin_key}"}
    since = quote(datetime.fromtimestamp(since_wall, UTC).isoformat(timespec="seconds"))
    usage_calls = -1
    stable_since = time.monotonic()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = await http_get(port, f"/sluice/usage?since={since}&by=key", admin)
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
        status, body = await http_get(port, path, admin)
        if status != 200:
            raise RuntimeError(f"/sluice/calls answered {status}: {body[:300]!r}")
        raw.append(body)
        page = json.loads(body)
        rows.extend(page["data"])
        cursor = page.get("next")
        if not cursor:
            break
    _, usage_body = await http_get(port, f"/sluice/usage?since={since}&by=key", admin)
    raw.append(usage_body)
    return LedgerReading(usage_calls, rows, b"\n".join(raw))
