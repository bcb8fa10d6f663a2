"""Breaker: opens after N consecutive failures, lets one trial through after open_s, closes on success."""

from __future__ import annotations

from middleware.stores import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def state_of(breaker: Breaker) -> str:
    return breaker.state  # read afresh: the state changes with the clock


def opened_breaker(clock: Clock, failures: int = 3, open_s: float = 5.0) -> Breaker:
    breaker = Breaker(failures=failures, open_s=open_s, clock=clock)
    for _ in range(failures):
        assert breaker.allow()
        breaker.failure()
    return breaker


def test_opens_after_n_consecutive_failures():
    clock = Clock()
    breaker = Breaker(failures=3, open_s=5.0, clock=clock)
    breaker.failure()
    breaker.failure()
    assert breaker.allow()
    assert state_of(breaker) == "closed"
    breaker.failure()
    assert not breaker.allow()
    assert state_of(breaker) == "open"
    assert breaker.opened == 1


def test_a_success_resets_the_failure_count():
    breaker = Breaker(failures=3, clock=Clock())
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()
    assert breaker.allow()
    assert breaker.opened == 0


def test_half_open_lets_exactly_one_trial_through_after_open_s():
    clock = Clock()
    breaker = opened_breaker(clock)
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.1
    assert state_of(breaker) == "half_open"
    assert breaker.allow()
    assert not breaker.allow()  # the trial is in flight
    assert state_of(breaker) == "open"


def test_a_successful_trial_closes():
    clock = Clock()
    breaker = opened_breaker(clock)
    clock.now += 5
    assert breaker.allow()
    breaker.success()
    assert state_of(breaker) == "closed"
    assert all(breaker.allow() for _ in range(10))


def test_a_failed_trial_opens_again_for_a_full_cool_down():
    clock = Clock()
    breaker = opened_breaker(clock)
    clock.now += 5
    assert breaker.allow()
    breaker.failure()
    assert breaker.opened == 2
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()


def test_late_failures_of_calls_started_before_opening_do_not_extend_the_cool_down():
    clock = Clock()
    breaker = opened_breaker(clock)
    clock.now += 3
    breaker.failure()
    breaker.failure()
    clock.now += 2
    assert breaker.allow()
    assert breaker.opened == 1


def test_a_trial_that_never_reports_frees_its_slot_after_another_open_s():
    clock = Clock()
    breaker = opened_breaker(clock)
    clock.now += 5
    assert breaker.allow()  # its caller is cancelled and never reports
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
