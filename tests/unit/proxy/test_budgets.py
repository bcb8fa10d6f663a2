"""proxy.budgets and its stores: UTC periods, nano-dollar arithmetic, atomic reservations, the middleware.

The Redis store runs against a real private `redis-server` (reservations are
Lua scripts, and fakeredis needs `lupa` for those, which is not installed).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import anyio
import pytest
import redis

from middleware.call import Call, Route, Target
from middleware.errors import BudgetExceeded, RateLimited
from proxy.budget_redis import RedisBudgetStore
from proxy.budget_store import EXPIRY_MARGIN_S, MemoryBudgetStore, from_nanos, period_end, to_nanos
from proxy.budgets import (
    DEFAULT_MAX_TOKENS,
    UNPRICED_RESERVATION_USD,
    BudgetMiddleware,
    Budgets,
    BudgetStore,
    KeyBudget,
    Reservation,
    charged,
    period_id,
    reset_at,
    usd,
)
from proxy.ledger.record import CallRecord
from proxy.pricing import Price, PriceTable, worst_case_cost
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.anyio


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- periods ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "now", "pid", "reset"),
    [
        ("day", utc(2026, 11, 25, 13, 30), "2026-11-25", utc(2026, 11, 26)),
        ("day", utc(2026, 11, 25), "2026-11-25", utc(2026, 11, 26)),  # midnight opens a new day
        ("day", utc(2026, 11, 25, 23, 59, 59), "2026-11-25", utc(2026, 11, 26)),
        ("day", utc(2026, 11, 30, 12), "2026-11-30", utc(2026, 12, 1)),
        ("day", utc(2026, 12, 31, 23), "2026-12-31", utc(2027, 1, 1)),
        ("day", utc(2028, 2, 28, 5), "2028-02-28", utc(2028, 2, 29)),  # leap year
        ("month", utc(2026, 11, 25, 13, 30), "2026-11", utc(2026, 12, 1)),
        ("month", utc(2026, 11, 1), "2026-11", utc(2026, 12, 1)),
        ("month", utc(2026, 12, 31, 23, 59, 59), "2026-12", utc(2027, 1, 1)),  # Dec -> Jan
        ("month", utc(2027, 1, 31, 10), "2027-01", utc(2027, 2, 1)),
        ("month", utc(2027, 2, 14), "2027-02", utc(2027, 3, 1)),
        ("month", utc(2028, 2, 29), "2028-02", utc(2028, 3, 1)),
    ],
)
def test_periods_are_utc_days_and_months(period, now, pid, reset):
    assert period_id(period, now) == pid
    assert period_end(pid) == reset
    assert reset_at(period, now) == reset


def test_periods_are_reckoned_in_utc_whatever_the_clock_zone():
    new_york = timezone(timedelta(hours=-5))
    evening = datetime(2026, 11, 30, 20, 0, tzinfo=new_york)  # already 01:00 UTC on December 1st
    assert period_id("month", evening) == "2026-12"
    assert reset_at("day", evening) == utc(2026, 12, 2)
    assert period_id("day", datetime(2026, 11, 30, 23)) == "2026-11-30"  # naive: taken as UTC


# --- amounts ---------------------------------------------------------------------------------


def test_amounts_are_nano_dollars_rounded_against_the_caller():
    assert to_nanos(Decimal("0.0000000001")) == 1  # a reservation or cost rounds up
    assert to_nanos(Decimal("0.0000000001"), up=False) == 0  # a limit rounds down
    assert to_nanos(Decimal("50")) == 50_000_000_000
    assert to_nanos(Decimal("1e20"), up=False) == 10**29  # no 28-digit context limit
    assert from_nanos(340_000) == Decimal("0.00034")
    assert (usd(Decimal("50.0")), usd(Decimal("0.00034")), usd(Decimal(0))) == ("$50.00", "$0.00034", "$0.00")
    assert str(KeyBudget.of(0.001, "day")) == "$0.001 per day"


# --- stores: the same rules in memory and in Redis ---------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    yield server
    server.kill()


@pytest.fixture(params=["memory", "redis"])  # .ci/run installs redis-server when it is missing
async def store(request) -> AsyncIterator[BudgetStore]:
    if request.param == "memory":
        yield MemoryBudgetStore()
        return
    server = request.getfixturevalue("redis_server")
    redis.Redis(port=server.port).flushall()
    made = RedisBudgetStore.from_url(server.url, op_timeout_s=2.0)
    yield made
    await made.aclose()


ONE = Decimal("1.00")


async def test_a_reservation_is_added_only_when_it_fits(store):
    assert await store.reserve("k", "2026-11", Decimal("0.4"), ONE)
    assert await store.reserve("k", "2026-11", Decimal("0.6"), ONE)  # exactly at the limit: fits
    assert not await store.reserve("k", "2026-11", Decimal("0.000000001"), ONE)
    assert await store.spent("k", "2026-11") == ONE
    # Other keys and periods have their own totals.
    assert await store.reserve("other", "2026-11", Decimal("0.5"), ONE)
    assert await store.reserve("k", "2026-12", Decimal("0.5"), ONE)
    assert await store.spent("k", "2026-12") == Decimal("0.5")


async def test_settling_replaces_the_reservation_by_the_cost(store):
    assert await store.reserve("k", "2026-11", Decimal("0.4"), ONE)
    await store.settle("k", "2026-11", Decimal("0.4"), Decimal("0.1"))  # down
    assert await store.spent("k", "2026-11") == Decimal("0.1")
    assert await store.reserve("k", "2026-11", Decimal("0.2"), ONE)
    await store.settle("k", "2026-11", Decimal("0.2"), Decimal("0.5"))  # up (the estimate was short)
    assert await store.spent("k", "2026-11") == Decimal("0.6")
    assert await store.reserve("k", "2026-11", Decimal("0.3"), ONE)
    await store.settle("k", "2026-11", Decimal("0.3"), None)  # unpriced: the reservation stays, as spent
    assert await store.spent("k", "2026-11") == Decimal("0.9")
    await store.settle("k", "2026-11", Decimal("5"), Decimal(0))  # never below zero
    assert await store.spent("k", "2026-11") == 0


async def test_costs_finer_than_a_nano_dollar_are_rounded_up(store):
    assert await store.reserve("k", "2026-11", Decimal("0.0000000001"), ONE)  # 1e-10: one nano reserved
    await store.settle("k", "2026-11", Decimal("0.0000000001"), Decimal("0.0000000011"))
    assert await store.spent("k", "2026-11") == Decimal("0.000000002")


async def test_concurrent_reservations_never_exceed_the_limit(store):
    amount, limit = Decimal("0.0003"), Decimal("0.003")  # exactly 10 fit
    results: list[bool] = []
    go = anyio.Event()

    async def one() -> None:
        await go.wait()
        results.append(await store.reserve("k", "2026-11", amount, limit))

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(one)
        await anyio.wait_all_tasks_blocked()  # all 100 waiting, then released at once
        go.set()
    assert results.count(True) == 10
    assert await store.spent("k", "2026-11") == limit


async def test_redis_keys_are_per_key_and_period_and_expire_a_day_past_the_period(redis_server):
    redis.Redis(port=redis_server.port).flushall()
    store = RedisBudgetStore.from_url(redis_server.url, op_timeout_s=2.0)
    replica = RedisBudgetStore.from_url(redis_server.url, op_timeout_s=2.0)
    try:
        assert await store.reserve("team-a", "2099-11", Decimal("0.25"), ONE)
        assert await replica.spent("team-a", "2099-11") == Decimal("0.25")  # shared
        assert await replica.reserve("team-a", "2099-11", Decimal("0.75"), ONE)
        assert not await store.reserve("team-a", "2099-11", Decimal("0.01"), ONE)
    finally:
        await store.aclose()
        await replica.aclose()
    client = redis.Redis(port=redis_server.port)
    assert client.keys(b"sluice:v1:budget:*") == [b"sluice:v1:budget:team-a:2099-11"]
    assert client.get(b"sluice:v1:budget:team-a:2099-11") == b"1000000000"
    expected = period_end("2099-11").timestamp() + EXPIRY_MARGIN_S
    assert client.expiretime(b"sluice:v1:budget:team-a:2099-11") == int(expected)


async def test_redis_down_falls_back_to_memory_and_its_spend_is_carried_back(caplog):
    server = RedisServer(free_port())
    server.start()
    store = RedisBudgetStore.from_url(server.url, op_timeout_s=0.5)
    try:
        assert await store.reserve("k", "2026-11", Decimal("0.3"), ONE)
        server.kill()
        with caplog.at_level(logging.WARNING, logger="sluice"):
            started = time.monotonic()
            # Enforced from the last shared total (0.3) plus this process's own spend.
            assert await store.reserve("k", "2026-11", Decimal("0.5"), ONE)
            assert not await store.reserve("k", "2026-11", Decimal("0.3"), ONE)
            assert await store.spent("k", "2026-11") == Decimal("0.8")
            assert time.monotonic() - started < 2
        assert "Redis unavailable" in caplog.text
        assert store.stats["fallbacks"] >= 3
        server.start()  # an empty Redis (no persistence): only what this replica carries comes back
        deadline = time.monotonic() + 10
        while store.stats["fallbacks"] and time.monotonic() < deadline:
            before = store.stats["fallbacks"]
            await store.settle("k", "2026-11", Decimal("0.5"), Decimal("0.5"))  # no change: only syncs
            if store.stats["fallbacks"] == before:
                break
            await anyio.sleep(0.2)
        assert redis.Redis(port=server.port).get(b"sluice:v1:budget:k:2026-11") == b"500000000"
    finally:
        await store.aclose()
        server.kill()


async def test_a_store_that_raises_on_settle_never_fails_the_call(caplog):
    class Broken(MemoryBudgetStore):
        async def settle(self, *args: object) -> None:
            raise RuntimeError("boom")

    budgets = Budgets({"k": KeyBudget(ONE, "day")}, Broken())
    reservation = await budgets.reserve("k", budgets.limits["k"], Decimal("0.5"))
    with caplog.at_level(logging.WARNING, logger="sluice"):
        await budgets.settle(reservation, record(cost=Decimal("0.1")))
    assert "not settled" in caplog.text


def test_memory_forgets_periods_a_day_after_they_end():
    now = [utc(2026, 11, 25, 12).timestamp()]
    memory = MemoryBudgetStore(clock=lambda: now[0])
    memory.remember("k", "2026-11-25", 5)
    now[0] = (utc(2026, 11, 27) + timedelta(seconds=EXPIRY_MARGIN_S)).timestamp()
    memory.remember("k", "2026-11-28", 7)  # a new entry sweeps the old ones
    assert (memory.nanos("k", "2026-11-25"), memory.nanos("k", "2026-11-28")) == (0, 7)


# --- what a finished call is charged --------------------------------------------------------


def record(*, cost=None, provider=None, status=200, possibly_billed=False) -> CallRecord:
    return CallRecord(
        ts=0.0,
        request_id="r",
        key_id="k",
        route="m",
        provider=provider,
        model=None,
        status=status,
        cache_status="BYPASS",
        attempts=1,
        latency_ms=1.0,
        ttft_ms=None,
        cost_usd=cost,
        possibly_billed=possibly_billed,
    )


HELD = Decimal("0.05")


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (record(cost=Decimal("0.01"), provider="p"), Decimal("0.01")),  # priced: its cost
        (record(cost=Decimal("0.01"), provider="p", status=499), Decimal("0.01")),
        (record(provider="p"), HELD),  # answered but unpriced: the reservation, not free
        (record(provider="p", status=499, possibly_billed=True), HELD),  # the client left mid-answer
        (record(provider="p", status=500, possibly_billed=True), HELD),  # a 500 may have been billed
        (record(status=504, possibly_billed=True), HELD),  # timed out after sending
        (record(provider="p", status=400), Decimal(0)),  # the upstream refused it
        (record(status=502), Decimal(0)),  # never reached a provider
        (record(status=429), Decimal(0)),  # every target rate-limited
    ],
)
def test_what_a_finished_call_is_charged(call, expected):
    assert charged(call, HELD) == expected


# --- the middleware --------------------------------------------------------------------------


def target(name: str) -> Target:
    provider, _, model = name.partition("/")
    return Target(provider, model, "http://127.0.0.1:1/v1")


CHEAP, DEAR = Price(Decimal(1), Decimal(2)), Price(Decimal(3), Decimal(15))
PRICES = PriceTable({"p/cheap": CHEAP, "p/dear": DEAR})
T0 = utc(2026, 11, 25, 18).timestamp()  # 6 hours before the day's reset


class Inner:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1


def scoped(body: dict, tenant: str | None = "team-a", targets=("p/cheap",), path="/v1/chat/completions"):
    call = Call(tenant=tenant, body=json.dumps(body).encode())
    call.route = Route("m", tuple(target(t) for t in targets))
    return {"type": "http", "path": path, "sluice.call": call}, call


def middleware(limit="1.00", period="day", inner=None) -> BudgetMiddleware:
    budgets = Budgets({"team-a": KeyBudget(Decimal(limit), period)}, MemoryBudgetStore(), clock=lambda: T0)
    return BudgetMiddleware(inner or Inner(), budgets, PRICES)


HELLO = {"model": "m", "messages": [{"role": "user", "content": "Hello there"}]}
PROMPT = 4 + 4 + 3  # ceil(len("user" + "Hello there") / 4) + one message + priming


@pytest.mark.parametrize(
    ("extra", "targets", "expected"),
    [
        ({"max_tokens": 100}, ("p/cheap",), worst_case_cost(CHEAP, PROMPT, 100)),
        ({"max_tokens": 100}, ("p/cheap", "p/dear"), worst_case_cost(DEAR, PROMPT, 100)),  # the dearest target
        ({"max_completion_tokens": 50, "max_tokens": 100}, ("p/cheap",), worst_case_cost(CHEAP, PROMPT, 50)),
        ({"max_tokens": 100, "n": 3}, ("p/cheap",), worst_case_cost(CHEAP, PROMPT, 300)),  # n choices
        ({}, ("p/cheap",), worst_case_cost(CHEAP, PROMPT, DEFAULT_MAX_TOKENS)),
        ({"max_tokens": "lots"}, ("p/cheap",), worst_case_cost(CHEAP, PROMPT, DEFAULT_MAX_TOKENS)),
        ({"max_tokens": 100}, ("p/unknown", "p/cheap"), worst_case_cost(CHEAP, PROMPT, 100)),  # priced as known
        ({"max_tokens": 100}, ("p/unknown", "q/other"), UNPRICED_RESERVATION_USD),  # none priced
    ],
)
async def test_the_reservation_is_the_worst_case_over_the_route(extra, targets, expected):
    scope, call = scoped(HELLO | extra, targets=targets)
    await middleware()(scope, None, None)
    assert call.reservation == Reservation("team-a", "2026-11-25", expected)


async def test_an_embedding_reserves_its_prompt_only():
    scope, call = scoped({"model": "m", "input": "Hello there"}, path="/v1/embeddings")
    await middleware()(scope, None, None)
    assert call.reservation.amount == worst_case_cost(CHEAP, 3 + 3, 0)


async def test_calls_without_a_budget_pass_untouched():
    inner = Inner()
    layer = middleware(limit="0", inner=inner)
    for tenant in ("team-b", "admin", None):
        scope, call = scoped(HELLO, tenant=tenant)
        await layer(scope, None, None)
        assert call.reservation is None
    assert inner.calls == 3


async def test_a_call_that_does_not_fit_is_a_429_naming_the_budget_and_its_reset():
    inner = Inner()
    layer = middleware(limit="0.001", inner=inner)
    body = HELLO | {"max_tokens": 50}  # (11 * 1 + 50 * 2) / 1e6 = $0.000111 each: 9 fit
    for _ in range(9):
        await layer(*scoped(body)[:1], None, None)
    with pytest.raises(BudgetExceeded) as refused:
        await layer(scoped(body)[0], None, None)
    error = refused.value
    assert isinstance(error, RateLimited)
    assert (error.status, error.code) == (429, "budget_exceeded")
    assert error.message == (
        "budget exceeded for key 'team-a': $0.000999 of $0.001 per day spent (calls in flight included) "
        "and this call may cost up to $0.000111; the budget resets at 2026-11-26T00:00:00Z"
    )
    assert error.headers == [(b"retry-after", b"21600")]
    assert inner.calls == 9


async def test_a_call_dearer_than_the_whole_budget_says_so():
    with pytest.raises(BudgetExceeded, match="more than the whole budget: lower max_tokens"):
        await middleware(limit="0.001")(scoped(HELLO)[0], None, None)  # 4096 default output tokens
