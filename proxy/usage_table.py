"""`sluice usage`: the ledger's cost table, as a person reads it in a terminal (SPEC §2, §10)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal

from proxy.config import Config
from proxy.ledger import open_ledger
from proxy.ledger.aggregate import UsageRow
from proxy.views import parse_since

_COLUMNS = ("calls", "errors", "input tok", "output tok", "cost USD", "saved USD", "unpriced")


def usage_rows(config: Config, since: str, by: Sequence[str]) -> list[UsageRow]:
    """The usage rows of the ledger the config names, read once (the ledger is opened and closed here)."""

    async def read() -> list[UsageRow]:
        ledger = open_ledger(
            config.ledger.path,
            config.redis.url if config.redis else None,
            op_timeout_s=max(config.redis.op_timeout_ms / 1000, 1.0) if config.redis else 1.0,
            store_text=False,
        )
        await ledger.start()
        try:
            return await ledger.usage(since=parse_since(since), by=by)
        finally:
            await ledger.aclose()

    return asyncio.run(read())


def render(rows: Sequence[UsageRow], by: Sequence[str]) -> str:
    """A fixed-width table: one line per group, then a rule and the totals."""
    header = [*by, *_COLUMNS]
    lines = [[*(row.group.get(d) or "-" for d in by), *_cells(row)] for row in rows]
    total = (
        ["total", *([""] * (len(by) - 1)), *_cells(UsageRow.total(rows))] if by else ["", *_cells(UsageRow.total(rows))]
    )
    if not by:
        header = ["", *_COLUMNS]
    widths = [max(len(str(line[i])) for line in [header, *lines, total]) for i in range(len(header))]
    numeric = set(range(len(header) - len(_COLUMNS), len(header)))

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    body = [fmt(line) for line in lines] if lines else ["(no calls in this window)"]
    return "\n".join([fmt(header), rule, *body, rule, fmt(total)])


def _cells(row: UsageRow) -> list[str]:
    return [
        f"{row.calls:,}",
        f"{row.errors:,}",
        f"{row.input_tokens:,}",
        f"{row.output_tokens:,}",
        _usd(row.cost_usd),
        _usd(row.saved_usd),
        f"{row.unpriced:,}",
    ]


def _usd(amount: Decimal) -> str:
    return f"{amount.quantize(Decimal('0.000001')):,}"
