"""Graceful shutdown (SPEC §11, RELIABILITY.md 29): calls in flight drain up to `[server].drain_s`.

On SIGINT or SIGTERM uvicorn closes its listening socket at once, then waits for the
requests in flight. `Drain` is the gateway's side of that wait:

- it notes each HTTP request in flight: its task goes into a set and out again, and that is
  all it adds to the hot path;
- the signal starts a deadline `drain_s` away; requests that end before it are untouched;
- at the deadline each request still running is cancelled and ended on purpose. A stream
  whose headers went out gets a last SSE error event (OpenAI's `data: {"error": ...}`, or
  Anthropic's `event: error` on /v1/messages) and then ends cleanly. A request not yet
  answered gets a 503 in its API's error shape. A non-stream body already under way cannot
  carry an error, so it is closed;
- uvicorn's own graceful timeout is set past the deadline (`graceful_timeout_s`), so the
  gateway decides how each call ends, not uvicorn's blanket cancel. Then the lifespan
  closes, and that flushes the ledger.

`GracefulServer` lets `sluice serve` exit 0 after such a shutdown. Plain uvicorn re-raises
the signal, so the process would die by it (-15).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.server import HANDLED_SIGNALS

from middleware.boundary import MESSAGES_PATH
from middleware.call import Call
from middleware.errors import SluiceError, sse_error_event
from middleware.types import ASGIApp, Message, Receive, Scope, Send
from proxy.anthropic import errors as anthropic_errors

logger = logging.getLogger("sluice")

SHUTTING_DOWN = "the gateway is shutting down"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# After the drain deadline, uvicorn waits this much longer: cut streams write their last event
# and their connections close. Its own cancel only catches a request that ignored the cut.
GRACE_AFTER_DRAIN_S = 5

SignalHandler = Callable[[int, FrameType | None], Any]


def _uvicorn_version() -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", uvicorn.__version__)[:2])


# uvicorn 0.43 and 0.44 answer every receive() of an unfinished response with `http.disconnect`
# as soon as shutdown begins (Kludex/uvicorn#2829, reverted in 0.45 by #2913). Passed on, that
# would end every stream at the first signal, so on those versions a `Drain` holds it back.
DISCONNECTS_AT_SHUTDOWN = (0, 43) <= _uvicorn_version() < (0, 45)


class ShuttingDown(SluiceError):
    """503: the gateway is shutting down and the call did not finish within the drain deadline."""

    status = 503
    type = "server_error"
    code = "shutting_down"


def graceful_timeout_s(drain_s: float) -> int:
    """uvicorn's `timeout_graceful_shutdown` for a drain of `drain_s` seconds: later, so the drain decides."""
    return math.ceil(drain_s) + GRACE_AFTER_DRAIN_S


class Drain:
    """Tracks HTTP requests in flight; once draining, ends those still running at the deadline.

    Sits inside LedgerMiddleware, so a call that was cut is still recorded, with
    `call.error` saying why. It also sits inside ErrorMiddleware, which turns `ShuttingDown`
    into a 503 in the API's shape. With `on_signals`, SIGINT and SIGTERM start the drain
    (`begin`). The handlers are chained in front of the server's own at lifespan start-up
    and put back at lifespan shutdown.

    Unlike a per-request middleware, a Drain keeps process-lifetime state: the set of
    requests in flight, and whether the drain began or expired.
    """

    def __init__(
        self,
        app: ASGIApp,
        drain_s: float,
        *,
        on_signals: bool = False,
        hold_disconnects: bool = DISCONNECTS_AT_SHUTDOWN,
    ) -> None:
        self.app = app
        self.drain_s = drain_s
        self.on_signals = on_signals
        self.hold_disconnects = hold_disconnects
        self.draining = False
        self.expired = False
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._chained: dict[int, tuple[SignalHandler, SignalHandler]] = {}  # signal -> (the server's, ours)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.on_signals:
            await self.app(scope, self._receive_watching_signals(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.expired:
            raise ShuttingDown(SHUTTING_DOWN)  # came in after the deadline, on a connection still open
        task = asyncio.current_task()
        assert task is not None
        if self.hold_disconnects:
            receive = self._receive_held_while_draining(receive)
        self._in_flight.add(task)
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not self.expired:
                raise  # not the deadline's cancellation: the server's own, or a test's
            task.uncancel()
            await _cut_short(scope, send)
        finally:
            self._in_flight.discard(task)

    def begin(self) -> None:
        """Start the drain: the requests in flight have `drain_s` seconds to end, then are cut short."""
        if self.draining:
            return
        self.draining = True
        logger.info("shutting down: %d requests in flight, %g s to finish", len(self._in_flight), self.drain_s)
        self._timer = asyncio.get_running_loop().call_later(self.drain_s, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self._in_flight:
            logger.warning("drain deadline: %d requests still in flight are cut short", len(self._in_flight))
        for task in tuple(self._in_flight):
            task.cancel()

    def _receive_held_while_draining(self, receive: Receive) -> Receive:
        async def receive_held_while_draining() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and self.draining and not self.expired:
                # Maybe the server's shutdown speaking (DISCONNECTS_AT_SHUTDOWN), not the client:
                # held, never returned, so the call runs on. The deadline's cancel ends the wait.
                await asyncio.get_running_loop().create_future()
            return message

        return receive_held_while_draining

    def _receive_watching_signals(self, receive: Receive) -> Receive:
        async def receive_watching_signals() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._chain_signal_handlers()
            elif message["type"] == "lifespan.shutdown":
                self._unchain_signal_handlers()
                if self._timer is not None:
                    self._timer.cancel()
            return message

        return receive_watching_signals

    def _chain_signal_handlers(self) -> None:
        # uvicorn sets its handlers (signal.signal, in the main thread) before the lifespan
        # starts, in `serve --workers N` worker processes too. Only a callable handler, i.e.
        # a server that shuts down gracefully, gets a drain in front of it.
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be set from the main thread (a test's server in a thread)
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            server_handler = signal.getsignal(sig)
            if callable(server_handler):
                ours = functools.partial(self._on_signal, loop, server_handler)
                signal.signal(sig, ours)
                self._chained[sig] = (server_handler, ours)

    def _unchain_signal_handlers(self) -> None:
        for sig, (server_handler, ours) in self._chained.items():
            if signal.getsignal(sig) is ours:  # one set since then stays
                signal.signal(sig, server_handler)
        self._chained.clear()

    def _on_signal(
        self, loop: asyncio.AbstractEventLoop, server_handler: SignalHandler, sig: int, frame: FrameType | None
    ) -> None:
        # A Python signal handler runs between two bytecodes of whatever the main thread was
        # doing: the drain starts from the loop, as its next callback.
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing is left in flight
            loop.call_soon_threadsafe(self.begin)
        server_handler(sig, frame)


async def _cut_short(scope: Scope, send: Send) -> None:
    """End a request the deadline cancelled, in the way its client can still be told."""
    call = Call.of(scope)
    if any(t.outcome == "ok" for t in call.tries):
        return  # answered in full: only its after-work (a cache store, a health record) was cut
    call.error = SHUTTING_DOWN
    if call.status is None:
        raise ShuttingDown(SHUTTING_DOWN)  # nothing went out: ErrorMiddleware answers 503
    if call.status >= 300 or not _asked_for_stream(call):
        return  # a JSON body under way cannot carry an error; the server closes the connection
    error = ShuttingDown(SHUTTING_DOWN)
    if scope["path"].startswith(MESSAGES_PATH):
        event = anthropic_errors.sse_error_event(error.status, error.message)
    else:
        event = sse_error_event(error)
    await send({"type": "http.response.body", "body": event, "more_body": False})


def _asked_for_stream(call: Call) -> bool:
    """Whether the body said `"stream": true`: a 200 to it is SSE, which can end with an error event."""
    try:
        return call.json().get("stream") is True
    except SluiceError:  # no JSON body: not a call that streams
        return False


class GracefulServer(uvicorn.Server):
    """uvicorn's server; after a shutdown by SIGINT or SIGTERM, `run()` returns and the exit code is 0.

    uvicorn re-raises the signal that stopped it through the handlers it found when
    it started, so that the process dies by it (-15 for SIGTERM) even after a clean
    drain. Here the handlers it finds are its own `handle_exit`, so the re-raise only
    marks a shutdown that is already done. A signal that arrives before it starts
    serving still stops the start.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's signal capture, with the signal that stopped the server absorbed at the end."""
        if threading.current_thread() is not threading.main_thread():
            with super().capture_signals():
                yield
            return
        found = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            with super().capture_signals():
                yield
        finally:
            for sig, handler in found.items():
                signal.signal(sig, handler)
