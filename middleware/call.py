"""The per-call object every layer shares, kept at scope["sluice.call"] (DESIGN "The per-call object").

One writer per field: the error boundary makes the Call and its request id,
auth writes the tenant, routing writes the route, strategies write the
target, the forwarder writes attempts and the response facts.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from middleware.body import parse_json_object, read_body
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
class Route:
    """What a requested model resolved to: targets in order and how to use them."""

    name: str
    targets: tuple[Target, ...]
    strategy: str = "fallback"


@dataclass(slots=True)
class Call:
    """Everything the layers of one call share."""

    request_id: str = ""
    tenant: str | None = None
    client_key: str | None = field(default=None, repr=False)
    body: bytes | None = field(default=None, repr=False)
    route: Route | None = None
    target: Target | None = None
    attempts: int = 0
    status: int | None = None
    cache_status: str = "BYPASS"
    cache_header_sent: bool = False  # the cache layer stamped X-Sluice-Cache itself
    usage: dict[str, Any] | None = None
    cost_usd: float | None = None
    error: str | None = None
    client_gone: bool = False
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

    def client_key_for(self, target: Target) -> str | None:
        """The client's own (pass-through) key when `target` may receive it, else None.

        SPEC §5: it goes only to the provider the call first resolved to, never
        to a fallback or race target of another provider.
        """
        if self.client_key is None:
            return None
        home = self.route.targets[0].provider if self.route and self.route.targets else target.provider
        return self.client_key if target.provider == home else None

    def fork(self, target: Target) -> Call:
        """A copy for one racer, aimed at `target`; shared facts are copied, not aliased."""
        return dataclasses.replace(self, target=target, attempts=0, status=None, usage=None, error=None)
