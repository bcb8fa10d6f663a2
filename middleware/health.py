"""TargetHealth: what is known about each target, and the plan a strategy follows from it (SPEC §8).

A target is (provider, model, provider key): two keys for one model cool down
apart, and a pass-through client's key is its own target. The state lives in
a `StateStore` (memory, or Redis shared by replicas); each call reads the
states of its route's targets once (one round trip) into `call.target_states`
and updates that snapshot as it learns.

- A 429 cools the target down until its reset (`retry_after.reset_after`); with
  no usable reset header, for a full-jitter exponential backoff (counted as a
  failure, so its exponent grows); a quota-exhausted 429 (`insufficient_quota`)
  for `QUOTA_COOLDOWN_S` unless it says when.
- 5xx, 401/403/404, connect failures and timeouts count as consecutive failures;
  `CircuitPolicy.threshold` of them eject the target (the circuit opens) for a
  time that grows while it keeps failing; a success closes it.
- Never every target at once: when none is available, the plan still holds the
  least-bad one (the earliest to come back).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from middleware.budget import RetryBudget
from middleware.call import Call, Target
from middleware.retry_after import quota_exhausted, reset_after
from middleware.stores.state_base import HEALTHY, CircuitPolicy, StateStore, TargetState
from middleware.stores.state_memory import MemoryStateStore
from middleware.types import Headers

QUOTA_COOLDOWN_S = 60.0  # an exhausted quota is not a throttle: give it a minute before probing again
JITTER_BASE_S = 1.0
JITTER_MAX_S = 30.0
FIRST_BYTE_SAMPLES = 200  # per target, for "auto" hedging
MIN_SAMPLES = 20
MAX_WINDOWS = 1024


@functools.lru_cache(maxsize=4096)
def target_id(provider: str, model: str, key: str) -> str:
    """The state key of a target: `provider/model#<key digest>`; the key itself is never stored."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16] if key else "-"
    return f"{provider}/{model}#{digest}"


@dataclass(frozen=True, slots=True)
class Block:
    """Why a target should not be tried now, and until when (wall clock)."""

    kind: Literal["cooling", "open", "half_open"]
    until: float


@dataclass(frozen=True, slots=True)
class Plan:
    """The targets a call will try, in order, and those it skips (with why)."""

    tries: list[Target]
    skipped: list[tuple[Target, Block]]


class TargetHealth:
    """Cooldowns, circuits and the retry budget, shared by the backoff layer and the strategies."""

    def __init__(
        self,
        store: StateStore | None = None,
        *,
        policy: CircuitPolicy | None = None,
        budget: RetryBudget | None = None,
        max_wait_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.store: StateStore = store or MemoryStateStore(clock=clock)
        self.policy = policy or CircuitPolicy()
        self.budget = budget or RetryBudget()
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.rng = rng
        self._first_bytes: dict[str, deque[float]] = {}

    def id_of(self, call: Call, target: Target) -> str:
        """The target's state key, with the key this call would send it."""
        return target_id(target.provider, target.model, target.api_key or call.client_key_for(target) or "")

    async def load(self, call: Call, targets: Iterable[Target] = ()) -> dict[str, TargetState]:
        """The call's snapshot of its targets' states; read from the store once per call (one round trip).

        With no `targets`: the route's targets and the current one. Ids already in the
        snapshot are not read again, so the backoff layer's check after a strategy's
        plan costs one dict lookup.
        """
        states = call.target_states
        if states is None:
            states = call.target_states = {}
        elif not targets and call.target is not None and self.id_of(call, call.target) in states:
            return states
        wanted = [self.id_of(call, t) for t in (targets or (call.route.targets if call.route else ()))]
        if call.target is not None:
            wanted.append(self.id_of(call, call.target))
        missing = [i for i in dict.fromkeys(wanted) if i not in states]
        if missing:
            states.update(zip(missing, await self.store.read(missing), strict=True))
        return states

    def state_of(self, call: Call, target: Target) -> TargetState:
        """The snapshot's state of `target` (HEALTHY when unknown)."""
        states = call.target_states or {}
        return states.get(self.id_of(call, target), HEALTHY)

    def block(self, call: Call, target: Target, now: float | None = None) -> Block | None:
        """Why `target` should not be tried now, or None."""
        state = self.state_of(call, target)
        if state is HEALTHY:
            return None
        now = self.clock() if now is None else now
        if state.cool_until > now:
            return Block("cooling", state.cool_until)
        if state.open_until > now:
            return Block("open", state.open_until)
        if state.failures >= self.policy.threshold:
            return Block("half_open", now)
        return None

    async def plan(self, call: Call, targets: Iterable[Target]) -> Plan:
        """Available targets in order (half-open ones included: they probe); if none, the least-bad blocked one."""
        targets = list(targets)
        await self.load(call, targets)
        now = self.clock()
        tries: list[Target] = []
        blocked: list[tuple[Target, Block]] = []
        for target in targets:
            block = self.block(call, target, now)
            if block is None or block.kind == "half_open":
                tries.append(target)
            else:
                blocked.append((target, block))
        if not tries and blocked:
            least_bad = min(range(len(blocked)), key=lambda i: blocked[i][1].until)
            tries.append(blocked.pop(least_bad)[0])
        return Plan(tries, blocked)

    async def claim_probe(self, call: Call, target: Target) -> bool:
        """The one probe of a half-open circuit, across replicas, for one ejection's length."""
        state = self.state_of(call, target)
        return await self.store.claim_probe(self.id_of(call, target), self.policy.ejection_s(state.ejections))

    async def rate_limited(self, call: Call, target: Target, headers: Headers, body: bytes) -> tuple[float, bool]:
        """Learn from a 429: cool the target down. Returns (seconds cooling, whether its quota is exhausted)."""
        now = self.clock()
        reset = reset_after(headers, now)
        quota = quota_exhausted(body)
        if reset is not None:
            cool = reset
        elif quota:
            cool = QUOTA_COOLDOWN_S
        else:
            # No usable reset: full-jitter exponential backoff on the consecutive failures.
            state = await self.failed(call, target)
            cool = self.rng() * min(JITTER_MAX_S, JITTER_BASE_S * 2 ** min(max(state.failures - 1, 0), 30))
        target_key = self.id_of(call, target)
        await self.store.cool_down(target_key, now + cool)
        self._remember(call, target_key, cool_until=now + cool)
        return cool, quota

    async def failed(self, call: Call, target: Target) -> TargetState:
        """Count one failure of `target`; the circuit opens at the threshold."""
        target_key = self.id_of(call, target)
        state = await self.store.failed(target_key, self.clock(), self.policy)
        if call.target_states is not None:
            call.target_states[target_key] = state
        return state

    async def succeeded(self, call: Call, target: Target) -> None:
        """`target` answered: close its circuit (a store write only when there was something to forget)."""
        state = self.state_of(call, target)
        if state.clean:
            return
        target_key = self.id_of(call, target)
        await self.store.succeeded(target_key)
        self._remember(call, target_key, failures=0, ejections=0, open_until=0.0)

    def observe(self, call: Call, target: Target, *, ok: bool) -> None:
        """Feed `target`'s speed estimate (for `fastest`) with this call's try: its first byte for a
        stream, its whole duration otherwise, and whether it worked. No I/O here: the store batches."""
        record = call.last_try
        stream = call.body is not None and call.json().get("stream") is True
        ttft = record.first_byte_s if record is not None and stream else None
        latency = record.duration_s if record is not None and not stream else None
        self.store.observe(self.id_of(call, target), ttft_s=ttft, latency_s=latency, ok=ok, now=self.clock())

    def observe_first_byte(self, call: Call, target: Target, seconds: float) -> None:
        """Remember one time to first byte of `target` (for "auto" hedging; kept per process)."""
        window = self._first_bytes.get(target_key := self.id_of(call, target))
        if window is None:
            if len(self._first_bytes) >= MAX_WINDOWS:
                self._first_bytes.pop(next(iter(self._first_bytes)))
            window = self._first_bytes[target_key] = deque(maxlen=FIRST_BYTE_SAMPLES)
        window.append(seconds)

    def first_byte_p95(self, call: Call, target: Target) -> float | None:
        """The p95 of `target`'s recent times to first byte, or None with fewer than `MIN_SAMPLES`."""
        window = self._first_bytes.get(self.id_of(call, target))
        if window is None or len(window) < MIN_SAMPLES:
            return None
        ordered = sorted(window)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]

    def retry_after(self, call: Call, targets: Iterable[Target]) -> int | None:
        """Whole seconds until the first of `targets` stops cooling down (for a 429's Retry-After)."""
        now = self.clock()
        waits = [s.cool_until - now for t in targets if (s := self.state_of(call, t)).cool_until > now]
        return max(1, math.ceil(min(waits))) if waits else None

    def _remember(self, call: Call, target_key: str, **changes: Any) -> None:
        states = call.target_states
        if states is not None:
            states[target_key] = dataclasses.replace(states.get(target_key, HEALTHY), **changes)
