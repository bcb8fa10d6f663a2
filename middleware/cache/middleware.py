"""CacheMiddleware: the opt-in response cache (SPEC §7), a pure ASGI middleware usable in any app."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from middleware.auth import anonymous_tenant
from middleware.body import replay
from middleware.cache.completeness import usage_requested
from middleware.cache.entry import Entry, decode, encode
from middleware.cache.key import cache_key
from middleware.cache.policy import OFF, ON, CacheRequest, cache_request
from middleware.cache.recorder import Recorder
from middleware.call import Call
from middleware.headers import SLUICE_ATTEMPTS, SLUICE_CACHE, SLUICE_MODEL, SLUICE_PROVIDER, bearer_or_api_key
from middleware.stores.base import CacheStore
from middleware.stores.memory import MemoryCacheStore
from middleware.types import ASGIApp, Message, Receive, Scope, Send

HIT, MISS, REFRESH, BYPASS = "HIT", "MISS", "REFRESH", "BYPASS"


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """Options for CacheMiddleware. Defaults follow SPEC §2 [cache].

    `lock_wait_s` bounds how long identical concurrent misses wait for the one
    call in flight before going upstream themselves (uncached).
    """

    default_ttl_s: float = 3600.0
    max_ttl_s: float = 30 * 86400.0
    max_entry_bytes: int = 4 << 20
    max_body_bytes: int = 10 << 20
    lock_wait_s: float = 30.0
    clock: Callable[[], float] = time.time


class CacheMiddleware:
    """Looks up, stores and replays complete answers, for calls that ask with `X-Sluice-Cache`."""

    def __init__(self, app: ASGIApp, store: CacheStore | None = None, options: CacheOptions | None = None) -> None:
        self.app = app
        self.options = options or CacheOptions()
        # `is None`, not `or`: an empty store has len() 0 and is falsy.
        self.store = store if store is not None else MemoryCacheStore(max_entry_bytes=self.options.max_entry_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        call = Call.of(scope)
        asked = cache_request(scope, self.options.default_ttl_s, self.options.max_ttl_s)
        if asked.mode == OFF:
            # Left to ErrorMiddleware (or absent, used alone): no wrapper on the uncached hot path.
            call.cache_status = BYPASS
            await self.app(scope, receive, send)
            return
        send = _stamping(send, call)
        body = await call.read_body(scope, receive, self.options.max_body_bytes)
        if call.tenant is None:
            call.tenant = anonymous_tenant(bearer_or_api_key(scope))
        key = cache_key(call, scope["method"], scope["path"])
        receive = replay(body, receive)
        if asked.mode == ON:
            await self._lookup_or_fetch(key, asked, call, scope, receive, send)
        else:
            call.cache_status = REFRESH if self.store.state() != "down" else BYPASS
            await self._fetch_and_store(key, asked, call, scope, receive, send)

    async def _lookup_or_fetch(
        self, key: bytes, asked: CacheRequest, call: Call, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if await self._serve_hit(key, call, send):
            return
        if self.store.state() == "down":
            # The lookup failed (or the store's breaker is open): serve uncached,
            # at once; the store decides by itself when to try Redis again.
            call.cache_status = BYPASS
            await self.app(scope, receive, send)
            return
        async with self.store.single_flight(key, self.options.lock_wait_s) as leader:
            if leader:
                call.cache_status = MISS if self.store.state() != "down" else BYPASS
                await self._fetch_and_store(key, asked, call, scope, receive, send)
                return
        # A follower: the leader has finished (or the wait ran out). Its answer,
        # if it could be stored, is a hit; otherwise go upstream, uncached.
        if await self._serve_hit(key, call, send):
            return
        call.cache_status = MISS
        await self.app(scope, receive, send)

    async def _serve_hit(self, key: bytes, call: Call, send: Send) -> bool:
        data = await self.store.get(key)
        entry = decode(data) if data is not None else None
        if entry is None or entry.tenant != call.tenant:
            return False
        call.cache_status = HIT
        call.usage = entry.usage
        age = max(0, int(self.options.clock() - entry.stored_at))
        headers = [
            (b"content-type", entry.content_type.encode("latin-1")),
            (b"content-length", str(len(entry.body)).encode()),
            (b"age", str(age).encode()),
            (SLUICE_PROVIDER, entry.provider.encode()),
            (SLUICE_MODEL, entry.model.encode()),
            (SLUICE_ATTEMPTS, b"0"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": entry.body, "more_body": False})
        return True

    async def _fetch_and_store(
        self, key: bytes, asked: CacheRequest, call: Call, scope: Scope, receive: Receive, send: Send
    ) -> None:
        recorder = Recorder(send, self.options.max_entry_bytes)
        await self.app(scope, receive, recorder.send)
        messages = scope["path"].startswith("/v1/messages")
        if not recorder.storable(call, usage_expected=usage_requested(call.json()), messages=messages):
            return
        target = call.target
        entry = Entry(
            tenant=call.tenant or "anon",
            provider=target.provider if target else "",
            model=target.model if target else "",
            content_type=recorder.content_type,
            stored_at=self.options.clock(),
            body=recorder.body,
            usage=call.usage,
        )
        await self.store.set(key, encode(entry), asked.ttl_s)


def _stamping(send: Send, call: Call) -> Send:
    """`send`, with X-Sluice-Cache set from the call's cache status on the response start."""

    async def send_with_cache_status(message: Message) -> None:
        if message["type"] == "http.response.start":
            call.cache_header_sent = True
            headers = [*message.get("headers", ()), (SLUICE_CACHE, call.cache_status.encode())]
            message = {**message, "headers": headers}
        await send(message)

    return send_with_cache_status
