"""The soak's open-loop client: calls to the gateway's chat endpoint at fixed times, whatever the answers do.

Raw asyncio HTTP/1.1 with keep-alive, so it costs little next to the gateway. Each call
carries its own `X-Request-Id` (so the ledger can be matched call by call) and is
recorded as a `Call`; every byte of every answer is scanned for the run's keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import socket
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

from soak_processes import HOST

POOL_IDLE_S = 2.0  # a client connection idle longer is not reused (uvicorn closes idle ones after 5 s)
CACHE_BODIES = 20  # distinct bodies of the cache-on calls, so some are hits


@dataclass(frozen=True)
class Mix:
    """The shares of calls that stream, leave early and ask for the cache; `seed` fixes which calls they are."""

    stream_share: float
    disconnect_rate: float
    cache_share: float
    seed: int


@dataclass(slots=True)
class Call:
    """One call: what kind it is, when it was due and sent, and what came back."""

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

    def __init__(
        self, port: int, tenant_key: str, mix: Mix, timeout_s: float, run_id: str, needles: dict[str, bytes]
    ) -> None:
        self.port = port
        self.key = tenant_key
        self.mix = mix
        self.timeout_s = timeout_s
        self.run_id = run_id
        self.needles = needles
        self.rng = random.Random(mix.seed)  # the mix: call n's kind depends on the seed and n only
        self.act_rng = random.Random(mix.seed + 1)  # when and how a disconnecting client leaves
        self.calls: list[Call] = []
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.leaks: Counter[str] = Counter()  # needles seen in answers
        self.in_flight = 0

    def request(self, call: Call) -> bytes:
        """The bytes of `call`'s POST /v1/chat/completions."""
        if call.cache:
            content = f"soak cached question {call.n % CACHE_BODIES}"
        else:
            content = f"soak question {call.n}: how are you?"
        body: dict[str, Any] = {"model": "soak", "messages": [{"role": "user", "content": content}]}
        if call.stream:
            body["stream"] = True
        data = json.dumps(body).encode()
        cache_header = "X-Sluice-Cache: on\r\n" if call.cache else ""
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
            f"X-Request-Id: {call.request_id}\r\n{cache_header}"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        return head.encode() + data

    async def drive(self, duration_s: float, rate: float) -> None:
        """Start one call every 1/rate s for `duration_s`, at fixed times (open loop); return when all are sent."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        i = 0
        mix = self.mix
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
                stream=self.rng.random() < mix.stream_share,
                disconnect=self.rng.random() < mix.disconnect_rate,
                cache=self.rng.random() < mix.cache_share,
            )
            self.calls.append(call)
            task = asyncio.create_task(self._make(call))
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
        """An idle keep-alive connection young enough to trust, else a new one."""
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

    async def _make(self, call: Call) -> None:
        """Send `call`, read its answer (or leave early), and record how it went."""
        loop = asyncio.get_running_loop()
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        keep = False
        call.began = loop.time()
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.timeout_s):
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
        """Count the run's keys in what the gateway answered."""
        for name, needle in self.needles.items():
            if needle in data:
                self.leaks[name] += 1


def _set_linger0(writer: asyncio.StreamWriter) -> None:
    """SO_LINGER 0: the close sends an RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
