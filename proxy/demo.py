"""A fake OpenAI-compatible provider: a pure ASGI app for `sluice demo` and for the test-suite.

Endpoints: `POST /v1/chat/completions` and `POST /v1/completions` (JSON, or SSE with
`"stream": true`; a usage chunk only when `stream_options.include_usage` is true),
`POST /v1/embeddings` (small deterministic vectors), `POST /v1/responses` (a minimal JSON answer)
and `GET /v1/models`. Any other path gets an OpenAI-shaped 404.

Control endpoints, which are not recorded: `GET /_log` (the recorded requests as JSON, bodies
over 4 KB left out) and `POST /_reset` (clears the log and the directive counters).

Every API request is recorded before it is answered (`FakeProvider.requests`). The app listens
for `http.disconnect` while it works, so a client that goes away during a delay or a stall is
noticed at once: `RecordedRequest.disconnected_at` is set and the work is cancelled.

Each API request consumes the next queued `Step` of `FakeProvider.script`; with none queued, the
model name may pick a fault (see `proxy.demo_script` for the directive list), else the script's
default step answers. Nothing is random: ids are counters and `created` is a constant.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from proxy.demo_anthropic import COUNT_TOKENS_PATH, MESSAGES_PATH, count_tokens, message_events, message_json
from proxy.demo_anthropic import error_json as anthropic_error_json
from proxy.demo_script import (
    CREATED,
    METADATA_URL,
    Script,
    Step,
    answer_json,
    directive_step,
    error_body,
    stream_events,
)

__all__ = ["CutConnection", "FakeProvider", "RecordedRequest", "Script", "Step"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LOG_BODY_LIMIT = 4096
DEMO_MODELS = (
    "echo",
    "terse",
    "judge",
    "429-ra-1",
    "503-then-200:1",
    "quota-429",
    "slow-ttft-1",
    "stall-after-2",
    "cut-after-2",
)
_STREAM_PATHS = ("/v1/chat/completions", "/v1/completions", MESSAGES_PATH)
_API_PATHS = (*_STREAM_PATHS, "/v1/embeddings", "/v1/responses", COUNT_TOKENS_PATH)


class CutConnection(Exception):
    """Raised inside the app after a partial body, so the server drops the connection."""


@dataclass
class RecordedRequest:
    """One API request as the fake provider received it."""

    path: str
    method: str
    headers: dict[str, str]
    """Header names lower-cased; repeated headers joined with ", "."""
    body: bytes
    json: Any | None
    received_at: float
    """`time.monotonic()` when the request body had been read."""
    disconnected_at: float | None = None
    """`time.monotonic()` when the client went away before the response was complete."""
    completed: bool = False

    @property
    def model(self) -> str | None:
        """The `model` of a JSON request body, if any."""
        value = self.json.get("model") if isinstance(self.json, dict) else None
        return value if isinstance(value, str) else None

    def to_log(self) -> dict[str, Any]:
        """This record as `GET /_log` shows it (no body over `LOG_BODY_LIMIT`)."""
        small = len(self.body) <= LOG_BODY_LIMIT
        return {
            "path": self.path,
            "method": self.method,
            "headers": self.headers,
            "body": self.body.decode("utf-8", "replace") if small else None,
            "json": self.json if small else None,
            "received_at": self.received_at,
            "disconnected_at": self.disconnected_at,
            "completed": self.completed,
        }


class FakeProvider:
    """The fake provider ASGI app. Tests set `script` and read `requests`."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script if script is not None else Script()
        self.requests: list[RecordedRequest] = []
        self._seen: dict[str, int] = {}
        self._ids = itertools.count(1)

    def reset(self) -> None:
        """Forget recorded requests and `-then-200` counters; the script is left as it is."""
        self.requests.clear()
        self._seen.clear()

    def count(self, path: str | None = None) -> int:
        """How many API requests arrived (on `path`, when given)."""
        return sum(1 for r in self.requests if path is None or r.path == path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer lifespan and HTTP scopes; other scope types are ignored."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        body, disconnected = await _read_body(receive)
        if path in ("/_log", "/_reset"):
            await self._control(path, method, send)
            return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        rec = RecordedRequest(path, method, headers, body, _parse_json(body), time.monotonic())
        self.requests.append(rec)
        if disconnected:
            rec.disconnected_at = rec.received_at
            return
        await _until_disconnect(self._answer(rec, send), receive, rec)

    async def _control(self, path: str, method: str, send: Send) -> None:
        if (path, method) == ("/_log", "GET"):
            await _send_json(send, 200, [r.to_log() for r in self.requests])
        elif (path, method) == ("/_reset", "POST"):
            self.reset()
            await _send_json(send, 200, {"ok": True})
        else:
            await _send_json(send, 405, error_body(405, "Method not allowed."))

    async def _answer(self, rec: RecordedRequest, send: Send) -> None:
        if (rec.path, rec.method) == ("/v1/models", "GET"):
            data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "sluice-demo"} for m in DEMO_MODELS]
            await _send_json(send, 200, {"object": "list", "data": data})
        elif rec.path not in _API_PATHS or rec.method != "POST":
            await _send_json(send, 404, error_body(404, f"Unknown request URL: {rec.method} {rec.path}."))
        elif not isinstance(rec.json, dict):
            await _send_json(send, 400, error_body(400, "The request body is not a JSON object."))
        else:
            # A queued step wins; only then the model name (and its `-then-200` counter) is looked at.
            step = self.script.next_step() or directive_step(rec.model or "", self._seen, rec.json)
            step = step or self.script.default
            await _pause(step.first_byte_delay_s)
            await self._reply(rec, rec.json, step, send)
        rec.completed = True

    @staticmethod
    def _body(path: str, req: dict[str, Any], step: Step, n: int) -> bytes:
        if path == COUNT_TOKENS_PATH:
            return json.dumps({"input_tokens": count_tokens(req)}).encode()
        if path == MESSAGES_PATH:  # Anthropic's own API, in its own shapes
            return anthropic_error_json(step) if step.status >= 400 else json.dumps(message_json(req, step, n)).encode()
        payload = step.error_json() if step.status >= 400 else answer_json(path, req, step, n)
        return json.dumps(payload).encode()

    async def _reply(self, rec: RecordedRequest, req: dict[str, Any], step: Step, send: Send) -> None:
        n = next(self._ids)
        headers = [(b"x-request-id", f"req_{n}".encode())]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in step.headers.items()]
        prefix = 0
        if 300 <= step.status < 400:
            headers += [(b"location", (step.location or METADATA_URL).encode()), (b"content-length", b"0")]
            pieces: list[bytes] = []
        elif step.status < 300 and req.get("stream") is True and rec.path in _STREAM_PATHS:
            headers += [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
            events = message_events if rec.path == MESSAGES_PATH else functools.partial(stream_events, rec.path)
            pieces, prefix = events(req, step, n)
        else:
            body = self._body(rec.path, req, step, n)
            if step.invalid_json and step.status < 300:
                body = body[: len(body) // 2]  # a truncated object is never valid JSON
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            pieces = _slices(body, step.chunks)
        await send({"type": "http.response.start", "status": step.status, "headers": headers})
        await _pause(step.headers_then_delay_s)
        await _send_pieces(send, pieces, prefix, step)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole request body, and whether the client went away while sending it."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return bytes(body), True
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body), False


def _parse_json(body: bytes) -> Any | None:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


async def _until_disconnect(work: Awaitable[None], receive: Receive, rec: RecordedRequest) -> None:
    """Run `work` while watching for `http.disconnect`; a client that goes away cancels it."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_watch(receive, rec))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        watcher.cancel()
        await asyncio.wait((task, watcher))
    if not watcher.cancelled():
        watcher.exception()  # mark it retrieved; a failing receive() only ends the watch
    if not task.cancelled():
        task.result()  # re-raises CutConnection, so the server drops the connection


async def _watch(receive: Receive, rec: RecordedRequest) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    # Servers also report a disconnect once the response is complete; that one is no news.
    if not rec.completed:
        rec.disconnected_at = time.monotonic()


async def _pause(seconds: float) -> None:
    if math.isinf(seconds):
        await asyncio.Event().wait()  # until cancelled by the client going away
    elif seconds > 0:
        await asyncio.sleep(seconds)


async def _send_pieces(send: Send, pieces: list[bytes], prefix: int, step: Step) -> None:
    """Send the body pieces; `prefix` pieces come before the first content chunk."""
    stall_at = prefix + step.stall_after if step.stall_after is not None else -1
    cut_at = prefix + step.cut_after if step.cut_after is not None else -1
    for i in range(len(pieces) + 1):
        if i == cut_at:
            raise CutConnection(f"cut after {step.cut_after} chunks")
        if i == stall_at:
            await _pause(math.inf)
        if i == len(pieces):
            break
        if i > 0:
            await _pause(step.chunk_gap_s)
        await send({"type": "http.response.body", "body": pieces[i], "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_json(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _slices(body: bytes, n: int) -> list[bytes]:
    """`body` in `n` writes, so `stall_after` and `cut_after` also work on a JSON answer."""
    size = -(-len(body) // max(1, n))
    return [body[i : i + size] for i in range(0, len(body), size)] if body else []
