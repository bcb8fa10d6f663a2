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

`GET /_stats` is the one exception: it answers `{"requests": N, "streams": S}`,
the requests answered so far (completions and streams; not /_stats itself, not
refused ones), so bench/cache.py can prove a cache-hit run never reached it.

    python bench/fake_upstream.py --port 0      # prints "listening 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

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


def _stats_response() -> bytes:
    body = json.dumps({"requests": COUNTS[0], "streams": COUNTS[1]}).encode()
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

    __slots__ = ("buffer", "closing", "loop", "paced", "transport")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.paced = False  # a paced stream is being written; later requests wait in the buffer
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.transport = None
        self.buffer = bytearray()

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
            elif stream:
                COUNTS[0] += 1
                COUNTS[1] += 1
                self._stream(head)
            else:
                COUNTS[0] += 1
                self.transport.write(COMPLETION_RESPONSE)
            if self.closing:
                self.transport.close()

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


def _install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def serve(host: str, port: int) -> None:
    """Listen until SIGTERM or SIGINT; print the bound address on stdout first."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeUpstream, host, port, backlog=1024, reuse_address=True)
    bound = server.sockets[0].getsockname()
    print(f"listening {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A fast fake OpenAI upstream (canned chat.completion / SSE stream).")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; keep it loopback)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free port, printed)")
    args = parser.parse_args(argv)
    loop_name = _install_uvloop()
    print(f"fake upstream on {loop_name}", file=sys.stderr, flush=True)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
