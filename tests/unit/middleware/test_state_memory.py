"""The StateStore rules (SPEC §8): cooldowns, outlier ejection, half-open probes; then MemoryStateStore's bounds.

The rules run on `MemoryStateStore` and on `RedisStateStore` over fakeredis,
since both must agree; what only Redis has (sharing, fallback, layout) is in
test_state_redis.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import fakeredis
import pytest

from middleware.stores import HEALTHY, CircuitPolicy, MemoryStateStore, StateStore, TargetState

pytestmark = pytest.mark.anyio

POLICY = CircuitPolicy(threshold=3, base_s=1.0, max_s=4.0)
T0 = 1_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Subject:
    store: StateStore
    clock: FakeClock
    real_ttls: bool  # probe claims expire in real time (Redis PX), not on the fake clock

    async def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        if self.real_ttls:
            await anyio.sleep(seconds)


@pytest.fixture(params=["memory", "fakeredis"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    clock = FakeClock()
    store: StateStore
    if request.param == "memory":
        store = MemoryStateStore(clock=clock)
    else:
        from middleware.stores import RedisStateStore

        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        store = RedisStateStore(client, op_timeout_s=1.0, clock=clock)
    yield Subject(store, clock, real_ttls=request.param == "fakeredis")
    await store.aclose()


async def fail(store: StateStore, target_id: str, times: int, now: float) -> TargetState:
    state = HEALTHY
    for _ in range(times):
        state = await store.failed(target_id, now, POLICY)
    return state


async def test_unknown_targets_read_as_healthy_in_the_order_asked(subject):
    store = subject.store
    await store.cool_down("b", T0 + 30)
    assert await store.read([]) == []
    states = await store.read(["a", "b", "c"])
    assert states[0] == HEALTHY
    assert states[1].cool_until == T0 + 30
    assert states[2] == HEALTHY


async def test_a_cooldown_is_read_back_and_the_newest_wins_even_if_shorter(subject):
    store = subject.store
    await store.cool_down("t", T0 + 60)
    assert (await store.read(["t"]))[0].cool_until == T0 + 60
    await store.cool_down("t", T0 + 5)  # a newer reset that is sooner
    assert (await store.read(["t"]))[0].cool_until == T0 + 5


async def test_failures_below_the_threshold_are_counted_without_opening(subject):
    state = await fail(subject.store, "t", POLICY.threshold - 1, T0)
    assert state.failures == POLICY.threshold - 1
    assert state.open_until == 0.0
    assert state.ejections == 0
    assert await subject.store.read(["t"]) == [state]


async def test_reaching_the_threshold_ejects_the_target_for_base_s(subject):
    state = await fail(subject.store, "t", POLICY.threshold, T0)
    assert state.open_until == T0 + POLICY.base_s
    assert state.ejections == 1
    assert state.failures == POLICY.threshold
    assert await subject.store.read(["t"]) == [state]


async def test_failures_of_attempts_in_flight_do_not_extend_an_open_circuit(subject):
    opened = await fail(subject.store, "t", POLICY.threshold, T0)
    late = await fail(subject.store, "t", 4, T0 + 0.5)  # still open at T0 + 0.5
    assert late.open_until == opened.open_until
    assert late.ejections == 1
    assert late.failures == POLICY.threshold + 4


async def test_half_open_one_more_failure_ejects_again_for_twice_as_long_up_to_max_s(subject):
    store = subject.store
    state = await fail(store, "t", POLICY.threshold, T0)
    now = T0
    for ejections, length in [(2, 2.0), (3, 4.0), (4, 4.0)]:  # 1 s, 2 s, 4 s, then capped at max_s
        now = state.open_until + 0.1  # the ejection is over: half-open
        state = await store.failed("t", now, POLICY)
        assert state.ejections == ejections
        assert state.open_until == now + length


async def test_a_success_closes_the_circuit_and_the_threshold_counts_from_zero_again(subject):
    store = subject.store
    await fail(store, "t", POLICY.threshold, T0)
    await store.succeeded("t")
    assert await store.read(["t"]) == [HEALTHY]
    later = T0 + 10
    state = await fail(store, "t", POLICY.threshold - 1, later)
    assert state.open_until == 0.0
    state = await store.failed("t", later, POLICY)
    assert state.ejections == 1  # not 2: the success forgot earlier ejections
    assert state.open_until == later + POLICY.base_s


async def test_a_success_keeps_the_cooldown(subject):
    store = subject.store
    await store.cool_down("t", T0 + 60)
    await fail(store, "t", POLICY.threshold, T0)
    await store.succeeded("t")
    assert await store.read(["t"]) == [TargetState(cool_until=T0 + 60)]


async def test_a_success_of_an_unknown_target_leaves_it_healthy(subject):
    await subject.store.succeeded("never-failed")
    assert await subject.store.read(["never-failed"]) == [HEALTHY]


async def test_targets_are_independent(subject):
    store = subject.store
    await fail(store, "a", POLICY.threshold, T0)
    await store.cool_down("b", T0 + 9)
    a, b = await store.read(["a", "b"])
    assert (a.ejections, a.cool_until) == (1, 0.0)
    assert (b.ejections, b.failures, b.cool_until) == (0, 0, T0 + 9)


async def test_one_probe_is_claimed_per_ttl(subject):
    store = subject.store
    assert await store.claim_probe("t", 0.2) is True
    assert await store.claim_probe("t", 0.2) is False
    assert await store.claim_probe("other", 0.2) is True  # per target
    await subject.advance(0.3)
    assert await store.claim_probe("t", 0.2) is True
    assert await store.claim_probe("t", 0.2) is False


async def test_concurrent_probes_get_exactly_one_claim(subject):
    results: list[bool] = []

    async def claim() -> None:
        results.append(await subject.store.claim_probe("t", 5.0))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(claim)
    assert results.count(True) == 1


# MemoryStateStore only.


async def test_memory_state_is_memory_and_closing_is_harmless():
    store = MemoryStateStore()
    assert store.state() == "memory"
    await store.aclose()
    await store.aclose()


async def test_targets_healthy_again_are_forgotten():
    clock = FakeClock()
    store = MemoryStateStore(clock=clock)
    await store.cool_down("cooling", T0 + 5)
    await fail(store, "closed", POLICY.threshold, T0)
    await store.succeeded("closed")  # closed, never cooled: nothing left to keep
    assert len(store) == 1
    clock.now = T0 + 6
    assert await store.read(["cooling"]) == [HEALTHY]
    assert len(store) == 0


async def test_a_half_open_circuit_is_not_forgotten_when_its_ejection_ends():
    clock = FakeClock()
    store = MemoryStateStore(clock=clock)
    await fail(store, "t", POLICY.threshold, T0)
    clock.now = T0 + 3600
    (state,) = await store.read(["t"])
    assert state.ejections == 1  # so the next failure ejects for longer
    assert (await store.failed("t", clock.now, POLICY)).ejections == 2


async def test_many_targets_are_capped_dropping_the_least_recently_written():
    store = MemoryStateStore(clock=FakeClock(), max_entries=100)
    await fail(store, "old", POLICY.threshold, T0)
    for i in range(1000):  # pass-through keys: a target each
        await store.cool_down(f"key-{i}", T0 + 60)
        assert len(store) <= 100
    assert (await store.read(["key-999"]))[0].cool_until == T0 + 60
    assert await store.read(["old"]) == [HEALTHY]


async def test_at_the_cap_targets_healthy_again_go_before_live_ones():
    clock = FakeClock()
    store = MemoryStateStore(clock=clock, max_entries=10)
    await fail(store, "ejected", POLICY.threshold, T0)  # the oldest entry, but still ejected
    for i in range(9):
        await store.cool_down(f"brief-{i}", T0 + 1)
    clock.now = T0 + 2  # the brief cooldowns are over; nobody has read them since
    await store.cool_down("new", T0 + 60)  # the 11th entry
    assert (await store.read(["ejected"]))[0].ejections == 1
    assert (await store.read(["new"]))[0].cool_until == T0 + 60


async def test_probe_claims_are_capped_too():
    store = MemoryStateStore(clock=FakeClock(), max_entries=10)
    for i in range(100):
        assert await store.claim_probe(f"key-{i}", 60)
    assert await store.claim_probe("key-99", 60) is False  # the newest claims are kept
    assert await store.claim_probe("key-0", 60) is True  # the oldest was dropped to stay bounded


def test_a_max_entries_below_one_is_refused():
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStateStore(max_entries=0)


def test_the_state_stores_import_without_redis_py_until_the_redis_one_is_used():
    code = (
        "import sys\n"
        "import middleware.stores as stores\n"
        "stores.MemoryStateStore(); stores.HEALTHY; stores.CircuitPolicy()\n"
        "assert 'redis' not in sys.modules, 'redis-py imported too early'\n"
        "stores.RedisStateStore\n"
        "assert 'redis' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
