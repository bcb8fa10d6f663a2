"""The cost ledger (SPEC §10): one record per call, written off the hot path; SQLite by default, Redis for replicas.

`RedisLedger` is imported on first use, so a gateway without [redis] never
loads redis-py (see `middleware.stores`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy.ledger.aggregate import Aggregator, UsageRow, aggregate
from proxy.ledger.base import DIMENSIONS, Ledger, LedgerUnavailable
from proxy.ledger.record import AttemptRow, CallRecord
from proxy.ledger.sqlite import SqliteLedger

if TYPE_CHECKING:
    from proxy.ledger.redis import RedisLedger

__all__ = [
    "DIMENSIONS",
    "Aggregator",
    "AttemptRow",
    "CallRecord",
    "Ledger",
    "LedgerUnavailable",
    "RedisLedger",
    "SqliteLedger",
    "UsageRow",
    "aggregate",
    "open_ledger",
]

# The Redis ledger's background batches and query pages are not on the hot path and
# carry up to hundreds of records each: a deadline made for one small cache
# operation (op_timeout_ms, 50 ms by default) would spool them needlessly.
MIN_REDIS_LEDGER_TIMEOUT_S = 0.5


def open_ledger(path: str, redis_url: str | None, op_timeout_s: float, store_text: bool) -> Ledger:
    """The configured ledger, not started: `RedisLedger` when `redis_url` is given, else `SqliteLedger(path)`.

    With Redis, records that cannot reach it are spooled to `path + ".spool"`
    (see `proxy.ledger.spool`); each Redis operation of the ledger is bounded
    by `op_timeout_s`, but not less than `MIN_REDIS_LEDGER_TIMEOUT_S`.
    """
    if redis_url is None:
        return SqliteLedger(path, store_text)
    from proxy.ledger.redis import RedisLedger

    return RedisLedger(
        redis_url,
        max(op_timeout_s, MIN_REDIS_LEDGER_TIMEOUT_S),
        spool_path=path + ".spool",
        store_text=store_text,
    )


def __getattr__(name: str) -> Any:
    if name == "RedisLedger":
        from proxy.ledger import redis

        return redis.RedisLedger
    raise AttributeError(f"module 'proxy.ledger' has no attribute {name!r}")
