"""proxy.shutdown: the drain of calls in flight, driven through raw ASGI with a recording `send`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import pytest

from middleware.boundary import ErrorMiddleware
from middleware.call import Call
from middleware.types import Message, Receive, Scope, Send
from proxy.anthropic.errors import sse_error_event as anthropic_sse_error_event
from proxy.shutdown import GRACE_AFTER_DRAIN_S, SHUTTING_DOWN, Drain, ShuttingDown, graceful_timeout_s

pytestmark = pytest.mark.anyio

STREAM_BODY = json.dumps({"model": "fake/echo", "stream": True}).encode()
FIRST_EVENT = b'data: {"choices": []}\n\n'


def http_scope(path: str = "/v1/chat/completions") -> Scope:
    return {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "headers": []}


async def never_disconnects() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def disconnects_at_once() -> Message:
    return {"type": "http.disconnect"}


async def endless_stream(scope: Scope, receive: Receive, send: Send) -> None:
    """A stream that outlasts any deadline (as the routing layer would, the body is already read)."""
    Call.of(scope).body = STREAM_BODY
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": FIRST_EVENT, "more_body": True})
    await asyncio.Event().wait()


async def never_answers(scope: Scope, receive: Receive, send: Send) -> None:
    await asyncio.Event().wait()


class Recorder:
    """A `send` that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    def status(self) -> int:
        return int(self.messages[0]["status"])

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")


async def run_until_cut(drain: Drain, scope: Scope, receive: Receive = never_disconnects) -> Recorder:
    """Serve one request through the error boundary and the drain; begin the drain once it is running."""
    sent = Recorder()
    task = asyncio.create_task(ErrorMiddleware(drain)(scope, receive, sent))
    await asyncio.sleep(0.01)
    drain.begin()
    await asyncio.wait_for(task, 2)
    return sent


async def test_a_request_that_ends_inside_the_drain_is_untouched():
    async def slow_answer(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    drain = Drain(slow_answer, 0.5)
    sent = await run_until_cut(drain, http_scope())
    assert (sent.status(), sent.body()) == (200, b"{}")
    assert not drain.expired


async def test_a_stream_running_at_the_deadline_ends_with_an_error_event():
    drain = Drain(endless_stream, 0.05)
    started = time.monotonic()
    scope = http_scope()
    sent = await run_until_cut(drain, scope)
    assert 0.05 <= time.monotonic() - started < 1
    assert sent.status() == 200
    last = sent.messages[-1]
    assert last["more_body"] is False  # ended cleanly, not reset
    assert sent.body() == FIRST_EVENT + b"data: " + json.dumps(_openai_error()).encode() + b"\n\n"
    assert Call.of(scope).error == SHUTTING_DOWN  # what the ledger records for the call


async def test_a_messages_stream_gets_anthropics_error_event():
    sent = await run_until_cut(Drain(endless_stream, 0.05), http_scope("/v1/messages"))
    assert sent.body() == FIRST_EVENT + anthropic_sse_error_event(503, SHUTTING_DOWN)
    assert b'"type":"overloaded_error"' in sent.body()


async def test_a_request_not_answered_by_the_deadline_gets_503_in_its_apis_shape():
    sent = await run_until_cut(Drain(never_answers, 0.05), http_scope())
    assert sent.status() == 503
    assert json.loads(sent.body()) == _openai_error()
    sent = await run_until_cut(Drain(never_answers, 0.05), http_scope("/v1/messages"))
    assert sent.status() == 503
    assert json.loads(sent.body()) == {"type": "error", "error": {"type": "overloaded_error", "message": SHUTTING_DOWN}}


async def test_a_json_body_under_way_is_left_unfinished_for_the_server_to_close():
    async def half_a_body(scope: Scope, receive: Receive, send: Send) -> None:
        Call.of(scope).body = b'{"model": "fake/echo"}'
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"id": ', "more_body": True})
        await asyncio.Event().wait()

    sent = await run_until_cut(Drain(half_a_body, 0.05), http_scope())
    assert sent.body() == b'{"id": '  # no error text glued onto JSON
    assert sent.messages[-1]["more_body"] is True


async def test_a_request_after_the_deadline_is_refused_with_503():
    drain = Drain(endless_stream, 0.01)
    await run_until_cut(drain, http_scope())
    assert drain.expired
    sent = Recorder()
    await ErrorMiddleware(drain)(http_scope(), never_disconnects, sent)
    assert sent.status() == ShuttingDown.status == 503


async def test_a_disconnect_during_the_drain_is_held_when_the_server_may_fake_one():
    seen: list[Message] = []

    async def watches_for_disconnect(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())

    sent = Recorder()
    await Drain(watches_for_disconnect, 0.05, hold_disconnects=True)(http_scope(), disconnects_at_once, sent)
    assert seen == [{"type": "http.disconnect"}]  # before a drain, a disconnect is news at once
    seen.clear()
    sent = await run_until_cut(Drain(watches_for_disconnect, 0.05, hold_disconnects=True), http_scope())
    assert seen == []  # held until the deadline cut the call
    assert sent.status() == 503


async def test_sigterm_starts_the_drain_and_still_reaches_the_servers_handler():
    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    events: asyncio.Queue[Message] = asyncio.Queue()
    replies: asyncio.Queue[Message] = asyncio.Queue()
    server_saw: list[int] = []

    def server_handler(sig: int, frame: Any) -> None:
        server_saw.append(sig)

    drain = Drain(lifespan_app, 5, on_signals=True)
    previous = signal.signal(signal.SIGTERM, server_handler)
    try:
        lifespan = asyncio.create_task(drain({"type": "lifespan"}, events.get, replies.put))
        await events.put({"type": "lifespan.startup"})
        assert (await replies.get())["type"] == "lifespan.startup.complete"
        assert signal.getsignal(signal.SIGTERM) is not server_handler  # the drain is chained in front
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):
            if drain.draining:
                break
            await asyncio.sleep(0.001)
        assert drain.draining
        assert server_saw == [signal.SIGTERM]
        await events.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 1)
        assert signal.getsignal(signal.SIGTERM) is server_handler  # put back at lifespan shutdown
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_uvicorn_waits_past_the_drain_deadline():
    assert graceful_timeout_s(20) == 20 + GRACE_AFTER_DRAIN_S
    assert graceful_timeout_s(0.2) >= 0.2 + GRACE_AFTER_DRAIN_S


def _openai_error() -> dict[str, Any]:
    return {"error": {"message": SHUTTING_DOWN, "type": "server_error", "code": "shutting_down", "param": None}}
