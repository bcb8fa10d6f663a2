"""LedgerMiddleware: every call timed, priced and written down, cache hits and failures too (SPEC §10, §11).

It sits just inside the error boundary (DESIGN), so it sees every call to
`/v1/`: answered, failed, served from the cache. For each it builds one
`CallRecord` (with a row per upstream try) and hands it to the ledger, which
queues it (the hot path never waits on disk or Redis), queues one JSON log
line (`proxy.access_log`), and feeds the metrics.

Cost comes only from reported usage: a non-stream answer's `usage` (read from
the body, which is held until its end so `X-Sluice-Cost-USD` can go on its
headers), a stream's usage event (read by the relay, see `proxy.usage`). A
cache hit costs 0 and records what it saved. An unknown price or a missing
usage is `null` (unpriced), never 0.

With budgets, the call's reservation (made by `proxy.budgets.BudgetMiddleware`)
is settled here with the recorded cost, however the call ended.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

from middleware.call import Call
from middleware.errors import SluiceError
from middleware.headers import SLUICE_COST, SLUICE_MODEL, SLUICE_PROVIDER, SLUICE_VARIANT
from middleware.types import ASGIApp, Message, Receive, Scope, Send
from proxy.access_log import AccessLog
from proxy.budgets import Budgets
from proxy.experiments.judge import JudgeCall
from proxy.ledger.base import Ledger
from proxy.ledger.record import AttemptRow, CallRecord
from proxy.metrics import Metrics
from proxy.pricing import PriceTable, cost, format_usd
from proxy.usage import usage_in_json

MAX_HELD_BODY = 4 * 1024 * 1024  # a non-stream body held for its cost header; longer ones go out without it
CLIENT_CLOSED = 499  # nginx's code for "the client went away first"


class LedgerMiddleware:
    """Records every `/v1/` call; adds `X-Sluice-Cost-USD` to non-stream answers."""

    def __init__(
        self,
        app: ASGIApp,
        ledger: Ledger,
        prices: PriceTable,
        *,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
        store_text: bool = False,
        budgets: Budgets | None = None,
    ) -> None:
        self.app = app
        self.ledger = ledger
        self.prices = prices
        self.metrics = metrics
        self.access_log = access_log or AccessLog()
        self.store_text = store_text
        self.budgets = budgets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        call = Call.of(scope)
        watch = _Watch(send, call, self.prices, keep_text=self.store_text)
        ts = time.time()
        status: int | None = None
        error: str | None = None
        try:
            await self.app(scope, receive, watch.send)
        except SluiceError as exc:
            status, error = exc.status, exc.message
            raise
        except asyncio.CancelledError:
            status, error = CLIENT_CLOSED, "cancelled"
            raise
        except Exception:
            status, error = 500, "internal error"
            raise
        finally:
            record = self._record(call, watch, ts, status, error)
            self.ledger.record(record)
            self.access_log.write(record)
            if self.metrics is not None:
                self.metrics.observe(record)
            # Last: the record is already queued should this await be interrupted (then the
            # reservation stays counted as spent, the safe side).
            if self.budgets is not None and call.reservation is not None:
                reservation, call.reservation = call.reservation, None
                await self.budgets.settle(reservation, record)

    def _record(self, call: Call, watch: _Watch, ts: float, status: int | None, error: str | None) -> CallRecord:
        if call.client_gone:
            status = CLIENT_CLOSED
            error = error or "the client went away"
        final = status if status is not None else watch.status or 500
        error = error or call.error or (f"upstream answered {final}" if final >= 400 else None)
        usage = watch.usage if watch.usage is not None else call.usage
        hit = call.cache_status == "HIT"
        priced = watch.cost if watch.priced else self._cost(watch.provider, watch.model, usage)
        record = CallRecord(
            ts=ts,
            request_id=call.request_id,
            key_id=call.tenant,
            route=_requested_model(call),
            provider=watch.provider,
            model=watch.model,
            status=final,
            cache_status=call.cache_status,
            attempts=call.attempts,
            latency_ms=(time.perf_counter() - call.started_at) * 1000,
            ttft_ms=watch.first_byte_ms,
            stream=watch.is_sse,
            cost_usd=Decimal(0) if hit else priced,
            saved_usd=priced if hit else None,
            variant=watch.variant,
            error=error,
            possibly_billed=any(t.possibly_billed for t in call.tries),
            tries=[_row(n, t) for n, t in enumerate(call.tries, 1)],
        )
        _fill_tokens(record, usage)
        internal = call.internal
        if isinstance(internal, JudgeCall):  # the judge's own call: its experiment's spend, not a caller's
            record.judge, record.route = True, internal.route
            if internal.verdict is not None:
                record.variant, record.opponent, record.verdict = internal.verdict
        if self.store_text:
            record.prompt_text = (call.body or b"").decode("utf-8", "replace")
            record.answer_text = watch.text()
        return record

    def _cost(self, provider: str | None, model: str | None, usage: dict[str, Any] | None) -> Decimal | None:
        if provider is None or model is None:
            return None
        return cost(self.prices.lookup(provider, model), usage)


class _Watch:
    """Wraps `send`: notes status, who served and the first byte; holds a JSON answer to price it."""

    def __init__(self, send: Send, call: Call, prices: PriceTable, *, keep_text: bool = False) -> None:
        self._send = send
        self._keep_text = keep_text
        self._call = call
        self._prices = prices
        self.status: int | None = None
        self.provider: str | None = None
        self.model: str | None = None
        self.variant: str | None = None
        self.is_sse = False
        self.first_byte_ms: float | None = None
        self.usage: dict[str, Any] | None = None
        self.cost: Decimal | None = None
        self.priced = False  # `cost` was worked out here, from the held body
        self._start: Message | None = None
        self._held: list[bytes] = []
        self._held_size = 0
        self._kept: list[bytes] = []  # the answer's bytes, with store_text only
        self._kept_size = 0

    def text(self) -> str | None:
        """The answer as sent (up to `MAX_HELD_BODY`), when store_text asked for it."""
        return b"".join(self._kept).decode("utf-8", "replace") if self._kept else None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._on_start(message)
            if self._start is not None:
                return
        elif message["type"] == "http.response.body":
            if self.first_byte_ms is None:
                self.first_byte_ms = (time.perf_counter() - self._call.started_at) * 1000
            if self._keep_text and self._kept_size <= MAX_HELD_BODY:
                chunk: bytes = message.get("body", b"")
                self._kept.append(chunk)
                self._kept_size += len(chunk)
            if self._start is not None:
                await self._hold(message)
                return
        await self._send(message)

    def _on_start(self, message: Message) -> None:
        self.status = message["status"]
        for name, value in message.get("headers", ()):
            if name == SLUICE_PROVIDER:
                self.provider = value.decode("latin-1")
            elif name == SLUICE_MODEL:
                self.model = value.decode("latin-1")
            elif name == SLUICE_VARIANT:
                self.variant = value.decode("latin-1")
            elif name == b"content-type":
                self.is_sse = value.startswith(b"text/event-stream")
        if not self.is_sse and self.status is not None and self.status < 300 and self.provider is not None:
            self._start = message  # held until the body's end, for X-Sluice-Cost-USD

    async def _hold(self, message: Message) -> None:
        chunk: bytes = message.get("body", b"")
        self._held.append(chunk)
        self._held_size += len(chunk)
        more = message.get("more_body", False)
        if more and self._held_size <= MAX_HELD_BODY:
            return
        start, self._start = self._start, None
        assert start is not None
        body = b"".join(self._held)
        if not more:
            start = self._with_cost(start, body)
        await self._send(start)
        await self._send({"type": "http.response.body", "body": body, "more_body": more})

    def _with_cost(self, start: Message, body: bytes) -> Message:
        self.usage = usage_in_json(body)
        if self.provider is None or self.model is None:
            return start
        self.cost = cost(self._prices.lookup(self.provider, self.model), self.usage)
        self.priced = True
        shown = Decimal(0) if self._call.cache_status == "HIT" else self.cost
        if shown is None:
            return start  # unpriced: no header rather than a made-up number
        return {**start, "headers": [*start.get("headers", ()), (SLUICE_COST, format_usd(shown).encode())]}


def _requested_model(call: Call) -> str | None:
    if call.route is not None:
        return call.route.name
    try:
        model = call.json().get("model") if call.body else None
    except SluiceError:
        return None
    return model if isinstance(model, str) else None


def _row(n: int, t: Any) -> AttemptRow:
    return AttemptRow(
        n=n,
        provider=t.provider,
        model=t.model,
        status=t.status,
        outcome=t.outcome,
        error=t.error,
        first_byte_ms=None if t.first_byte_s is None else t.first_byte_s * 1000,
        duration_ms=None if t.duration_s is None else t.duration_s * 1000,
        possibly_billed=t.possibly_billed,
    )


def _fill_tokens(record: CallRecord, usage: dict[str, Any] | None) -> None:
    if not usage:
        return
    record.input_tokens = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    record.output_tokens = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    details = usage.get("prompt_tokens_details")
    record.cached_tokens = _int(details.get("cached_tokens")) if isinstance(details, dict) else None
    if record.cached_tokens is None:
        record.cached_tokens = _int(usage.get("cache_read_input_tokens"))
    reasoning = usage.get("completion_tokens_details")
    record.reasoning_tokens = _int(reasoning.get("reasoning_tokens")) if isinstance(reasoning, dict) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
