"""Speed statistics for `fastest` (SPEC §9): a time-decayed average whose sums replicas can add up.

The rule. An observation (one try of a target) made `age` seconds ago weighs
2 ** (-age / half_life_s): with the default half-life of 30 s, one made half
a minute ago counts half as much as one made now. The estimates are weighted
means: of the time to first byte over streams that worked, of the duration
over non-streams that worked, and of 1 (failed) / 0 (worked) over every try.
That is an exponentially weighted moving average (EWMA) in time.

Why in time and not alpha per sample: an EWMA with a fixed alpha per
observation depends on the order of the observations, so replicas could only
share one by serialising every update through a read-modify-write. A
weighted mean is a ratio of sums, and sums add up in any order: each replica
adds its own, every observation counts, and no update has to read first. It
also means the same thing at any traffic: the last minute or so, not the last
five calls (which at 1,000 calls a second is five milliseconds).

Why sums can be stored although weights change with time: the ratio of two
weights does not depend on when it is taken, so weights are kept relative to
a fixed time, the start of the observation's epoch (`epoch_s`, 10 minutes):
weight = exp((t - start) / tau), tau = half_life_s / ln 2. Within an epoch it
stays below exp(epoch_s / tau) (about 10**6 by default), far from overflow;
the sums of a neighbouring epoch are brought to the same base by one factor
exp(±epoch_s / tau). A reading uses the previous, current and next epoch only
(the next one for a replica whose clock runs ahead), so a target not observed
for 10 to 20 minutes reads as "no data" (None): `fastest` explores it again
rather than trusting an old number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from middleware.stores.state_base import TargetStats

HALF_LIFE_S = 30.0
EPOCH_S = 600.0
# exp(200) ~ 7e86: a sum of weights stays far below float's 1.8e308 even over 10**200 observations.
MAX_EPOCH_OVER_TAU = 200.0

__all__ = [
    "EPOCH_S",
    "HALF_LIFE_S",
    "SpeedPolicy",
    "SpeedSums",
    "TargetStats",
    "added",
    "observation",
    "summarize",
    "update",
]


@dataclass(frozen=True, slots=True)
class SpeedPolicy:
    """How observations are weighted (`half_life_s`) and how long they are kept (`epoch_s`, see the module).

    Every replica sharing a Redis must use the same policy: the stored sums are
    relative to it.
    """

    half_life_s: float = HALF_LIFE_S
    epoch_s: float = EPOCH_S
    tau: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.half_life_s > 0 and self.epoch_s > 0 and math.isfinite(self.half_life_s + self.epoch_s)):
            raise ValueError("half_life_s and epoch_s must be positive and finite")
        object.__setattr__(self, "tau", self.half_life_s / math.log(2))
        if self.epoch_s / self.tau > MAX_EPOCH_OVER_TAU:
            raise ValueError("epoch_s must be at most ~288 half-lives (weights would overflow)")

    def epoch(self, t: float) -> int:
        """The epoch that wall-clock time `t` falls in."""
        return math.floor(t / self.epoch_s)

    def weight(self, t: float, epoch: int) -> float:
        """The weight of an observation at `t`, relative to the start of `epoch` (t's own)."""
        exponent = (t - epoch * self.epoch_s) / self.tau
        # Clamped: float rounding of a huge `t` must not push it out of the epoch's range.
        return math.exp(min(max(exponent, 0.0), self.epoch_s / self.tau))


DEFAULT_POLICY = SpeedPolicy()


@dataclass(frozen=True, slots=True)
class SpeedSums:
    """One target's observations within one epoch, as sums that add up across replicas.

    Weights are relative to the start of the epoch (`SpeedPolicy.weight`).
    """

    count: int = 0
    weight: float = 0.0  # of every observation
    failed: float = 0.0  # of the failed ones
    ttft_weight: float = 0.0  # of those with a time to first byte
    ttft_sum: float = 0.0  # weight * time to first byte
    latency_weight: float = 0.0
    latency_sum: float = 0.0
    last: float = -math.inf  # wall-clock time of the newest observation

    def __add__(self, other: SpeedSums) -> SpeedSums:
        return SpeedSums(
            self.count + other.count,
            self.weight + other.weight,
            self.failed + other.failed,
            self.ttft_weight + other.ttft_weight,
            self.ttft_sum + other.ttft_sum,
            self.latency_weight + other.latency_weight,
            self.latency_sum + other.latency_sum,
            max(self.last, other.last),
        )


def _seconds(value: float | None) -> float | None:
    # NaN or infinity would poison a shared sum for as long as it lives.
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def observation(
    policy: SpeedPolicy, *, ttft_s: float | None, latency_s: float | None, ok: bool, now: float
) -> tuple[int, SpeedSums] | None:
    """One try as its epoch and sums; None when `now` is not a usable time.

    A failed try's timings are left out (a fast error must not make a broken
    target look fast): it only counts in the error rate. Negative or
    non-finite timings are left out too.
    """
    if not math.isfinite(now):
        return None
    epoch = policy.epoch(now)
    w = policy.weight(now, epoch)
    ttft = _seconds(ttft_s) if ok else None
    latency = _seconds(latency_s) if ok else None
    return epoch, SpeedSums(
        count=1,
        weight=w,
        failed=0.0 if ok else w,
        ttft_weight=0.0 if ttft is None else w,
        ttft_sum=0.0 if ttft is None else w * ttft,
        latency_weight=0.0 if latency is None else w,
        latency_sum=0.0 if latency is None else w * latency,
        last=now,
    )


def added(buckets: Mapping[int, SpeedSums], epoch: int, sums: SpeedSums) -> dict[int, SpeedSums]:
    """`buckets` (epoch -> sums) with `sums` added to `epoch`'s, less the epochs too old to be read again."""
    merged = dict(buckets)
    found = merged.get(epoch)
    merged[epoch] = sums if found is None else found + sums
    if len(merged) > 1:
        newest = max(merged)
        if min(merged) < newest - 1:
            merged = {e: s for e, s in merged.items() if e >= newest - 1}
    return merged


def update(
    buckets: Mapping[int, SpeedSums],
    *,
    ttft_s: float | None,
    latency_s: float | None,
    ok: bool,
    now: float,
    policy: SpeedPolicy = DEFAULT_POLICY,
) -> dict[int, SpeedSums]:
    """The update rule: `buckets` after one try (a copy, unchanged when `now` is not a usable time)."""
    found = observation(policy, ttft_s=ttft_s, latency_s=latency_s, ok=ok, now=now)
    return dict(buckets) if found is None else added(buckets, *found)


def summarize(buckets: Mapping[int, SpeedSums], now: float, policy: SpeedPolicy = DEFAULT_POLICY) -> TargetStats | None:
    """The estimates at `now` from the previous, current and next epoch's sums; None when they hold nothing."""
    current = policy.epoch(now)
    # Plain floats rather than SpeedSums: this runs for each target on every `fastest` call.
    count = 0
    weight = failed = ttft_weight = ttft_sum = latency_weight = latency_sum = 0.0
    last = -math.inf
    for epoch, sums in buckets.items():
        if current - 1 <= epoch <= current + 1:
            factor = 1.0 if epoch == current else math.exp((epoch - current) * policy.epoch_s / policy.tau)
            count += sums.count
            weight += sums.weight * factor
            failed += sums.failed * factor
            ttft_weight += sums.ttft_weight * factor
            ttft_sum += sums.ttft_sum * factor
            latency_weight += sums.latency_weight * factor
            latency_sum += sums.latency_sum * factor
            last = max(last, sums.last)
    if count <= 0:
        return None
    return TargetStats(
        ewma_ttft_s=ttft_sum / ttft_weight if ttft_weight > 0 else None,
        ewma_latency_s=latency_sum / latency_weight if latency_weight > 0 else None,
        # Clamped: sums read from Redis may have been written by something else.
        error_rate=min(1.0, max(0.0, failed / weight)) if weight > 0 else 0.0,
        samples=count,
        updated_at=last,
    )
