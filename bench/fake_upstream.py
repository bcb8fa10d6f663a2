"""A fast fake OpenAI upstream for the benchmark: a raw asyncio Protocol speaking just enough HTTP/1.1.

Every request, whatever its method or path, gets a canned answer:

- a `chat.completion` JSON body (Content-Length), or
- when the body asks for `"stream": true`, a 50-chunk SSE stream (chunked
  encoding) whose last event is `data: [DONE]`. Each SSE event is its own
  HTTP chunk and its own `transport.write`, back to back.

The request line may carry optional query parameters (the gateway passes the
query through), looked at only when the request line holds a `?`:
`chunks=N` (events in a stream, the last is `[DONE]`, 2..1000), `gap_ms=G`
(pause G ms between events, 0..100; uvloop's timers have millisecond
granularity) and `hold_ms=H` (pause H ms after the first event only, then send
the rest back to back). bench/run.py uses `hold_ms` for the time to the first
chunk (so the first event is not queued behind the other 49 on a CPU the client
shares) and `gap_ms` for the gateway's CPU per chunk.

What it parses: the end of the header block, Content-Length, `Connection:
close`, and whether the body holds `"stream"` followed by `true`. Nothing per
request is kept: the answers are prebuilt bytes and the read buffer is trimmed
as requests are consumed, so memory does not grow with the request count.
Keep-alive and pipelining work; chunked request bodies are refused (400, close).

`--delay-ms N` (a start-up option, default 0) delays every answer's first byte
by N ms: the request is read, then the answer (completion or stream, paced or
not) starts N ms later; the connection answers nothing else meanwhile. A client
that closes the connection before then has aborted that request. bench/race.py
uses it for the slow target of a race. With the default 0 the answering path is
the one above, plus one attribute test.

`GET /_stats` is the one exception (never delayed): it answers
`{"requests": N, "streams": S, "received": R, "aborted": A, "in_flight": F,
"aborted_ms_sum": T, "aborted_ms_max": M, "connections": C, "open_connections": O}`:
the requests answered so far (completions and streams; not /_stats itself, not
refused ones), so bench/cache.py can prove a cache-hit run never reached it; of
them streams; the requests read in full (answered, aborted or waiting); the ones
whose connection closed while their answer was delayed; the ones waiting out
their delay now; for the aborted ones, the ms from reading the request to the
close, summed, and the largest since the previous /_stats; the connections
accepted so far and those open now (the one asking included). bench/race.py uses
these to show that a race's loser is closed, and how soon, not left to answer.

    python bench/fake_upstream.py --port 0                  # prints "listening 127.0.0.1:PORT"
    python bench/fake_upstream.py --port 0 --delay-ms 200   # a slow provider
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
STREAM_CHUNKS = 50

COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! I am a fake upstream answering the Sluice benchmark."},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 13, "total_tokens": 25},
}


def _completion_response() -> bytes:
    body = json.dumps(COMPLETION, separators=(",", ":")).encode()
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Request-Id: req_bench\r\n"
        "\r\n"
    )
    return head.encode() + body


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Cache-Control: no-cache\r\n"
    b"X-Request-Id: req_bench\r\n"
    b"\r\n"
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(index: int, finish: bool) -> bytes:
    delta = {} if finish else ({"role": "assistant", "content": ""} if index == 0 else {"content": f" tok{index}"})
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": "stop" if finish else None}],
    }
    return _chunk(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")


def stream_frames(chunks: int) -> tuple[bytes, ...]:
    """`chunks` SSE events as HTTP chunks: content deltas, a finish event, then `[DONE]`, then the 0-chunk."""
    events = [_event(i, finish=(i == chunks - 2)) for i in range(chunks - 1)]
    return (*events, _chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n")


COMPLETION_RESPONSE = _completion_response()
STREAM_FRAMES = stream_frames(STREAM_CHUNKS)
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_frames_cache: dict[int, tuple[bytes, ...]] = {STREAM_CHUNKS: STREAM_FRAMES}
STATS_PATH = b"get /_stats "
# Requests answered by every connection of this process: [all, streams]. /_stats reads it.
COUNTS = [0, 0]
# With --delay-ms only: requests [read in full, aborted by the client before their answer, waiting now],
# and ABORT_MS: [the ms from reading an aborted request to its close, summed; their max since the last /_stats].
DELAYED = [0, 0, 0]
ABORT_MS = [0.0, 0.0]
CONNECTIONS = [0, 0]  # [accepted so far, open now]


def _stats_response() -> bytes:
    stats = {"requests": COUNTS[0], "streams": COUNTS[1]}
    stats.update(received=COUNTS[0] + DELAYED[1] + DELAYED[2], aborted=DELAYED[1], in_flight=DELAYED[2])
    stats.update(aborted_ms_sum=round(ABORT_MS[0], 3), aborted_ms_max=round(ABORT_MS[1], 3))
    stats.update(connections=CONNECTIONS[0], open_connections=CONNECTIONS[1])
    ABORT_MS[1] = 0.0
    body = json.dumps(stats).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def _frames(chunks: int) -> tuple[bytes, ...]:
    chunks = min(max(chunks, 2), 1000)
    frames = _frames_cache.get(chunks)
    if frames is None:
        frames = _frames_cache[chunks] = stream_frames(chunks)
    return frames


def _wants_stream(body: bytes | bytearray) -> bool:
    at = body.find(b'"stream"')
    if at < 0:
        return False
    rest = body[at + 8 : at + 24].lstrip(b" \t\r\n:")
    return rest.startswith(b"true")


def _query_options(head: bytes) -> tuple[int, float, float]:
    """(chunks, gap_ms, hold_ms) from the request line's query."""
    line = head[: head.find(b"\r\n")]
    options = {b"chunks": float(STREAM_CHUNKS), b"gap_ms": 0.0, b"hold_ms": 0.0}
    for pair in line.partition(b"?")[2].partition(b" ")[0].split(b"&"):
        name, _, value = pair.partition(b"=")
        if name in options:
            with contextlib.suppress(ValueError):
                options[name] = min(max(float(value), 0.0), 1000.0)
    return int(options[b"chunks"]), min(options[b"gap_ms"], 100.0), min(options[b"hold_ms"], 100.0)


class FakeUpstream(asyncio.Protocol):
    """One connection: answers each complete request in order, keep-alive until the client closes."""

    __slots__ = ("buffer", "closing", "delay_s", "delayed", "delayed_at", "loop", "paced", "transport")

    def __init__(self, delay_s: float = 0.0) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.paced = False  # a paced (or delayed) answer is being written; later requests wait in the buffer
        self.loop = asyncio.get_running_loop()
        self.delay_s = delay_s  # --delay-ms: every answer starts this late
        self.delayed: asyncio.TimerHandle | None = None  # the delayed answer waiting to start
        self.delayed_at = 0.0  # when it was read (time.perf_counter)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        CONNECTIONS[0] += 1
        CONNECTIONS[1] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        CONNECTIONS[1] -= 1
        self.closing = True
        self.transport = None
        self.buffer = bytearray()
        if self.delayed is not None:  # the client left before the answer started: an aborted request
            waited_ms = (time.perf_counter() - self.delayed_at) * 1000
            ABORT_MS[0] += waited_ms
            ABORT_MS[1] = max(ABORT_MS[1], waited_ms)
            self.delayed.cancel()
            self.delayed = None
            DELAYED[1] += 1
            DELAYED[2] -= 1

    def pause_writing(self) -> None:  # a slow reader: stop reading its requests until it catches up
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.paced:
            self._answer_all()

    def _answer_all(self) -> None:
        buffer = self.buffer
        while not self.closing and not self.paced and self.transport is not None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._refuse()
                return
            head = bytes(buffer[:end]).lower()
            length = 0
            at = head.find(b"\ncontent-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at + 1)
                try:
                    length = int(head[at + 16 : line_end if line_end >= 0 else None])
                except ValueError:
                    self._refuse()
                    return
            if length < 0 or length > MAX_BODY or b"\ntransfer-encoding:" in head:
                self._refuse()
                return
            total = end + 4 + length
            if len(buffer) < total:
                return
            stream = length > 0 and _wants_stream(buffer[end + 4 : total])
            del buffer[:total]
            self.closing = b"\nconnection: close" in head
            if head.startswith(STATS_PATH):
                self.transport.write(_stats_response())
            elif self.delay_s:
                self._answer_later(head, stream)
            elif stream:
                COUNTS[0] += 1
                COUNTS[1] += 1
                self._stream(head)
            else:
                COUNTS[0] += 1
                self.transport.write(COMPLETION_RESPONSE)
            if self.closing:
                self.transport.close()

    def _answer_later(self, head: bytes, stream: bool) -> None:
        """--delay-ms: start this answer `delay_s` from now; the connection answers nothing else meanwhile."""
        self.paced = True
        DELAYED[2] += 1
        self.delayed_at = time.perf_counter()
        self.delayed = self.loop.call_later(self.delay_s, self._answer_delayed, head, stream, self.closing)
        self.closing = False  # decided when the answer has gone out

    def _answer_delayed(self, head: bytes, stream: bool, close_after: bool) -> None:
        self.delayed = None
        DELAYED[2] -= 1
        if self.transport is None:
            return
        self.paced = False
        self.closing = close_after
        COUNTS[0] += 1
        if stream:
            COUNTS[1] += 1
            self._stream(head)  # may pace the rest: it then closes or goes on by itself
            if self.paced:
                return
        else:
            self.transport.write(COMPLETION_RESPONSE)
        if self.closing:
            self.transport.close()
        elif self.buffer:
            self._answer_all()

    def _stream(self, head: bytes) -> None:
        assert self.transport is not None
        options = _query_options(head) if b"?" in head[: head.find(b"\r\n")] else (STREAM_CHUNKS, 0.0, 0.0)
        chunks, gap_ms, hold_ms = options
        frames = STREAM_FRAMES if chunks == STREAM_CHUNKS else _frames(chunks)
        write = self.transport.write
        if gap_ms <= 0 and hold_ms <= 0:
            write(STREAM_HEAD)
            for frame in frames:
                write(frame)
            return
        # Paced or held: one event now, the rest later; the connection answers nothing else meanwhile.
        self.paced = True
        close_after = self.closing
        self.closing = False
        write(STREAM_HEAD + frames[0])
        first_pause = (hold_ms or gap_ms) / 1000
        self.loop.call_later(first_pause, self._paced_next, frames, 1, gap_ms / 1000, close_after)

    def _paced_next(self, frames: tuple[bytes, ...], index: int, gap_s: float, close_after: bool) -> None:
        if self.transport is None:
            return
        write = self.transport.write
        if gap_s <= 0:  # held: the rest back to back
            for frame in frames[index:]:
                write(frame)
        else:
            write(frames[index])
            if index + 2 < len(frames):
                self.loop.call_later(gap_s, self._paced_next, frames, index + 1, gap_s, close_after)
                return
            write(frames[index + 1])  # the 0-chunk right after [DONE]
        self.paced = False
        if close_after:
            self.closing = True
            self.transport.close()
        elif self.buffer:
            self._answer_all()

    def _refuse(self) -> None:
        if self.transport is not None:
            self.transport.write(BAD_REQUEST)
            self.transport.close()
        self.closing = True


def install_uvloop() -> str:
    """Make uvloop the event loop policy when it is installed; the loop's name."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def serve(host: str, port: int, delay_ms: float = 0.0) -> None:
    """Listen until SIGTERM or SIGINT; print the bound address on stdout first."""
    loop = asyncio.get_running_loop()
    delay_s = delay_ms / 1000

    def protocol() -> FakeUpstream:
        return FakeUpstream(delay_s)

    await serve_until_stopped(await loop.create_server(protocol, host, port, backlog=1024, reuse_address=True))


async def serve_until_stopped(server: asyncio.AbstractServer) -> None:
    """Print the bound address on stdout (the benchmark reads it), then serve until SIGTERM or SIGINT.

    Also bench/soak_upstream.py's.
    """
    bound = server.sockets[0].getsockname()
    print(f"listening {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A fast fake OpenAI upstream (canned chat.completion / SSE stream).")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; keep it loopback)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free port, printed)")
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="delay every answer's first byte by this many ms (default 0)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.delay_ms <= 60_000:
        parser.error("--delay-ms must be between 0 and 60000")
    loop_name = install_uvloop()
    delay = f", answers delayed {args.delay_ms:g} ms" if args.delay_ms else ""
    print(f"fake upstream on {loop_name}{delay}", file=sys.stderr, flush=True)
    asyncio.run(serve(args.host, args.port, args.delay_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
