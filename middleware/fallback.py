"""FallbackMiddleware: try a route's targets in order until one answers (SPEC §8, §9 `fallback`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

from middleware.attempt import RETRIABLE_STATUSES, Attempt
from middleware.call import Call, Target
from middleware.errors import RateLimited, SluiceError, TargetUnavailable, UpstreamError, UpstreamTimeout
from middleware.health import Block, TargetHealth
from middleware.types import ASGIApp, Receive, Scope, Send

RATE_LIMITED = 429


@dataclass(frozen=True, slots=True)
class FallbackOptions:
    """Options for FallbackMiddleware: which statuses move on to the next target."""

    retriable: frozenset[int] = RETRIABLE_STATUSES


class FallbackMiddleware:
    """Re-runs the inside once per target of `call.route` until an attempt commits.

    Each attempt holds its response start until its first body byte, and a JSON
    body until its end (see `Attempt`), so a target that fails before that costs
    the client nothing but time. Targets cooling down or ejected are skipped (see `TargetHealth.plan`),
    every try after the first needs the retry budget, and all tries share the
    call's deadline. After every target failed: with a single try, that
    target's own answer is relayed as it came (there was nothing to fall back
    to); otherwise 429 when every target was rate-limited, 504 when the
    deadline passed, else 502 naming the last failure.
    """

    def __init__(
        self, app: ASGIApp, options: FallbackOptions | None = None, *, health: TargetHealth | None = None
    ) -> None:
        self.app = app
        self.options = options or FallbackOptions()
        self.health = health or TargetHealth()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        call = Call.of(scope)
        route = call.route
        with self.health.budget.call():
            if route is None or len(route.targets) == 1:
                # Nothing to fall back to: the one target's answer goes out as it comes.
                call.alternatives = 0
                await self.app(scope, receive, send)
                return
            failures = await self.run(scope, receive, send, list(usable_targets(call, route.targets)))
            if failures is not None:
                await answer_all_failed(call, self.health, failures, send)

    async def run(self, scope: Scope, receive: Receive, send: Send, targets: list[Target]) -> Failures | None:
        """Try `targets` in plan order; None once one committed (or the client left), else every failure."""
        call = Call.of(scope)
        plan = await self.health.plan(call, targets)
        failures: Failures = [(t, None, skipped_error(t, b)) for t, b in plan.skipped]
        budget = self.health.budget
        for position, target in enumerate(plan.tries):
            if _past_deadline(call):
                failures.append((target, None, UpstreamTimeout("the call's deadline passed before this target")))
                break
            call.target = target
            call.alternatives = len(plan.tries) - position - 1
            call.error = None  # each attempt reports its own failure
            retrying = call.attempts > 0  # any try after the call's first needs the budget
            if retrying and not budget.acquire():
                failures.append((target, None, TargetUnavailable("the retry budget is spent")))
                break
            attempt = Attempt(send, self.options.retriable, until="json_body")
            try:
                await self.app(scope, receive, attempt.send)
            except UpstreamError as exc:
                if attempt.committed:
                    raise
                failures.append((target, None, exc))
                continue
            finally:
                if retrying:
                    budget.release()
            if attempt.committed or call.client_gone:
                return None
            failures.append((target, attempt, None))
        return failures


Failures = list[tuple[Target, Attempt | None, SluiceError | None]]


def usable_targets(call: Call, targets: tuple[Target, ...]) -> Iterator[Target]:
    """`targets`, skipping any with no key of its own that the client's key may not reach (SPEC §5)."""
    for target in targets:
        if target.api_key is None and call.client_key is not None and call.client_key_for(target) is None:
            continue
        yield target


def skipped_error(target: Target, block: Block) -> SluiceError:
    """The failure recorded for a target the plan skipped (cooling: rate-limited; ejected: unavailable)."""
    if block.kind == "cooling":
        return RateLimited(f"{target.name} is rate-limited")
    return TargetUnavailable(f"{target.name} is failing; its circuit is open")


def _past_deadline(call: Call) -> bool:
    return call.deadline is not None and asyncio.get_running_loop().time() >= call.deadline


async def answer_all_failed(call: Call, health: TargetHealth, failures: Failures, send: Send) -> None:
    """Every target failed: relay a lone answer as sent, else 429 / 504 / 502 in the error shape (SPEC §6)."""
    if not failures:
        raise TargetUnavailable("no target of this route can be tried")
    if len(failures) == 1:
        _, attempt, error = failures[0]
        if attempt is not None and attempt.body is not None:
            await attempt.relay()
            return
        if error is not None:
            raise error
    if all(_rate_limited(a, e) for _, a, e in failures):
        seconds = health.retry_after(call, [t for t, _, _ in failures])
        headers = [(b"retry-after", str(seconds).encode())] if seconds is not None else []
        raise RateLimited(f"all {len(failures)} targets are rate-limited", headers=headers)
    if _past_deadline(call):
        raise UpstreamTimeout(f"the call's deadline passed after {call.attempts} attempts")
    target, attempt, error = failures[-1]
    last = f"{target.name} answered {attempt.status}" if attempt is not None else (error.message if error else "")
    untried = len(failures) - call.attempts
    # Say when some were never tried (cooling, ejected, out of budget), or "all 3 failed" misleads.
    how = f" ({call.attempts} tried, {untried} skipped)" if untried > 0 else ""
    raise UpstreamError(f"all {len(failures)} targets failed{how}; the last: {last}")


def _rate_limited(attempt: Attempt | None, error: SluiceError | None) -> bool:
    return (attempt is not None and attempt.status == RATE_LIMITED) or isinstance(error, RateLimited)
