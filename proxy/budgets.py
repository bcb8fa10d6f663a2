"""Per-gateway-key budgets, USD per day or month (SPEC §10): reserve the worst case, settle the real cost.

Before a call of a key with a budget goes upstream, `BudgetMiddleware` reserves
the most it can cost (the dearest of its route's targets, prompt estimated, every
`max_tokens` generated); the reservation is atomic (check-and-add against the
limit), so concurrent calls can never together overshoot. `LedgerMiddleware`
settles it with the call's recorded cost once the call is over, whatever its
end (answered, failed, client gone). A call that does not fit gets a 429
`BudgetExceeded` naming the budget, what is spent and when it resets, with
`Retry-After` = the seconds until then.

Periods (UTC days and months), amounts (integer nano-dollars) and the stores
of spend are in `proxy.budget_store`; the Redis store replicas share is in
`proxy.budget_redis`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any

from middleware.call import Call, Route
from middleware.errors import BudgetExceeded
from middleware.types import ASGIApp, Receive, Scope, Send
from proxy.budget_store import NANO, BudgetStore, MemoryBudgetStore, period_end, period_id, reset_at
from proxy.ledger.record import CallRecord
from proxy.pricing import PriceTable, format_usd, worst_case_cost
from proxy.token_estimate import estimate_prompt_tokens

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "UNPRICED_RESERVATION_USD",
    "BudgetMiddleware",
    "BudgetStore",
    "Budgets",
    "KeyBudget",
    "MemoryBudgetStore",
    "Reservation",
    "charged",
    "period_id",
    "reset_at",
    "usd",
]

logger = logging.getLogger("sluice")

DEFAULT_MAX_TOKENS = 4096
"""Output tokens assumed when a request sets no `max_tokens` (or sets a malformed one)."""
UNPRICED_RESERVATION_USD = Decimal("0.05")
"""Reserved for a call none of whose targets has a price: it cannot be bounded, and is never free."""
_MAX_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def usd(amount: Decimal) -> str:
    """Money for a message: "$50.00", or as many digits as a small amount needs ("$0.00034")."""
    with localcontext() as ctx:
        ctx.prec = 60  # any amount a config can write, not just 28 digits' worth
        cents = amount.quantize(Decimal("0.01"))
        return f"${cents}" if cents == amount else "$" + format_usd(amount.quantize(NANO))


# --- the budgets of the configured keys ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyBudget:
    """One key's budget: `limit` USD per `period` ("day" or "month")."""

    limit: Decimal
    period: str

    @classmethod
    def of(cls, budget_usd: float, period: str) -> KeyBudget:
        """From the config's float; repr keeps what was written (50.0 -> 50.0, 0.1 -> 0.1)."""
        return cls(Decimal(repr(budget_usd)), period)

    def __str__(self) -> str:
        return f"{usd(self.limit)} per {self.period}"


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one call holds against its key's budget until it is settled."""

    key_id: str
    period_id: str
    amount: Decimal


class Budgets:
    """The keys' budgets and the store of their spend: reserve before a call, settle after it."""

    def __init__(
        self, limits: Mapping[str, KeyBudget], store: BudgetStore, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.limits = dict(limits)
        self.store = store
        self.clock = clock

    def of(self, key_id: str | None) -> KeyBudget | None:
        """The budget of `key_id`, None when it has none."""
        return self.limits.get(key_id) if key_id is not None else None

    async def reserve(self, key_id: str, budget: KeyBudget, amount: Decimal) -> Reservation:
        """Hold `amount` against the key's current period; `BudgetExceeded` (429) when it does not fit."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        pid = period_id(budget.period, now)
        if await self.store.reserve(key_id, pid, amount, budget.limit):
            return Reservation(key_id, pid, amount)
        spent = await self.store.spent(key_id, pid)
        reset = period_end(pid)
        hint = ", more than the whole budget: lower max_tokens" if amount > budget.limit else ""
        raise BudgetExceeded(
            f"budget exceeded for key '{key_id}': {usd(spent)} of {budget} spent (calls in flight included) "
            f"and this call may cost up to {usd(amount)}{hint}; "
            f"the budget resets at {reset.strftime('%Y-%m-%dT%H:%M:%SZ')}",
            headers=[(b"retry-after", str(max(1, math.ceil((reset - now).total_seconds()))).encode())],
        )

    async def settle(self, reservation: Reservation, record: CallRecord) -> None:
        """Settle with the call's recorded cost (see `charged`); never raises into the call."""
        try:
            actual = charged(record, reservation.amount)
            await self.store.settle(reservation.key_id, reservation.period_id, reservation.amount, actual)
        except Exception as exc:  # the call is over; its budget must not turn it into an error
            logger.warning("budget of key %s not settled: %s", reservation.key_id, type(exc).__name__)

    async def aclose(self) -> None:
        """Close the store."""
        await self.store.aclose()


def charged(record: CallRecord, reserved: Decimal) -> Decimal:
    """What a finished call counts against its budget.

    - Its recorded cost, when it has one.
    - Cost unknown but a provider answered it (an unpriced model, a missing usage, a
      client gone mid-answer) or some try may have been billed (a 500, a timeout after
      sending, a cancelled race loser): the whole reservation. Not free.
    - Cost unknown and nothing reached a provider or was refused before any work (no
      target answered, a 4xx, 429 or 503): 0, the reservation is released.
    """
    if record.cost_usd is not None:
        return record.cost_usd
    answered = record.provider is not None and record.status < 400
    return reserved if answered or record.possibly_billed else Decimal(0)


# --- the middleware --------------------------------------------------------------------------


class BudgetMiddleware:
    """Reserves a budgeted key's worst case before its call goes on; sits right inside RoutingMiddleware.

    A target with no price cannot be bounded: it is reserved at the dearest priced
    target of the route, or at `unpriced_usd` when none of them has a price. Calls
    of keys without a budget (and of the admin key) pass untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        budgets: Budgets,
        prices: PriceTable,
        *,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        unpriced_usd: Decimal = UNPRICED_RESERVATION_USD,
    ) -> None:
        self.app = app
        self.budgets = budgets
        self.prices = prices
        self.default_max_tokens = default_max_tokens
        self.unpriced_usd = unpriced_usd

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        call = Call.of(scope)
        budget = self.budgets.of(call.tenant)
        if budget is None or call.tenant is None or call.route is None:
            await self.app(scope, receive, send)
            return
        body = call.json()
        # An embedding generates nothing: its cost is all prompt.
        output = 0 if scope["path"].endswith("/embeddings") else self.max_tokens(body)
        amount = self.worst_case(call.route, estimate_prompt_tokens(body), output)
        # Set with no await in between: LedgerMiddleware settles whatever is on the call.
        call.reservation = await self.budgets.reserve(call.tenant, budget, amount)
        await self.app(scope, receive, send)

    def max_tokens(self, body: Mapping[str, Any]) -> int:
        """The output tokens the call may generate: `max_tokens` (or its newer names) times `n` choices."""
        limit = next((body[f] for f in _MAX_TOKEN_FIELDS if _count(body.get(f)) is not None), None)
        choices = _count(body.get("n")) or 1
        return (limit if limit is not None else self.default_max_tokens) * choices

    def worst_case(self, route: Route, prompt_tokens: int, max_tokens: int) -> Decimal:
        """The most the call can cost on any target of `route` (see the class docstring for unpriced ones)."""
        prices = [self.prices.lookup(t.provider, t.model) for t in route.targets]
        costs = [worst_case_cost(p, prompt_tokens, max_tokens) for p in prices if p is not None]
        return max(costs) if costs else self.unpriced_usd


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
