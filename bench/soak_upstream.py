"""A fault-injecting fake OpenAI provider for bench/soak.py: real HTTP/1.1 on loopback, its own process.

Any POST path answers like `/v1/chat/completions`; the first path segment names the
provider (`/p1/v1/chat/completions` is provider `p1`), so one process serves the
several providers of a fallback route. Each request is checked against the key its
provider expects (`--keys-env NAME`: a JSON object {"p1": "sk-...", ...} read from
that environment variable, never from argv): a request with another key is counted
as `wrong_key` and refused with 401.

A healthy answer comes after 20-150 ms (non-stream: one `chat.completion` JSON with
usage) or as a stream of `--chunks` content events `--gap-ms` apart, a finish event,
a usage event when the request asked `stream_options.include_usage`, and
`data: [DONE]`. Every other answer is a fault, on `--fault-rate` of the requests
(default 0.2), picked at random (seeded by `--seed`) from:

- `429`: a rate limit with a short reset, one of `retry-after: 1`,
  `retry-after-ms: 100` / `250`, `x-ratelimit-reset-requests: 50ms` / `250ms`;
- `5xx`: 500, 502 or 503 with an OpenAI-shaped error body; the 500 echoes the key it
  received ("Incorrect API key provided: sk-..."), as real providers do, so a
  gateway that relays or logs upstream error text unscrubbed leaks it;
- `stall`: nothing for `--stall-s` (default 5 s; configure the gateway's
  `first_byte_s` well below it). A stream may instead stall after its first event
  (`stall-mid`, against the gateway's `idle_s`). If the gateway closes the
  connection meanwhile the stall is counted `stall_closed` (with the time it took);
  if it is still open when the stall ends the request is answered late and counted
  `stall_late`, which means the gateway left an upstream request hanging;
- `cut`: a stream that stops after 1-5 events, the connection closed (FIN) or reset
  (RST) without the terminating chunk; a non-stream answer closed halfway through
  its body; or (`reset`) a connection closed before any byte of the answer.

`GET /_stats` answers JSON counters: requests by provider and by outcome, the
connections accepted and open now (the asking one included), the requests being
answered now (`in_flight`), `aborted` (healthy answers the gateway closed before
their end: its client went away), the stall counters, `wrong_key`, and
`no_include_usage` (streams that did not ask for usage).

    python bench/soak_upstream.py --port 0   # prints "listening 127.0.0.1:PORT" on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from fake_upstream import install_uvloop, serve_until_stopped

MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024
RESET_HEADERS = (
    ("retry-after", "1"),
    ("retry-after-ms", "100"),
    ("retry-after-ms", "250"),
    ("x-ratelimit-reset-requests", "50ms"),
    ("x-ratelimit-reset-requests", "250ms"),
)
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}
REASONS.update({500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"})


class Options:
    """The fake provider's settings from the command line, the keys it expects, and its seeded random source."""

    def __init__(self, args: argparse.Namespace, keys: dict[str, str]) -> None:
        self.fault_rate: float = args.fault_rate
        self.stall_s: float = args.stall_s
        self.chunks: int = args.chunks
        self.gap_s: float = args.gap_ms / 1000
        self.keys = keys
        self.rng = random.Random(args.seed)


STATS: Counter[str] = Counter()  # what /_stats reports: requests by outcome, connections, stalls, wrong keys
BY_PROVIDER: Counter[str] = Counter()  # requests by provider (the path's first segment)
STALL_CLOSE_MS: list[float] = []  # how long after the stall began the gateway closed the connection


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """An HTTP/1.1 status line and header block."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json_response(status: int, payload: Any, extra: Sequence[tuple[str, str]] = ()) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body))), *extra]
    return _head(status, headers) + body


def _error(message: str, kind: str) -> Any:
    """An OpenAI-shaped error body."""
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


COMPLETION = {
    "id": "chatcmpl-soak",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "A healthy answer from the soak's fake provider."},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 14, "completion_tokens": 11, "total_tokens": 25},
}
CHUNK_FIELDS = {"id": "chatcmpl-soak", "object": "chat.completion.chunk", "created": 1700000000, "model": "m"}
COMPLETION_BODY = json.dumps(COMPLETION, separators=(",", ":")).encode()
STREAM_HEAD = _head(
    200,
    [
        ("content-type", "text/event-stream; charset=utf-8"),
        ("transfer-encoding", "chunked"),
        ("cache-control", "no-cache"),
    ],
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: Any) -> bytes:
    return _chunk(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


def _delta(delta: dict[str, Any], finish: str | None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _event({**CHUNK_FIELDS, "choices": [choice]})


def stream_frames(chunks: int, usage: bool) -> list[bytes]:
    """The events of a healthy stream: role, `chunks` content deltas, finish, [usage], [DONE], the 0-chunk."""
    frames = [_delta({"role": "assistant", "content": ""}, None)]
    frames.extend(_delta({"content": f" tok{i}"}, None) for i in range(chunks))
    frames.append(_delta({}, "stop"))
    if usage:
        tokens = {"prompt_tokens": 14, "completion_tokens": chunks, "total_tokens": 14 + chunks}
        frames.append(_event({**CHUNK_FIELDS, "choices": [], "usage": tokens}))
    frames.append(_chunk(b"data: [DONE]\n\n"))
    frames.append(b"0\r\n\r\n")
    return frames


class Closed(Exception):
    """The peer (the gateway) closed the connection while an answer was being made."""


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the peer closes (EOF or reset) within `seconds`; the gateway never pipelines, so no data comes."""
    if seconds <= 0:
        return reader.at_eof()
    try:
        data = await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    if data:  # not expected from the gateway: treat as a broken exchange
        raise Closed
    return True


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    """(method, path, headers by lower-case name, body) of the next request; None when the connection is done."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    except asyncio.LimitOverrunError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) < 3:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = b""
    try:
        if "content-length" in headers:
            length = int(headers["content-length"])
            if not 0 <= length <= MAX_BODY:
                return None
            body = await reader.readexactly(length)
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            pieces = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                pieces.append(await reader.readexactly(size + 2))
            body = b"".join(p[:-2] for p in pieces)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
        return None
    return parts[0].upper(), parts[1], headers, body


def _stats_body() -> bytes:
    """The /_stats answer: the counters, requests by provider, and how soon stalls were closed."""
    stats: dict[str, Any] = dict(STATS)
    stats["by_provider"] = dict(BY_PROVIDER)
    stats["stall_close_ms_max"] = round(max(STALL_CLOSE_MS), 1) if STALL_CLOSE_MS else None
    stats["stall_close_ms_mean"] = round(sum(STALL_CLOSE_MS) / len(STALL_CLOSE_MS), 1) if STALL_CLOSE_MS else None
    return _json_response(200, stats)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0) rather than a FIN."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Exchange:
    """One request on one connection, answered healthy or with a fault; returns whether to keep the connection."""

    def __init__(self, options: Options, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.options = options
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        """Write and drain; `Closed` when the gateway has gone."""
        if self.writer.is_closing():
            raise Closed
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError:
            raise Closed from None

    async def answer(self, path: str, headers: dict[str, str], body: bytes) -> bool:
        """Check the key, then answer healthy or, on --fault-rate of requests, with a fault picked at random."""
        provider = path.lstrip("/").partition("/")[0]
        BY_PROVIDER[provider] += 1
        STATS["requests"] += 1
        key = headers.get("authorization", "").removeprefix("Bearer ").strip()
        expected = self.options.keys.get(provider)
        if expected is None or key != expected:
            STATS["wrong_key"] += 1
            await self.send(_json_response(401, _error("wrong key for this provider", "invalid_request_error")))
            return True
        try:
            request = json.loads(body)
        except ValueError:
            STATS["bad_body"] += 1
            await self.send(_json_response(400, _error("bad JSON", "invalid_request_error")))
            return True
        stream = request.get("stream") is True
        usage = stream and bool((request.get("stream_options") or {}).get("include_usage"))
        if stream:
            STATS["streams"] += 1
            if not usage:
                STATS["no_include_usage"] += 1
        rng = self.options.rng
        if rng.random() >= self.options.fault_rate:
            return await self.healthy(stream, usage)
        pick = rng.random()
        if pick < 0.3:
            return await self.rate_limited()
        if pick < 0.6:
            return await self.server_error(key)
        if pick < 0.8:
            return await self.stall(stream, usage)
        return await self.cut(stream, usage)

    async def healthy(self, stream: bool, usage: bool) -> bool:
        """A completion after 20-150 ms, or a stream of events `--gap-ms` apart."""
        STATS["ok"] += 1
        if not stream:
            if await closed_within(self.reader, self.options.rng.uniform(0.02, 0.15)):
                STATS["aborted"] += 1
                return False
            await self.send(_json_response(200, COMPLETION))
            return True
        return await self.stream(stream_frames(self.options.chunks, usage), "aborted")

    async def stream(self, frames: list[bytes], aborted: str, first: bytes = STREAM_HEAD) -> bool:
        """Send `first` and `frames` `--gap-ms` apart; counted as `aborted` when the gateway closes meanwhile."""
        await self.send(first + frames[0])
        for frame in frames[1:]:
            if await closed_within(self.reader, self.options.gap_s):
                STATS[aborted] += 1
                return False
            await self.send(frame)
        return True

    async def rate_limited(self) -> bool:
        """A 429 with one of the short reset headers."""
        STATS["fault_429"] += 1
        name, value = self.options.rng.choice(RESET_HEADERS)
        payload = _error("Rate limit reached for requests", "requests")
        await self.send(_json_response(429, payload, [(name, value)]))
        return True

    async def server_error(self, key: str) -> bool:
        """A 500, 502 or 503; the 500's message holds `key`."""
        status = self.options.rng.choice((500, 502, 503))
        STATS[f"fault_{status}"] += 1
        if status == 500:  # echoes the key, as some providers' error messages do
            message = f"Incorrect API key provided: {key}. You can find your API key at the dashboard."
        else:
            message = "The server is overloaded or not ready yet."
        await self.send(_json_response(status, _error(message, "server_error")))
        return True

    async def stall(self, stream: bool, usage: bool) -> bool:
        """Nothing for --stall-s (a stream: maybe after its first event); then, if still open, the answer, late."""
        mid = stream and self.options.rng.random() < 0.5
        name = "stall_mid" if mid else "stall"
        STATS[f"fault_{name}"] += 1
        if mid:
            frames = stream_frames(self.options.chunks, usage)
            await self.send(STREAM_HEAD + frames[0])
        began = time.perf_counter()
        if await closed_within(self.reader, self.options.stall_s):
            STATS["stall_closed"] += 1
            STALL_CLOSE_MS.append((time.perf_counter() - began) * 1000)
            return False
        STATS["stall_late"] += 1  # the gateway kept waiting on a stalled upstream for stall_s
        if mid:
            return await self.stream(frames[1:], "aborted_late", first=b"")
        if stream:
            return await self.stream(stream_frames(self.options.chunks, usage), "aborted_late")
        await self.send(_json_response(200, COMPLETION))
        return True

    async def cut(self, stream: bool, usage: bool) -> bool:
        """A reset before any answer, or an answer cut short (a stream after 1-5 events, a body halfway)."""
        rng = self.options.rng
        if rng.random() < 0.25:
            STATS["fault_reset"] += 1  # closed before the first byte of an answer
            _abort(self.writer)
            return False
        if stream:
            STATS["fault_cut_stream"] += 1
            frames = stream_frames(self.options.chunks, usage)
            keep = rng.randint(1, min(5, len(frames) - 3))
            if not await self.stream(frames[:keep], "aborted"):
                return False
        else:
            STATS["fault_cut_body"] += 1
            head = _head(200, [("content-type", "application/json"), ("content-length", str(len(COMPLETION_BODY)))])
            await self.send(head + COMPLETION_BODY[: len(COMPLETION_BODY) // 2])
        if rng.random() < 0.5:
            _abort(self.writer)
        else:
            self.writer.close()
        return False


async def handle(options: Options, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection: its requests in turn (keep-alive) until one closes it."""
    STATS["connections"] += 1
    STATS["open_connections"] += 1
    try:
        while True:
            request = await read_request(reader)
            if request is None:
                return
            method, path, headers, body = request
            if method == "GET" and path == "/_stats":
                writer.write(_stats_body())
                await writer.drain()
                if "close" in headers.get("connection", "").lower():
                    return
                continue
            STATS["in_flight"] += 1
            try:
                keep = await Exchange(options, reader, writer).answer(path, headers, body)
            except (Closed, ConnectionError):
                STATS["write_failed"] += 1
                keep = False
            finally:
                STATS["in_flight"] -= 1
            if not keep or "close" in headers.get("connection", "").lower():
                return
    except Exception as exc:  # a bug here must not take the server down
        STATS["handler_errors"] += 1
        print(f"soak upstream: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        STATS["open_connections"] -= 1
        with contextlib.suppress(Exception):
            writer.close()


async def serve(host: str, port: int, options: Options) -> None:
    """Listen until SIGTERM or SIGINT; print the bound address on stdout first."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle(options, reader, writer)

    await serve_until_stopped(
        await asyncio.start_server(on_connection, host, port, backlog=1024, reuse_address=True, limit=MAX_HEAD)
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the options, read the keys from the environment, serve."""
    parser = argparse.ArgumentParser(description="A fault-injecting fake OpenAI provider (bench/soak.py).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port, printed")
    parser.add_argument("--keys-env", default="SOAK_UPSTREAM_KEYS", help="env var with {provider: key} JSON")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="share of requests answered with a fault")
    parser.add_argument("--stall-s", type=float, default=5.0, help="how long a stall lasts before a late answer")
    parser.add_argument("--chunks", type=int, default=12, help="content events in a healthy stream")
    parser.add_argument("--gap-ms", type=float, default=15.0, help="pause between stream events")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0 <= args.fault_rate <= 1:
        parser.error("--fault-rate must be between 0 and 1")
    try:
        keys = json.loads(os.environ.get(args.keys_env, "{}"))
    except ValueError:
        parser.error(f"${args.keys_env} is not JSON")
    install_uvloop()
    asyncio.run(serve(args.host, args.port, Options(args, keys)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
