import pytest

from middleware.call import Call, Route, Target
from middleware.health import TargetHealth, target_id
from middleware.stores.state_base import CircuitPolicy
from middleware.stores.state_memory import MemoryStateStore

pytestmark = pytest.mark.anyio

A = Target("p", "a", "http://p/v1", api_key="sk-a")
B = Target("p", "b", "http://p/v1", api_key="sk-b")
C = Target("q", "c", "http://q/v1", api_key="sk-c")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def new_call(*targets):
    call = Call()
    call.route = Route("r", targets)
    return call


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def health(clock):
    return TargetHealth(MemoryStateStore(clock=clock), clock=clock, rng=lambda: 0.5)


def test_a_target_id_names_provider_model_and_a_digest_of_the_key_never_the_key():
    ident = target_id("openai", "gpt-4o", "sk-secret-value")
    assert ident.startswith("openai/gpt-4o#")
    assert "sk-secret" not in ident
    assert target_id("openai", "gpt-4o", "sk-other") != ident


async def test_a_429_with_a_reset_cools_the_target_for_exactly_that_long(health, clock):
    call = new_call(A, B)
    await health.load(call)
    cool, quota = await health.rate_limited(call, A, [(b"retry-after", b"7")], b"")
    assert (cool, quota) == (7.0, False)
    later = new_call(A, B)
    plan = await health.plan(later, [A, B])
    assert plan.tries == [B]
    assert [(t, b.kind) for t, b in plan.skipped] == [(A, "cooling")]
    clock.now += 7.01
    assert (await health.plan(new_call(A, B), [A, B])).tries == [A, B]


async def test_a_429_without_a_usable_reset_backs_off_with_full_jitter_growing(health):
    waits = []
    for _ in range(4):
        call = new_call(A)
        await health.load(call)
        waits.append((await health.rate_limited(call, A, [(b"retry-after", b"soon")], b""))[0])
    assert waits == [0.5, 1.0, 2.0, 4.0]  # rng() = 0.5 of 1, 2, 4, 8 s


async def test_a_quota_exhausted_429_cools_for_a_minute_and_says_so(health):
    call = new_call(A)
    await health.load(call)
    body = b'{"error": {"type": "insufficient_quota", "code": "insufficient_quota"}}'
    assert await health.rate_limited(call, A, [], body) == (60.0, True)


async def test_five_failures_eject_and_the_least_bad_target_is_kept_when_all_are_out(health, clock):
    for target in (A, B):
        for _ in range(5):
            await health.failed(new_call(A, B), target)
        clock.now += 0.5  # A's ejection ends first
    plan = await health.plan(new_call(A, B), [A, B])
    assert plan.tries == [A]
    assert [t for t, _ in plan.skipped] == [B]


async def test_an_ejected_target_is_skipped_while_another_is_healthy(health):
    for _ in range(5):
        await health.failed(new_call(A, C), A)
    plan = await health.plan(new_call(A, C), [A, C])
    assert plan.tries == [C]


async def test_after_the_ejection_the_target_is_half_open_and_a_success_closes_it(health, clock):
    for _ in range(5):
        await health.failed(new_call(A), A)
    clock.now += CircuitPolicy().ejection_s(1) + 0.01
    call = new_call(A, C)
    plan = await health.plan(call, [A, C])
    assert plan.tries == [A, C]
    assert health.block(call, A).kind == "half_open"
    assert await health.claim_probe(call, A)
    assert not await health.claim_probe(new_call(A, C), A)  # one probe at a time
    await health.succeeded(call, A)
    fresh = new_call(A)
    await health.load(fresh)
    assert health.block(fresh, A) is None


async def test_retry_after_is_the_shortest_remaining_cooldown_rounded_up(health, clock):
    call = new_call(A, B)
    await health.load(call)
    await health.rate_limited(call, A, [(b"retry-after", b"30")], b"")
    await health.rate_limited(call, B, [(b"retry-after-ms", b"2500")], b"")
    assert health.retry_after(call, [A, B]) == 3


def test_the_first_byte_p95_needs_enough_samples(health):
    call = new_call(A)
    for i in range(19):
        health.observe_first_byte(call, A, i / 100)
    assert health.first_byte_p95(call, A) is None
    for i in range(19, 100):
        health.observe_first_byte(call, A, i / 100)
    assert health.first_byte_p95(call, A) == pytest.approx(0.94)
