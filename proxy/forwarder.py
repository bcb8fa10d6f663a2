"""The pass-through ASGI app: one upstream request per call, bytes relayed as they arrive (DESIGN "The forwarder")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from middleware.call import Call, Target
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
from proxy.lifespan import Upstream
from proxy.upstream_headers import response_headers, upstream_headers


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        call = Call.of(scope)
        target = call.target
        if target is None:
            raise NotFound("no target was chosen for this call")
        body = await call.read_body(scope, receive, self.options.max_body_bytes)
        url = upstream_url(scope, target)
        payload = upstream_body(call, target, body)
        headers = upstream_headers(scope, call, target)
        call.attempts += 1
        task = asyncio.current_task()
        assert task is not None
        relay = _Relay(send, call, target, self.scrub)
        watcher = asyncio.create_task(_cancel_on_disconnect(receive, relay, task))
        try:
            await self._exchange(scope["method"], url, headers, payload, relay)
        except asyncio.CancelledError:
            if not call.client_gone:
                raise
            # Our own cancellation: the client left, the upstream response is closed.
            task.uncancel()
        finally:
            watcher.cancel()

    async def _exchange(
        self,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        payload: bytes,
        relay: _Relay,
    ) -> None:
        loop = asyncio.get_running_loop()
        opts = self.options
        end = loop.time() + opts.total_s
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
        except (aiohttp.ClientError, OSError) as exc:
            # The type name only: aiohttp's message carries the URL, and a URL may carry a secret.
            await relay.fail(UpstreamConnectError(f"{target.name}: connection failed ({type(exc).__name__})"))


class _Relay:
    """Per-call relay state: the start is held until the first body byte, then bytes stream through."""

    def __init__(self, send: Send, call: Call, target: Target, scrub: Callable[[bytes], bytes]) -> None:
        self.send = send
        self.scrub = scrub
        self.call = call
        self.target = target
        self.started = False
        self.finished = False
        self.is_sse = False

    def stage(self) -> str:
        return "between chunks" if self.started else "before the first byte"

    async def run(self, response: aiohttp.ClientResponse, reschedule: Callable[[], None]) -> None:
        if 300 <= response.status < 400:
            raise UpstreamError(f"{self.target.name} answered with a redirect ({response.status}); it was not followed")
        headers = response_headers(response.raw_headers, self.call, self.target)
        if response.status >= 400:
            await self._relay_error(response, headers)
            return
        self.is_sse = (response.content_type or "") == "text/event-stream"
        content = response.content
        chunk = await content.readany()
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
        headers = with_header(headers, b"content-length", str(len(body)).encode())
        await self.send({"type": "http.response.start", "status": response.status, "headers": headers})
        self.started = True
        self.finished = True
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def fail(self, error: SluiceError) -> None:
        """Before the start: raise, so an outer layer answers (or falls back). After: end the stream visibly."""
        self.call.error = error.message
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


def upstream_body(call: Call, target: Target, body: bytes) -> bytes:
    """The body with `model` set to the provider's own id; the client's bytes when it already is."""
    data = call.json()
    if data.get("model") == target.model:
        return body
    try:
        return _ENCODER.encode({**data, "model": target.model}).encode()
    except RecursionError:
        raise InvalidRequest("the JSON body is nested too deeply") from None
