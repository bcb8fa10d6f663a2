"""BackoffMiddleware: per attempt, keep away from targets that said "not now", and learn when they do (SPEC §8).

It sits between a strategy and the forwarder and sees one target at a time
(`call.target`):
- before: a cooling target, or one whose circuit is open, is refused at once
  (`RateLimited` / `TargetUnavailable`, no upstream traffic) while the strategy
  has alternatives; with none left (`call.alternatives == 0`) a short cooldown
  (≤ `max_wait_s`) is waited out once per call, and an open circuit is tried
  anyway (never every target ejected). A half-open circuit lets one probe through.
- after: a 429 cools the target down until its reset, shared through the
  `StateStore`; a short reset with no alternatives is waited out and retried
  once (within the retry budget and the call's deadline), else the 429 goes on
  to the strategy; quota-exhausted 429s never wait. Failures feed the circuit,
  a success closes it.
"""

from __future__ import annotations

import asyncio

from middleware.call import Call, Target
from middleware.errors import RateLimited, TargetUnavailable, UpstreamError
from middleware.health import Block, TargetHealth
from middleware.types import ASGIApp, Headers, Message, Receive, Scope, Send

TOO_MANY_REQUESTS = 429
# Statuses that say the target (not the request) is unwell: they feed its circuit.
CIRCUIT_STATUSES = frozenset({401, 403, 404, 408, *range(500, 600)})


class BackoffMiddleware:
    """Cooldowns, circuits and short in-place waits for the one target of each attempt."""

    def __init__(self, app: ASGIApp, health: TargetHealth | None = None) -> None:
        self.app = app
        self.health = health or TargetHealth()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = Call.of(scope)
        target = call.target
        if scope["type"] != "http" or target is None:
            await self.app(scope, receive, send)
            return
        health = self.health
        await health.load(call)
        block = health.block(call, target)
        if block is not None:
            await self._admit(call, target, block)
        held = _Held429(send)
        await self._try(scope, receive, held, call, target)
        if held.start is None:
            return
        cool, quota = await health.rate_limited(call, target, held.headers, held.body)
        if not quota and await self._may_wait(call, cool):
            with health.budget.retry() as allowed:
                if allowed:
                    # Waited out in place: the retry is a new try of the same target.
                    await asyncio.sleep(cool)
                    call.error = None
                    await self._try(scope, receive, _Held429(send, hold=False), call, target)
                    return
        await held.release()

    async def _try(self, scope: Scope, receive: Receive, held: _Held429, call: Call, target: Target) -> None:
        """One try of `target`; what it shows about the target is learned, except a held 429 (decided above)."""
        try:
            await self.app(scope, receive, held.send)
        except UpstreamError:
            self.health.observe(call, target, ok=False)
            await self.health.failed(call, target)
            raise
        if held.start is not None:
            return
        if held.status == TOO_MANY_REQUESTS:
            await self.health.rate_limited(call, target, held.headers, held.body)
        else:
            await self._settle(call, target, held.status)

    async def _admit(self, call: Call, target: Target, block: Block) -> None:
        """Let the attempt go on, after a short wait if need be, or refuse it."""
        health = self.health
        if block.kind == "cooling":
            wait = block.until - health.clock()
            if await self._may_wait(call, wait):
                await asyncio.sleep(wait)
                return
            seconds = health.retry_after(call, (target,)) or 1
            raise RateLimited(
                f"{target.name} is rate-limited for {seconds} s more", headers=[(b"retry-after", str(seconds).encode())]
            )
        if call.alternatives == 0:
            return  # never every target ejected: the last one left is tried
        if block.kind == "half_open" and await health.claim_probe(call, target):
            return
        raise TargetUnavailable(f"{target.name} is failing; its circuit is open")

    async def _may_wait(self, call: Call, wait: float) -> bool:
        """A wait in place: short, once per call, nothing else to try, and inside the call's deadline."""
        if call.alternatives or call.waited or wait > self.health.max_wait_s:
            return False
        deadline = call.deadline
        if deadline is not None and asyncio.get_running_loop().time() + wait >= deadline:
            return False
        call.waited = True
        return True

    async def _settle(self, call: Call, target: Target, status: int | None) -> None:
        if call.client_gone:
            return  # says nothing about the target
        if call.error is not None or (status is not None and status in CIRCUIT_STATUSES):
            self.health.observe(call, target, ok=False)
            await self.health.failed(call, target)
        elif status is not None and status < 400:
            record = call.last_try
            if record is not None and record.first_byte_s is not None:
                self.health.observe_first_byte(call, target, record.first_byte_s)
            self.health.observe(call, target, ok=True)
            await self.health.succeeded(call, target)


class _Held429:
    """Passes every response through, except a 429, which is held (it is small and whole) until decided."""

    def __init__(self, send: Send, *, hold: bool = True) -> None:
        self._send = send
        self._hold = hold
        self.status: int | None = None
        self.start: Message | None = None
        self.headers: Headers = []
        self._body: list[bytes] = []

    @property
    def body(self) -> bytes:
        return b"".join(self._body)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self.status == TOO_MANY_REQUESTS:
                self.headers = list(message.get("headers", ()))
                if self._hold:
                    self.start = message
                    return
        elif self.start is not None and message["type"] == "http.response.body":
            self._body.append(message.get("body", b""))
            return
        elif self.status == TOO_MANY_REQUESTS and message["type"] == "http.response.body":
            self._body.append(message.get("body", b""))
        await self._send(message)

    async def release(self) -> None:
        """Send the held 429 on, as it came."""
        assert self.start is not None
        await self._send(self.start)
        await self._send({"type": "http.response.body", "body": self.body, "more_body": False})
