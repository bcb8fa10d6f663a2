"""The JSON views of the ledger and the metrics: /sluice/calls, /sluice/usage, /sluice/experiments, /metrics.

SPEC §4, §9, §10, §11.

Auth (the admin key when [auth] is on) is AuthMiddleware's job; these only
read. Records never hold a key, only its id; prompt and answer text only
when `[ledger] store_text = true`.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from middleware.errors import InvalidRequest, SluiceError
from middleware.types import ASGIApp, Receive, Scope, Send
from proxy.experiments.judge import NO_JUDGE_STATS, Judge
from proxy.ledger.aggregate import UsageRow
from proxy.ledger.base import DEFAULT_LIMIT, Ledger, LedgerUnavailable, check_dimensions, check_limit
from proxy.ledger.codec import record_to_dict
from proxy.metrics import Metrics, judge_lines

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class LedgerDown(SluiceError):
    """503: the ledger's store cannot be read right now."""

    status = 503
    type = "server_error"
    code = "ledger_unavailable"


def parse_since(text: str, now: float | None = None) -> float:
    """`24h`, `7d`, `30m`, `1w` (ago), or a date `YYYY-MM-DD` / ISO time (UTC): wall-clock seconds."""
    now = time.time() if now is None else now
    match = _DURATION.fullmatch(text.strip())
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequest(
            f"since={text!r}: expected a duration like 24h, 7d, 30m, or a date like 2026-01-31", param="since"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {name: values[-1] for name, values in parse_qs(raw).items()}


async def _send_json(send: Send, payload: Any) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def calls_view(ledger: Ledger, *, store_text: bool = False) -> ASGIApp:
    """GET /sluice/calls: recent calls, newest first, with their tries; filters and a cursor."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        query = _query(scope)
        try:
            limit = check_limit(int(query.get("limit", DEFAULT_LIMIT)))
            status = int(query["status"]) if "status" in query else None
        except ValueError as exc:
            raise InvalidRequest(f"bad query: {exc}", param="limit") from None
        try:
            records, cursor = await ledger.calls(
                limit=limit,
                before=query.get("before"),
                request_id=query.get("request_id"),
                key_id=query.get("key"),
                provider=query.get("provider"),
                status=status,
            )
        except LedgerUnavailable as exc:
            raise LedgerDown(f"the ledger cannot be read: {exc}") from None
        except ValueError as exc:  # a cursor this ledger did not hand out
            raise InvalidRequest(str(exc), param="before") from None
        data = [record_to_dict(r, store_text=store_text) for r in records]
        await _send_json(send, {"object": "list", "data": data, "next": cursor})

    return endpoint


def usage_view(ledger: Ledger) -> ASGIApp:
    """GET /sluice/usage?since=24h&by=provider,model: calls, tokens, cost, saved and unpriced per group."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        query = _query(scope)
        since_text = query.get("since", "24h")
        since = parse_since(since_text)
        try:
            by = check_dimensions([d.strip() for d in query.get("by", "provider,model").split(",") if d.strip()])
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="by") from None
        try:
            rows = await ledger.usage(since=since, by=by)
        except LedgerUnavailable as exc:
            raise LedgerDown(f"the ledger cannot be read: {exc}") from None
        payload = {
            "since": datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds"),
            "by": list(by),
            "rows": [row.as_dict() for row in rows],
            "totals": UsageRow.total(rows).as_dict(),
        }
        await _send_json(send, payload)

    return endpoint


def experiments_view(ledger: Ledger, judge: Judge | None = None) -> ASGIApp:
    """GET /sluice/experiments?since=7d: per A/B route and variant, traffic, latency, cost and the judge's verdicts.

    `judge_queue` is this process's judge: samples taken, dropped (queue full),
    judged, failed, and waiting now (all 0 without a judge).
    """

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        since = parse_since(_query(scope).get("since", "7d"))
        try:
            rows = await ledger.experiments(since=since)
        except LedgerUnavailable as exc:
            raise LedgerDown(f"the ledger cannot be read: {exc}") from None
        payload = {
            "since": datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds"),
            "routes": [row.as_dict() for row in rows],
            "judge_queue": judge.stats() if judge is not None else NO_JUDGE_STATS,
        }
        await _send_json(send, payload)

    return endpoint


def metrics_view(metrics: Metrics, judge: Judge | None = None) -> ASGIApp:
    """GET /metrics: the Prometheus text format (with the A/B judge's counters when there is a judge)."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        text = metrics.render()
        if judge is not None:
            text += "\n".join(judge_lines(judge.stats())) + "\n"
        body = text.encode()
        headers = [
            (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return endpoint
