"""The pass-through ASGI app: one upstream request per call, bytes relayed as they arrive (DESIGN "The forwarder").

Two requests only when a provider refuses `stream_options`: see `proxy.stream_options`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import aiohttp
from yarl import URL

from middleware.call import AttemptRecord, Call, Target
from middleware.errors import (
    InvalidRequest,
    NotFound,
    SluiceError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
    sse_error_event,
)
from middleware.headers import with_header
from middleware.types import Headers, Receive, Scope, Send
from proxy import stream_options
from proxy.lifespan import Upstream
from proxy.upstream_headers import response_headers, upstream_headers

# Answers after which the provider may already have done (and charged for) the work:
# a 500 mid-generation, or a gateway in front of it timing out (502/504). 503/529 and
# 4xx are refusals before any work.
POSSIBLY_BILLED_STATUSES = frozenset({500, 502, 504})


@dataclass(frozen=True, slots=True)
class ForwarderOptions:
    """Deadlines (SPEC §2 [timeouts]) and the body cap.

    `first_byte_s` runs from sending the request to the first body byte (not
    just the headers), so a provider that answers 200 and then stalls is
    caught before anything reaches the client. `idle_s` is the longest gap
    between two chunks; `total_s` bounds the whole exchange.
    """

    connect_s: float = 5.0
    first_byte_s: float = 60.0
    idle_s: float = 60.0
    total_s: float = 600.0
    max_body_bytes: int = 10_485_760


class Forwarder:
    """Sends the call to `call.target` and relays the answer; innermost layer of the stack."""

    def __init__(
        self,
        upstream: Upstream | None = None,
        options: ForwarderOptions | None = None,
        scrub: Callable[[bytes], bytes] = bytes,
    ) -> None:
        self.upstream = upstream or Upstream()
        self.options = options or ForwarderOptions()
        self.scrub = scrub
        self._client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.options.connect_s)
        # Providers that answered 400 naming `stream_options`. Per process, on purpose: it
        # is a cheap fact to relearn (one extra try per provider), so it is not shared
        # between replicas or kept across restarts.
        self.rejects_stream_options: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        call = Call.of(scope)
        target = call.target
        if target is None:
            raise NotFound("no target was chosen for this call")
        body = await call.read_body(scope, receive, self.options.max_body_bytes)
        rejecting = self.rejects_stream_options
        options_sent = stream_options.sent(call.json(), target, rejecting)
        payload = upstream_body(call, target, body, rejecting)
        if await self._try(scope, receive, send, payload, options_sent=options_sent) and not call.client_gone:
            # Learned once per provider, so its later calls skip the failing try; the
            # retry is a try of its own (X-Sluice-Attempts: 2) and is never retried again.
            rejecting.add(target.provider)
            payload = upstream_body(call, target, body, rejecting)
            await self._try(scope, receive, send, payload, options_sent=False)

    async def _try(self, scope: Scope, receive: Receive, send: Send, payload: bytes, *, options_sent: bool) -> bool:
        """One upstream try, with its own record, in the call's deadline; True when it refused `stream_options`."""
        call = Call.of(scope)
        target = call.target
        assert target is not None
        url = upstream_url(scope, target)
        headers = upstream_headers(scope, call, target)
        now = asyncio.get_running_loop().time()
        if call.deadline is None:
            # The first attempt starts the call's clock: every later attempt fits in the same total_s.
            call.deadline = now + self.options.total_s
        elif call.deadline <= now:
            raise UpstreamTimeout(f"the call's {self.options.total_s:g} s deadline passed before trying {target.name}")
        record = AttemptRecord(target.name, target.provider, target.model, time.perf_counter() - call.started_at)
        call.tries.append(record)
        call.last_try = record
        task = asyncio.current_task()
        assert task is not None
        relay = _Relay(send, call, target, self.scrub, record, hold_options_refusal=options_sent)
        watcher = asyncio.create_task(_cancel_on_disconnect(receive, relay, task))
        try:
            await self._exchange(scope["method"], url, headers, payload, relay, call.deadline)
        except asyncio.CancelledError:
            relay.settle("cancelled", billed=True)
            if not call.client_gone:
                raise
            # Our own cancellation: the client left, the upstream response is closed.
            task.uncancel()
        except BaseException:
            relay.settle("failed", billed=False)  # a redirect refused, or the client's socket failing
            raise
        else:
            relay.settle("ok", billed=False)
        finally:
            watcher.cancel()
        return relay.options_refused

    async def _exchange(
        self,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        payload: bytes,
        relay: _Relay,
        end: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        opts = self.options
        target = relay.target
        try:
            async with asyncio.timeout_at(min(end, loop.time() + opts.first_byte_s)) as deadline:
                response = await self.upstream.session().request(
                    method, url, data=payload, headers=headers, allow_redirects=False, timeout=self._client_timeout
                )
                try:
                    await relay.run(response, lambda: deadline.reschedule(min(end, loop.time() + opts.idle_s)))
                finally:
                    # release() keeps a finished connection for reuse; close() drops
                    # one we stopped reading (disconnect, timeout), so the provider sees it end.
                    if relay.finished:
                        response.release()
                    else:
                        response.close()
        except TimeoutError:
            await relay.fail(UpstreamTimeout(f"{target.name} did not answer in time ({relay.stage()})"))
        except aiohttp.ClientConnectorError as exc:
            # Never connected, so never sent: nothing can have been billed.
            error = UpstreamConnectError(f"{target.name}: connection failed ({type(exc).__name__})")
            await relay.fail(error, sent=False)
        except (aiohttp.ClientError, OSError) as exc:
            # The type name only: aiohttp's message carries the URL, and a URL may carry a secret.
            await relay.fail(UpstreamConnectError(f"{target.name}: connection failed ({type(exc).__name__})"))


class _Relay:
    """Per-call relay state: the start is held until the first body byte, then bytes stream through."""

    def __init__(
        self,
        send: Send,
        call: Call,
        target: Target,
        scrub: Callable[[bytes], bytes],
        record: AttemptRecord,
        *,
        hold_options_refusal: bool = False,
    ) -> None:
        self.send = send
        self.scrub = scrub
        self.call = call
        self.target = target
        self.record = record
        self.started = False
        self.finished = False
        self.is_sse = False
        self.hold_options_refusal = hold_options_refusal  # the body sent carries `stream_options`
        self.options_refused = False  # held back, for the forwarder to retry without the field

    def settle(self, outcome: str, *, billed: bool) -> None:
        """Close the attempt's record, once: the first outcome reported is the one kept."""
        record = self.record
        if record.outcome != "pending":
            return
        record.outcome = outcome
        record.duration_s = time.perf_counter() - self.call.started_at - record.started_s
        record.possibly_billed = billed

    def stage(self) -> str:
        return "between chunks" if self.started else "before the first byte"

    async def run(self, response: aiohttp.ClientResponse, reschedule: Callable[[], None]) -> None:
        if 300 <= response.status < 400:
            raise UpstreamError(f"{self.target.name} answered with a redirect ({response.status}); it was not followed")
        self.record.status = response.status
        headers = response_headers(response.raw_headers, self.call, self.target)
        if response.status >= 400:
            await self._relay_error(response, headers)
            return
        self.is_sse = (response.content_type or "") == "text/event-stream"
        content = response.content
        chunk = await content.readany()
        self.record.first_byte_s = time.perf_counter() - self.call.started_at - self.record.started_s
        await self.send({"type": "http.response.start", "status": response.status, "headers": headers})
        self.started = True
        while not content.is_eof():
            await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
            reschedule()
            chunk = await content.readany()
        # Finished before the last send: the upstream is fully read, and a
        # disconnect reported from here on is the server's end-of-response one.
        self.finished = True
        await self.send({"type": "http.response.body", "body": chunk, "more_body": False})

    async def _relay_error(self, response: aiohttp.ClientResponse, headers: Headers) -> None:
        # Error bodies are small and sometimes echo what was sent (a provider
        # quoting the key it refused): read whole, scrubbed of every secret.
        body = self.scrub(await response.read())
        self.settle("failed", billed=response.status in POSSIBLY_BILLED_STATUSES)
        self.record.error = f"{self.target.name} answered {response.status}"
        if self.hold_options_refusal and stream_options.refused(response.status, body):
            # Not relayed: the client gets the answer to the retry without the field.
            self.record.error += " refusing stream_options; retried without it"
            self.options_refused = True
            return
        headers = with_header(headers, b"content-length", str(len(body)).encode())
        await self.send({"type": "http.response.start", "status": response.status, "headers": headers})
        self.started = True
        self.finished = True
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def fail(self, error: SluiceError, *, sent: bool = True) -> None:
        """Before the start: raise, so an outer layer answers (or falls back). After: end the stream visibly."""
        self.call.error = self.record.error = error.message
        self.settle("failed", billed=sent)
        if not self.started:
            raise error
        if not self.is_sse:
            raise error  # a non-stream body cannot carry an error: the server drops the connection
        await self.send({"type": "http.response.body", "body": sse_error_event(error), "more_body": False})


async def _cancel_on_disconnect(receive: Receive, relay: _Relay, task: asyncio.Task[object]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # A server also reports "disconnect" once the response is complete:
            # only a client leaving before that cancels the exchange.
            if not relay.finished:
                relay.call.client_gone = True
                task.cancel()
            return


def upstream_url(scope: Scope, target: Target) -> URL:
    """The provider URL: the configured base URL plus the client's path after /v1, and its query.

    Only the config chooses the host; `.`/`..` segments are refused so a path
    cannot climb out of the provider's API prefix.
    """
    path: str = scope["path"]
    if "/." in path:
        segments = path.split("/")
        if "." in segments or ".." in segments:
            raise NotFound(f"path '{path}' is not a valid API path")
    raw_path: bytes = scope.get("raw_path") or path.encode()
    tail = raw_path[3:] if raw_path.startswith(b"/v1/") else raw_path
    query: bytes = scope.get("query_string", b"")
    text = target.base_url + tail.decode("latin-1")
    if query:
        text += "?" + query.decode("latin-1")
    return URL(text, encoded=True)


# Built once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def upstream_body(call: Call, target: Target, body: bytes, rejecting: Collection[str] = frozenset()) -> bytes:
    """The body with `model` set to the provider's own id, without `stream_options` where the provider must not get it.

    `rejecting` names the providers learned to refuse the field (see `proxy.stream_options`).
    When nothing changes, the client's bytes are returned as they are.
    """
    data = call.json()
    drop = stream_options.FIELD in data and stream_options.withheld(target, rejecting)
    if data.get("model") == target.model and not drop:
        return body
    data = {**data, "model": target.model}
    if drop:
        del data[stream_options.FIELD]
    try:
        return _ENCODER.encode(data).encode()
    except RecursionError:
        raise InvalidRequest("the JSON body is nested too deeply") from None
