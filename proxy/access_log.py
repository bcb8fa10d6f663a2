"""One JSON line per call (SPEC §11), handed to logging in batches.

The `logging` machinery costs ~10 µs per record (a LogRecord, the handler's
lock, a write), as much as the rest of the ledger layer. Lines are therefore
gathered on the event loop and given to the `sluice.access` logger as one
record every `interval_s` (one line per call in the output all the same);
`flush()` at shutdown writes what is left.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from proxy.ledger.record import CallRecord
from proxy.pricing import format_usd

logger = logging.getLogger("sluice.access")
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def line_of(record: CallRecord) -> str:
    """The log line of one call: ids, who served, outcome, timings, cost. Never a key or text."""
    fields: dict[str, Any] = {
        "ts": round(record.ts, 3),
        "request_id": record.request_id,
        "key_id": record.key_id,
        "route": record.route,
        "provider": record.provider,
        "model": record.model,
        "status": record.status,
        "cache": record.cache_status,
        "attempts": record.attempts,
        "latency_ms": round(record.latency_ms, 2),
        "ttft_ms": None if record.ttft_ms is None else round(record.ttft_ms, 2),
        "cost_usd": None if record.cost_usd is None else format_usd(record.cost_usd),
        "error": record.error,
    }
    return _ENCODER.encode(fields)


class AccessLog:
    """Collects call lines and logs them together, at most `interval_s` later."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def write(self, record: CallRecord) -> None:
        """Queue the line of one call (nothing at all when the logger would drop it)."""
        if not logger.isEnabledFor(logging.INFO):
            return
        self._lines.append(line_of(record))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self.flush)

    def flush(self) -> None:
        """Log every queued line now, as one record whose message holds one line per call."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            lines, self._lines = self._lines, []
            logger.info("\n".join(lines))

    async def aclose(self) -> None:
        """Shutdown: nothing queued is lost."""
        self.flush()
