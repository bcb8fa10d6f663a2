"""What the ledger keeps: one `CallRecord` per call, one `AttemptRow` per upstream try (SPEC §10).

Plain data, no I/O. Money is `Decimal` (USD), never float, so sums do not drift;
`None` cost means "unpriced", never "free". No key is ever held here, only the
key's id; prompt and answer text only when `[ledger] store_text = true`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(slots=True)
class AttemptRow:
    """One upstream try of a call (a row under the call's request id)."""

    n: int  # 1-based, in the order the tries started
    provider: str
    model: str
    status: int | None  # None: no answer (connect failure, timeout, cancelled)
    outcome: str  # "ok", "failed", "cancelled"
    error: str | None
    first_byte_ms: float | None
    duration_ms: float | None
    possibly_billed: bool


@dataclass(slots=True)
class CallRecord:
    """One call as the ledger keeps it."""

    ts: float  # wall-clock seconds when the call arrived
    request_id: str
    key_id: str | None  # gateway key id, "anon:<hash>" in pass-through mode; never the key
    route: str | None  # the model string the client asked for (alias, provider/model, ...)
    provider: str | None  # who served (None: nobody did)
    model: str | None
    status: int
    cache_status: str  # HIT MISS REFRESH BYPASS
    attempts: int
    latency_ms: float
    ttft_ms: float | None  # first body byte to the client
    stream: bool = False
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: Decimal | None = None  # None: unpriced (or no usage reported)
    saved_usd: Decimal | None = None  # a cache hit: what the stored answer cost
    variant: str | None = None
    error: str | None = None
    possibly_billed: bool = False  # some failed try may have been charged
    judge: bool = False  # spend of an A/B judge, not of the caller (issue 8)
    # The judge's verdict on a pair, on the last judge call of the pair: `variant` against
    # `opponent` was a "win", "loss" or "tie" (proxy.experiments.judge).
    verdict: str | None = None
    opponent: str | None = None
    prompt_text: str | None = None  # only with store_text
    answer_text: str | None = None
    tries: list[AttemptRow] = field(default_factory=list)
