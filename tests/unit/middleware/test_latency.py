"""The speed update rule (`middleware.stores.latency`): a time-decayed mean whose sums add up across replicas."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from middleware.stores.latency import (
    EPOCH_S,
    HALF_LIFE_S,
    SpeedPolicy,
    SpeedSums,
    added,
    observation,
    summarize,
    update,
)
from middleware.stores.state_base import TargetStats

T0 = 600.0 * 1700 + 10.0  # 10 s into an epoch
POLICY = SpeedPolicy()


Observation = tuple[float, float | None, float | None, bool]  # now, ttft_s, latency_s, ok


def run(observations: Sequence[Observation], policy: SpeedPolicy = POLICY) -> dict[int, SpeedSums]:
    buckets: dict[int, SpeedSums] = {}
    for now, ttft, latency, ok in observations:
        buckets = update(buckets, ttft_s=ttft, latency_s=latency, ok=ok, now=now, policy=policy)
    return buckets


def test_one_observation_is_the_estimate():
    stats = summarize(run([(T0, 0.4, None, True)]), T0)
    assert stats == TargetStats(ewma_ttft_s=0.4, ewma_latency_s=None, error_rate=0.0, samples=1, updated_at=T0)
    stats = summarize(run([(T0, None, 2.5, True)]), T0)
    assert stats == TargetStats(ewma_ttft_s=None, ewma_latency_s=2.5, error_rate=0.0, samples=1, updated_at=T0)


def test_nothing_observed_is_none():
    assert summarize({}, T0) is None


def test_an_observation_one_half_life_older_weighs_half():
    # 1 s then 4 s one half-life later: (0.5 * 1 + 1 * 4) / 1.5 = 3.
    stats = summarize(run([(T0, None, 1.0, True), (T0 + HALF_LIFE_S, None, 4.0, True)]), T0 + HALF_LIFE_S)
    assert stats is not None
    assert stats.ewma_latency_s == pytest.approx(3.0)
    assert stats.samples == 2
    assert stats.updated_at == T0 + HALF_LIFE_S


def test_reading_later_without_new_observations_does_not_move_the_estimate():
    buckets = run([(T0, None, 1.0, True), (T0 + 5, None, 3.0, True)])
    early, late = summarize(buckets, T0 + 5), summarize(buckets, T0 + 300)
    assert early is not None
    assert late is not None
    assert early.ewma_latency_s == pytest.approx(late.ewma_latency_s)


def test_the_estimate_follows_a_slowdown_within_a_few_half_lives():
    fast = [(T0 + i, None, 0.1, True) for i in range(60)]  # one call a second at 100 ms, then at 1 s

    def after(seconds: int) -> float:
        slow = [(T0 + 60 + i, None, 1.0, True) for i in range(seconds)]
        stats = summarize(run(fast + slow), T0 + 60 + seconds)
        assert stats is not None
        assert stats.ewma_latency_s is not None
        return stats.ewma_latency_s

    assert after(3) > 0.15  # it moves at once
    assert after(30) > 0.55  # one half-life: more than half way
    assert after(90) > 0.9
    assert after(150) > 0.97


def test_error_rate_is_the_same_average_of_failures_and_their_timings_are_not_averaged():
    buckets = run([(T0, None, 9.0, False), (T0, None, 1.0, True), (T0, None, 0.01, False), (T0, None, 1.0, True)])
    stats = summarize(buckets, T0)
    assert stats is not None
    assert stats.error_rate == pytest.approx(0.5)
    assert stats.ewma_latency_s == pytest.approx(1.0)  # neither 9 s nor 10 ms of the failures
    only_failures = summarize(run([(T0 + i, 0.2, None, False) for i in range(5)]), T0 + 5)
    assert only_failures is not None
    assert only_failures.error_rate == 1.0
    assert only_failures.ewma_ttft_s is None
    assert only_failures.samples == 5


def test_ttft_and_latency_are_separate_averages():
    stats = summarize(run([(T0, 0.3, None, True), (T0, None, 2.0, True), (T0, 0.5, None, True)]), T0)
    assert stats is not None
    assert stats.ewma_ttft_s == pytest.approx(0.4)
    assert stats.ewma_latency_s == pytest.approx(2.0)
    assert stats.samples == 3


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_unusable_timings_are_left_out_and_an_unusable_time_is_no_observation(bad):
    stats = summarize(run([(T0, bad, bad, True), (T0, 0.2, 1.0, True)]), T0)
    assert stats is not None
    assert stats.ewma_ttft_s == pytest.approx(0.2)
    assert stats.ewma_latency_s == pytest.approx(1.0)
    assert stats.samples == 2
    assert observation(POLICY, ttft_s=0.1, latency_s=None, ok=True, now=math.nan) is None
    assert update({}, ttft_s=0.1, latency_s=None, ok=True, now=math.inf) == {}


def test_update_is_pure():
    before = run([(T0, None, 1.0, True)])
    copy = dict(before)
    after = update(before, ttft_s=None, latency_s=5.0, ok=True, now=T0 + 1)
    assert before == copy
    assert after != before


def test_sums_of_two_replicas_add_up_to_what_one_process_would_have_seen():
    a_obs = [(T0 + i, None, 1.0, True) for i in range(0, 20, 2)]
    b_obs = [(T0 + i, None, 3.0, i % 4 == 1) for i in range(1, 20, 2)]
    a, b, both = run(a_obs), run(b_obs), run(sorted(a_obs + b_obs))
    merged: dict[int, SpeedSums] = {}
    for buckets in (b, a):  # any order
        for epoch, sums in buckets.items():
            merged = added(merged, epoch, sums)
    one, shared = summarize(both, T0 + 20), summarize(merged, T0 + 20)
    assert one is not None
    assert shared is not None
    assert shared.ewma_latency_s == pytest.approx(one.ewma_latency_s)
    assert shared.error_rate == pytest.approx(one.error_rate)
    assert shared.samples == one.samples == 20


def test_an_epoch_boundary_does_not_move_the_estimate():
    start = 600.0 * 2000  # an epoch boundary
    obs = [(start - 30 + i, None, 1.0 + i / 10, True) for i in range(60)]  # 30 s on each side
    buckets = run(obs)
    assert len(buckets) == 2
    # The same observations, all in one epoch (a policy whose epochs are long), give the same answer.
    long_epochs = SpeedPolicy(epoch_s=EPOCH_S * 10)
    same = summarize(run(obs, long_epochs), start + 30, long_epochs)
    stats = summarize(buckets, start + 30)
    assert stats is not None
    assert same is not None
    assert stats.ewma_latency_s == pytest.approx(same.ewma_latency_s, rel=1e-9)


def test_what_is_older_than_the_previous_epoch_is_forgotten():
    start = 600.0 * 2000
    buckets = run([(start + 1, None, 1.0, True)])
    assert summarize(buckets, start + EPOCH_S + 599) is not None  # the previous epoch: still read
    assert summarize(buckets, start + 2 * EPOCH_S) is None  # two epochs on: no data, to be explored again
    buckets = run([(start + 1, None, 1.0, True), (start + 2 * EPOCH_S, None, 2.0, True)])
    assert list(buckets) == [2002]  # and no longer kept
    assert summarize({2001: SpeedSums(1, 1.0, 0.0, 0.0, 0.0, 1.0, 3.0, start)}, start) is not None  # next epoch


def test_weights_stay_finite_for_a_whole_epoch_and_for_huge_times():
    policy = SpeedPolicy(half_life_s=5.0)  # the shortest half-life the default epoch allows, with margin
    buckets = run([(600.0 * 7 + 599.999, None, 1.0, True), (600.0 * 7, None, 3.0, True)], policy)
    stats = summarize(buckets, 600.0 * 7 + 599.999, policy)
    assert stats is not None
    assert stats.ewma_latency_s == pytest.approx(1.0)  # 10 minutes is 120 half-lives: the old one is gone
    assert summarize(run([(1e300, None, 1.0, True)]), 1e300) is not None


def test_a_policy_whose_weights_could_overflow_is_refused():
    with pytest.raises(ValueError, match="overflow"):
        SpeedPolicy(half_life_s=1.0, epoch_s=600.0)
    with pytest.raises(ValueError, match="positive"):
        SpeedPolicy(half_life_s=0.0)
    with pytest.raises(ValueError, match="positive"):
        SpeedPolicy(epoch_s=math.inf)


def test_sums_read_from_elsewhere_cannot_give_an_error_rate_outside_zero_to_one():
    weird = {1666: SpeedSums(count=3, weight=1.0, failed=5.0, last=T0)}
    stats = summarize(weird, 1666 * 600.0)
    assert stats is not None
    assert stats.error_rate == 1.0
    assert stats.ewma_latency_s is None
