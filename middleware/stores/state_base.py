"""The resilience layer's shared state: per-target cooldowns, circuits and speed (SPEC §8, §9, DESIGN "Stores").

A target id names (provider, model, provider key) — see `middleware.health.target_id`.
Times are wall-clock seconds (`time.time()`), so replicas sharing Redis agree on them.

Speed (for the `fastest` strategy) is observed after each try, without I/O,
and read back as a `TargetStats` per target; how observations are weighted
and shared by replicas is in `middleware.stores.latency`.

Implementations: `MemoryStateStore` (the default, one process) and
`RedisStateStore` (replicas). Neither raises because its backend failed: the
Redis one falls back to its own memory copy, so a Redis outage only makes
the state local, never fails or slows a call beyond one op deadline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TargetState:
    """What is known about one target. The zero value means "healthy, nothing known"."""

    cool_until: float = 0.0  # rate-limited until then (a 429's reset)
    open_until: float = 0.0  # circuit open (ejected) until then
    failures: int = 0  # consecutive failed attempts
    ejections: int = 0  # consecutive ejections; grows the next one

    @property
    def clean(self) -> bool:
        """True when there is nothing to forget on success (so a success needs no write)."""
        return self.failures == 0 and self.ejections == 0 and self.open_until == 0.0


HEALTHY = TargetState()


@dataclass(frozen=True, slots=True)
class TargetStats:
    """How fast and how reliable one target has been lately (for `fastest`); see `latency.summarize`.

    Each average weighs an observation by its age (it halves every
    `SpeedPolicy.half_life_s`), over the observations of all replicas.
    """

    ewma_ttft_s: float | None  # time to first byte of streams; None when no stream worked lately
    ewma_latency_s: float | None  # whole duration of non-streams; None when none worked lately
    error_rate: float  # the same average of 1 (failed) and 0 (worked), in [0, 1]
    samples: int  # observations behind these numbers (the last one to two `SpeedPolicy.epoch_s`)
    updated_at: float  # wall-clock time of the newest observation


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    """When a circuit opens and for how long (SPEC §8 "outlier ejection").

    After `threshold` consecutive failures the target is ejected for
    `base_s * 2**(ejections-1)` seconds, at most `max_s`. When the ejection
    ends the circuit is half-open: the failure count stays at the threshold,
    so the next failure ejects again (for longer), and a success closes it.
    """

    threshold: int = 5
    base_s: float = 1.0
    max_s: float = 8.0

    def ejection_s(self, ejections: int) -> float:
        """How long the `ejections`-th ejection in a row lasts."""
        return float(min(self.max_s, self.base_s * 2 ** max(0, min(ejections - 1, 30))))


class StateStore(Protocol):
    """Per-target state shared by the replicas of a gateway."""

    async def read(self, ids: Sequence[str]) -> list[TargetState]:
        """The state of each id, in order (HEALTHY when unknown), in one round trip."""
        ...

    async def cool_down(self, target_id: str, until: float) -> None:
        """Rate-limited until `until` (wall clock). The newest value wins, even if shorter."""
        ...

    async def failed(self, target_id: str, now: float, policy: CircuitPolicy) -> TargetState:
        """Count one failure (atomically across replicas); open the circuit on reaching the threshold.

        Returns the state after the update.
        """
        ...

    async def succeeded(self, target_id: str) -> None:
        """Forget failures and ejections: the circuit closes."""
        ...

    async def claim_probe(self, target_id: str, ttl_s: float) -> bool:
        """True for one caller per `ttl_s` across replicas: the one probe of a half-open circuit."""
        ...

    def observe(self, target_id: str, *, ttft_s: float | None, latency_s: float | None, ok: bool, now: float) -> None:
        """Count one try of `target_id` that ended at `now` (wall clock): never I/O, never raises.

        `ttft_s` is a stream's time to first byte, `latency_s` a non-stream's
        duration; either may be None. The timings of a failed try are not
        averaged (a fast error must not make a broken target look fast); the
        failure counts in `error_rate` instead.
        """
        ...

    async def speeds(self, ids: Sequence[str]) -> list[TargetStats | None]:
        """The speed of each id, in order (None when nothing was observed lately), in at most one round trip."""
        ...

    def state(self) -> str:
        """For /readyz: "memory", or for Redis "up" / "down"."""
        ...

    async def aclose(self) -> None:
        """Push what is still pending, stop background work and release the backend; never raises."""
        ...
