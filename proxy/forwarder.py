"""The pass-through ASGI app: one upstream request per call, bytes relayed as they arrive (DESIGN "The forwarder").

Two requests only when a provider refuses `stream_options`: see `proxy.stream_options`.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from middleware.call import AttemptRecord, Call
from middleware.errors import NotFound, UpstreamConnectError, UpstreamTimeout
from middleware.types import Receive, Scope, Send
from proxy import stream_options
from proxy.lifespan import Upstream
from proxy.relay import Relay, cancel_on_disconnect
from proxy.upstream_headers import upstream_headers
from proxy.upstream_request import upstream_body, upstream_url

LARGE_BODY_BYTES = 1024 * 1024  # aiohttp's own line (payload.TOO_LARGE_BYTES_BODY)


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
        data = call.json()
        path = scope["path"]
        options_sent = stream_options.sent(data, target, rejecting, path)
        strip = stream_options.injected(data, target, rejecting, path)
        payload = upstream_body(call, target, body, rejecting, path)
        if await self._try(scope, receive, send, payload, options_sent=options_sent, strip_usage=strip):
            # Learned once per provider, so its later calls skip the failing try; the
            # retry is a try of its own (X-Sluice-Attempts: 2) and is never retried again.
            rejecting.add(target.provider)
            payload = upstream_body(call, target, body, rejecting, path)
            await self._try(scope, receive, send, payload, options_sent=False, strip_usage=False)

    async def _try(
        self, scope: Scope, receive: Receive, send: Send, payload: bytes, *, options_sent: bool, strip_usage: bool
    ) -> bool:
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
        relay = Relay(
            send, call, target, self.scrub, record, hold_options_refusal=options_sent, strip_usage=strip_usage
        )
        watcher = asyncio.create_task(cancel_on_disconnect(receive, relay, task))
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
        relay: Relay,
        end: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        opts = self.options
        target = relay.target
        try:
            async with asyncio.timeout_at(min(end, loop.time() + opts.first_byte_s)) as deadline:
                # Over 1 MiB aiohttp writes raw bytes in one go (and warns); a BytesIO goes out in chunks.
                data = io.BytesIO(payload) if len(payload) > LARGE_BODY_BYTES else payload
                response = await self.upstream.session().request(
                    method, url, data=data, headers=headers, allow_redirects=False, timeout=self._client_timeout
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
