"""The per-call object every layer shares, kept at scope["sluice.call"] (DESIGN "The per-call object").

One writer per field: the error boundary makes the Call and its request id,
auth writes the tenant, routing writes the route, the budget layer the
reservation, strategies write the target (and how many alternatives are
left), the forwarder writes one `AttemptRecord` per upstream try and the
response facts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from middleware.body import parse_json_object, read_body
from middleware.stores.state_base import TargetState
from middleware.types import Receive, Scope

CALL_KEY = "sluice.call"


@dataclass(frozen=True, slots=True)
class Target:
    """One place a call can go: a provider, its own model id, and how to reach it."""

    provider: str
    model: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    auth_style: str = "bearer"
    stream_options: bool = True

    @property
    def name(self) -> str:
        """`provider/model`, the name clients and logs use."""
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class Variant:
    """One arm of an A/B route: a name (what `X-Sluice-Variant` says), its chain, its weight."""

    name: str
    targets: tuple[Target, ...]
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Route:
    """What a requested model resolved to: targets in order and how to use them."""

    name: str
    targets: tuple[Target, ...]
    strategy: str = "fallback"
    racers: int = 0  # how many targets a race starts (0: every target, up to the race layer's cap)
    hedge_delay_ms: float | str | None = None  # delay before each further racer; "auto": live p95 TTFT
    # The provider a pass-through key was meant for: the first target as resolved, kept when a
    # strategy (cheapest, fastest) reorders the targets for one call.
    home: str | None = None
    variants: tuple[Variant, ...] = ()  # an `ab` route's arms (its targets: every arm's, for budgets)


@dataclass(slots=True)
class AttemptRecord:
    """One upstream try of a call, for the ledger (SPEC §8, §10). Times are seconds since the call began."""

    target: str
    provider: str
    model: str
    started_s: float
    status: int | None = None  # the upstream's status; None when it never answered
    error: str | None = None  # why the try failed, when it did
    first_byte_s: float | None = None
    duration_s: float | None = None
    # The upstream may have accepted (and charged) a try that did not deliver an answer:
    # a timeout or reset after sending, a 500/502/504, a cut stream, a cancelled race loser.
    possibly_billed: bool = False
    outcome: str = "pending"  # "ok", "failed", "cancelled" (race loser, client gone)


@dataclass(slots=True)
class Call:
    """Everything the layers of one call share."""

    request_id: str = ""
    tenant: str | None = None
    client_key: str | None = field(default=None, repr=False)
    body: bytes | None = field(default=None, repr=False)
    route: Route | None = None
    target: Target | None = None
    # Shared (not copied) with forks, so racers' tries are all counted on the call.
    tries: list[AttemptRecord] = field(default_factory=list)
    last_try: AttemptRecord | None = None  # this call's (or racer's) latest try
    # How many other targets a strategy could still try after this one; 0 lets the
    # backoff layer wait out a short cooldown in place (SPEC §8).
    alternatives: int = 0
    waited: bool = False  # a cooldown was already waited out in this call (at most once)
    deadline: float | None = None  # event-loop time by which every attempt must be done
    # The health snapshot of the targets, read from the state store once per call.
    target_states: dict[str, TargetState] | None = field(default=None, repr=False)
    status: int | None = None
    cache_status: str = "BYPASS"
    cache_header_sent: bool = False  # the cache layer stamped X-Sluice-Cache itself
    usage: dict[str, Any] | None = None
    cost_usd: float | None = None
    error: str | None = None
    client_gone: bool = False
    # What the budget layer holds against the key's budget (a `proxy.budgets.Reservation`),
    # for LedgerMiddleware to settle; racers' forks share it but only the call is settled.
    reservation: Any = None
    # A call the gateway makes to itself (an A/B judge's, `proxy.experiments.judge`): its
    # tenant is preset, so auth lets it through, and this says what it is for.
    internal: Any = None
    started_at: float = field(default_factory=time.perf_counter)
    _json: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, scope: Scope) -> Call:
        """The call of this scope, created on first use (so a middleware also works alone)."""
        call: Call | None = scope.get(CALL_KEY)
        if call is None:
            call = scope[CALL_KEY] = cls()
        return call

    async def read_body(self, scope: Scope, receive: Receive, limit: int) -> bytes:
        """The request body, read from `receive` the first time only."""
        if self.body is None:
            self.body = await read_body(scope, receive, limit)
        return self.body

    def json(self) -> dict[str, Any]:
        """The body parsed as a JSON object (once); InvalidRequest when it is not one."""
        if self._json is None:
            self._json = parse_json_object(self.body or b"")
        return self._json

    @property
    def attempts(self) -> int:
        """Upstream tries made so far (the X-Sluice-Attempts value)."""
        return len(self.tries)

    @contextlib.contextmanager
    def sending(self, body: bytes, data: dict[str, Any]) -> Iterator[None]:
        """For the block, the body the layers inside see is `body` (parsed: `data`); the client's after.

        A translating layer (Anthropic Messages -> Chat Completions) uses it for one try,
        so the next try, maybe to a target that takes the client's body as sent, gets it back.
        """
        saved = self.body, self._json
        self.body, self._json = body, data
        try:
            yield
        finally:
            self.body, self._json = saved

    def client_key_for(self, target: Target) -> str | None:
        """The client's own (pass-through) key when `target` may receive it, else None.

        SPEC §5: it goes only to the provider the call first resolved to, never
        to a fallback or race target of another provider.
        """
        if self.client_key is None:
            return None
        route = self.route
        home = (route.home or route.targets[0].provider) if route and route.targets else target.provider
        return self.client_key if target.provider == home else None

    def fork(self, target: Target) -> Call:
        """A copy for one racer, aimed at `target`; shared facts are copied, not aliased."""
        return dataclasses.replace(self, target=target, status=None, usage=None, error=None)
