"""MemoryStateStore: per-target cooldowns, circuits and speed in one process (SPEC §8, §9, DESIGN "Stores").

The default state store, and the fallback copy inside `RedisStateStore`.
Memory is bounded: what is healthy again is forgotten, and at most
`max_entries` targets (and as many probe claims, and as many targets' speed
sums) are kept, the least recently written going first, so pass-through
keys, each a target of its own, cannot grow it without bound. Speed sums
older than `latency` reads (see that module) are dropped as they age.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from middleware.stores.latency import DEFAULT_POLICY, SpeedPolicy, SpeedSums, added, observation, summarize
from middleware.stores.state_base import HEALTHY, CircuitPolicy, TargetState, TargetStats

DEFAULT_MAX_ENTRIES = 10_000


class MemoryStateStore:
    """A `StateStore` in a dict: target id -> `TargetState`; never raises, never awaits anything.

    `clock` (wall-clock seconds) decides when an entry is healthy again,
    when a probe claim runs out and which speed sums are still read;
    `failed` and `observe` use the `now` they are given.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        speed_policy: SpeedPolicy = DEFAULT_POLICY,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.clock = clock
        self.max_entries = max_entries
        self.speed_policy = speed_policy
        self._states: OrderedDict[str, TargetState] = OrderedDict()  # least recently written first
        self._probes: OrderedDict[str, float] = OrderedDict()  # target id -> when its claim runs out
        self._speeds: OrderedDict[str, dict[int, SpeedSums]] = OrderedDict()  # target id -> epoch -> sums
        self._keep = max(1, max_entries - max_entries // 10)  # what an overflow prunes down to

    def __len__(self) -> int:
        """How many targets have a state kept (healthy ones are not)."""
        return len(self._states)

    async def read(self, ids: Sequence[str]) -> list[TargetState]:
        """The state of each id, in order; HEALTHY when unknown or when everything in it has passed."""
        return [self.get(target_id) for target_id in ids]

    def get(self, target_id: str) -> TargetState:
        """The state of one id, synchronously (what `read` does for each)."""
        state = self._states.get(target_id)
        if state is None:
            return HEALTHY
        if self._forgettable(state, self.clock()):
            del self._states[target_id]
            return HEALTHY
        return state

    async def cool_down(self, target_id: str, until: float) -> None:
        """Rate-limited until `until`; the newest value wins, even if shorter."""
        self.remember(target_id, replace(self._states.get(target_id, HEALTHY), cool_until=until))

    async def failed(self, target_id: str, now: float, policy: CircuitPolicy) -> TargetState:
        """Count one failure; on reaching `policy.threshold` with the circuit closed, eject the target.

        A failure while the circuit is open (an attempt that was in flight
        when it opened) is counted but does not extend the ejection.
        """
        state = count_failure(self._states.get(target_id, HEALTHY), now, policy)
        self.remember(target_id, state)
        return state

    async def succeeded(self, target_id: str) -> None:
        """Forget failures and ejections (the circuit closes); a cooldown stays."""
        state = self._states.get(target_id)
        if state is not None:
            self.remember(target_id, TargetState(cool_until=state.cool_until))

    async def claim_probe(self, target_id: str, ttl_s: float) -> bool:
        """True for one caller per `ttl_s`: the first, and the first after the claim ran out."""
        now = self.clock()
        claimed_until = self._probes.get(target_id)
        if claimed_until is not None and claimed_until > now:
            return False
        self._probes[target_id] = now + ttl_s
        self._probes.move_to_end(target_id)
        if len(self._probes) > self.max_entries:
            self._prune_probes(now)
        return True

    def observe(self, target_id: str, *, ttft_s: float | None, latency_s: float | None, ok: bool, now: float) -> None:
        """Count one try of `target_id` in its speed estimate (`latency.observation` says what counts)."""
        found = observation(self.speed_policy, ttft_s=ttft_s, latency_s=latency_s, ok=ok, now=now)
        if found is not None:
            self.add_speed(target_id, *found)

    async def speeds(self, ids: Sequence[str]) -> list[TargetStats | None]:
        """The speed of each id, in order; None when nothing was observed lately."""
        now = self.clock()
        speeds = self._speeds
        return [
            None if (buckets := speeds.get(target_id)) is None else summarize(buckets, now, self.speed_policy)
            for target_id in ids
        ]

    def add_speed(self, target_id: str, epoch: int, sums: SpeedSums) -> None:
        """Add one epoch's sums to `target_id`'s (what `observe` does; `RedisStateStore` feeds its copy so)."""
        self._keep_speed(target_id, added(self._speeds.get(target_id, {}), epoch, sums))

    def remember_speed(self, target_id: str, buckets: Mapping[int, SpeedSums]) -> None:
        """Replace `target_id`'s speed sums (epoch -> sums); `RedisStateStore` mirrors the shared ones with it."""
        if not buckets:
            self._speeds.pop(target_id, None)
            return
        self._keep_speed(target_id, dict(buckets))

    def _keep_speed(self, target_id: str, buckets: dict[int, SpeedSums]) -> None:
        self._speeds[target_id] = buckets
        self._speeds.move_to_end(target_id)
        if len(self._speeds) > self.max_entries:
            self._prune_speeds()

    def state(self) -> str:
        """Always "memory" (for /readyz)."""
        return "memory"

    async def aclose(self) -> None:
        """Nothing to release."""

    def remember(self, target_id: str, state: TargetState) -> None:
        """Replace what is known about `target_id` (`RedisStateStore` mirrors the shared state with it)."""
        now = self.clock()
        if self._forgettable(state, now):
            self._states.pop(target_id, None)
            return
        self._states[target_id] = state
        self._states.move_to_end(target_id)
        if len(self._states) > self.max_entries:
            self._prune_states(now)

    @staticmethod
    def _forgettable(state: TargetState, now: float) -> bool:
        # Half-open (open_until passed, ejections kept) is not forgettable:
        # the next failure must eject for longer.
        return state.clean and state.cool_until <= now

    def _prune_states(self, now: float) -> None:
        # One sweep per overflow, not per write: what is healthy goes first,
        # then the least recently written, with some room left so the next
        # writes do not sweep again at once.
        for target_id, state in list(self._states.items()):
            if self._forgettable(state, now):
                del self._states[target_id]
        while len(self._states) > self._keep:
            self._states.popitem(last=False)

    def _prune_speeds(self) -> None:
        # Like _prune_states: what can no longer be read first, then the least recently written.
        oldest = self.speed_policy.epoch(self.clock()) - 1
        for target_id, buckets in list(self._speeds.items()):
            if max(buckets) < oldest:
                del self._speeds[target_id]
        while len(self._speeds) > self._keep:
            self._speeds.popitem(last=False)

    def _prune_probes(self, now: float) -> None:
        for target_id, claimed_until in list(self._probes.items()):
            if claimed_until <= now:
                del self._probes[target_id]
        while len(self._probes) > self._keep:
            self._probes.popitem(last=False)


def count_failure(state: TargetState, now: float, policy: CircuitPolicy) -> TargetState:
    """`state` after one more failure at `now`: ejected (for longer each time) when it reaches the threshold.

    Shared by both stores so that memory and Redis agree on the policy.
    """
    failures = state.failures + 1
    if failures >= policy.threshold and state.open_until <= now:
        ejections = state.ejections + 1
        return replace(state, failures=failures, ejections=ejections, open_until=now + policy.ejection_s(ejections))
    return replace(state, failures=failures)
