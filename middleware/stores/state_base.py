"""The resilience layer's shared state: per-target cooldowns and circuit counters (SPEC §8, DESIGN "Stores").

A target id names (provider, model, provider key) — see `middleware.health.target_id`.
Times are wall-clock seconds (`time.time()`), so replicas sharing Redis agree on them.

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

    def state(self) -> str:
        """For /readyz: "memory", or for Redis "up" / "down"."""
        ...

    async def aclose(self) -> None:
        """Release the backend's resources; never raises."""
        ...
