"""Relaying one upstream answer to the client: start held until the first body byte, then bytes as they come.

Also what a try's `AttemptRecord` says about it (status, first byte, outcome,
`possibly_billed`), since only the relay sees each of those moments.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp

from middleware.call import AttemptRecord, Call, Target
from middleware.errors import SluiceError, UpstreamError, sse_error_event
from middleware.headers import with_header
from middleware.types import Headers, Receive, Send
from proxy import stream_options
from proxy.upstream_headers import response_headers
from proxy.usage import StreamUsage

# Answers after which the provider may already have done (and charged for) the work:
# a 500 mid-generation, or a gateway in front of it timing out (502/504). 503/529 and
# 4xx are refusals before any work.
POSSIBLY_BILLED_STATUSES = frozenset({500, 502, 504})


class Relay:
    """One try's relay: the start is held until the first body byte, then bytes stream through."""

    def __init__(
        self,
        send: Send,
        call: Call,
        target: Target,
        scrub: Callable[[bytes], bytes],
        record: AttemptRecord,
        *,
        hold_options_refusal: bool = False,
        strip_usage: bool = False,
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
        self.strip_usage = strip_usage  # the gateway asked for usage: remove the extra event

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
        if self.is_sse:
            await self._relay_stream(content, chunk, reschedule)
            return
        while not content.is_eof():
            await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
            reschedule()
            chunk = await content.readany()
        # Finished before the last send: the upstream is fully read, and a
        # disconnect reported from here on is the server's end-of-response one.
        self.finished = True
        await self.send({"type": "http.response.body", "body": chunk, "more_body": False})

    async def _relay_stream(self, content: aiohttp.StreamReader, chunk: bytes, reschedule: Callable[[], None]) -> None:
        """An SSE stream: the same relay, with its usage read (and removed, when the gateway asked for it)."""
        usage = StreamUsage(strip=self.strip_usage)
        while not content.is_eof():
            out = usage.feed(chunk)
            if out:  # an empty chunk in a chunked response would end it
                await self.send({"type": "http.response.body", "body": out, "more_body": True})
            reschedule()
            chunk = await content.readany()
        out = usage.feed(chunk) + usage.finish()
        self.call.usage = usage.usage
        self.finished = True
        await self.send({"type": "http.response.body", "body": out, "more_body": False})

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


async def cancel_on_disconnect(receive: Receive, relay: Relay, task: asyncio.Task[object]) -> None:
    """Cancel `task` when the client leaves before the answer is complete."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # A server also reports "disconnect" once the response is complete:
            # only a client leaving before that cancels the exchange.
            if not relay.finished:
                relay.call.client_gone = True
                task.cancel()
            return
