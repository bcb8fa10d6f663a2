"""How budget spend is kept (SPEC §10): period ids, nano-dollar amounts, `BudgetStore` and its in-memory form.

Spend is keyed by gateway key id and period id. Periods are UTC: a day
("2026-11-25") starts at 00:00 UTC, a month ("2026-11") on the 1st at 00:00 UTC.
Amounts are integer nano-dollars so that Redis can add them atomically:
reservations and costs round up, limits round down, never in the caller's
favour. `MemoryBudgetStore` serves one process; the Redis store replicas share
is `proxy.budget_redis.RedisBudgetStore`, imported only with [redis].
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from typing import Protocol

NANO = Decimal("1e-9")
EXPIRY_MARGIN_S = 86_400
"""A period's spend is kept this long past its end, so a call settling after the reset still finds it."""


# --- periods ---------------------------------------------------------------------------------


def period_id(period: str, now: datetime) -> str:
    """The id of the period holding `now`: "2026-11-25" for a day, "2026-11" for a month (UTC).

    A naive `now` is taken as UTC.
    """
    now = _utc(now)
    return now.strftime("%Y-%m-%d") if period == "day" else now.strftime("%Y-%m")


def period_end(pid: str) -> datetime:
    """When the period `pid` (from `period_id`) ends, which is when the next one starts (UTC)."""
    if len(pid) == 10:
        return datetime.strptime(pid, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)
    start = datetime.strptime(pid, "%Y-%m").replace(tzinfo=UTC)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def reset_at(period: str, now: datetime) -> datetime:
    """When a `period` ("day" or "month") budget that holds at `now` starts afresh (UTC)."""
    return period_end(period_id(period, now))


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


# --- amounts ---------------------------------------------------------------------------------


def to_nanos(usd: Decimal, *, up: bool = True) -> int:
    """USD as whole nano-dollars, rounded up (reservations, costs) or down (`up=False`: limits)."""
    with localcontext() as ctx:
        ctx.prec = 60  # exact for any budget a config can write; the default 28 digits are not
        return int(usd.quantize(NANO, rounding=ROUND_CEILING if up else ROUND_FLOOR).scaleb(9))


def from_nanos(nanos: int) -> Decimal:
    """Whole nano-dollars as USD."""
    return Decimal(nanos).scaleb(-9)


# --- stores ----------------------------------------------------------------------------------


class BudgetStore(Protocol):
    """Spent-plus-reserved USD per (key id, period id); `reserve` is an atomic check-and-add."""

    async def reserve(self, key_id: str, period_id: str, amount: Decimal, limit: Decimal) -> bool:
        """Add `amount` only if spent + reserved + `amount` <= `limit`; whether it was added."""
        ...

    async def settle(self, key_id: str, period_id: str, reserved: Decimal, actual: Decimal | None) -> None:
        """Replace a reservation by what the call cost (adds `actual - reserved`).

        `actual` None keeps the whole reservation as spent: an unpriced call is not free.
        """
        ...

    async def spent(self, key_id: str, period_id: str) -> Decimal:
        """Spent plus reserved by calls in flight, in this period."""
        ...

    async def aclose(self) -> None:
        """Release connections, if any."""
        ...


class MemoryBudgetStore:
    """A `BudgetStore` for one process. Atomic for free: nothing awaits between the check and the add.

    Also the Redis store's fallback copy (`remember`, `adjust`), which is why the
    nano-dollar methods are public. A period's entry is dropped `EXPIRY_MARGIN_S`
    after it ends (swept whenever a new entry is made).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._nanos: dict[tuple[str, str], int] = {}
        self._clock = clock

    async def reserve(self, key_id: str, period_id: str, amount: Decimal, limit: Decimal) -> bool:
        """See `BudgetStore.reserve`."""
        return self.reserve_nanos(key_id, period_id, to_nanos(amount), to_nanos(limit, up=False))

    async def settle(self, key_id: str, period_id: str, reserved: Decimal, actual: Decimal | None) -> None:
        """See `BudgetStore.settle`."""
        if actual is not None:
            self.adjust(key_id, period_id, to_nanos(actual) - to_nanos(reserved))

    async def spent(self, key_id: str, period_id: str) -> Decimal:
        """See `BudgetStore.spent`."""
        return from_nanos(self.nanos(key_id, period_id))

    async def aclose(self) -> None:
        """Nothing to release."""

    def nanos(self, key_id: str, period_id: str) -> int:
        """Spent plus reserved, in nano-dollars."""
        return self._nanos.get((key_id, period_id), 0)

    def reserve_nanos(self, key_id: str, period_id: str, amount: int, limit: int) -> bool:
        """`reserve` in nano-dollars."""
        now = self.nanos(key_id, period_id)
        if now + amount > limit:
            return False
        self.remember(key_id, period_id, now + amount)
        return True

    def adjust(self, key_id: str, period_id: str, delta: int) -> None:
        """Add `delta` nano-dollars (negative: give some back), never going below zero."""
        self.remember(key_id, period_id, max(0, self.nanos(key_id, period_id) + delta))

    def remember(self, key_id: str, period_id: str, nanos: int) -> None:
        """Set the total (the Redis store copies each total Redis returns here)."""
        entry = (key_id, period_id)
        if entry not in self._nanos:
            self._sweep()
        self._nanos[entry] = nanos

    def _sweep(self) -> None:
        cutoff = self._clock() - EXPIRY_MARGIN_S
        for entry in [e for e in self._nanos if period_end(e[1]).timestamp() < cutoff]:
            del self._nanos[entry]
