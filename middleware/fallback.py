"""FallbackMiddleware: try a route's targets in order until one answers (SPEC §8, §9 `fallback`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from middleware.attempt import RETRIABLE_STATUSES, Attempt
from middleware.call import Call, Target
from middleware.errors import RateLimited, SluiceError, TargetUnavailable, UpstreamError
from middleware.retry_after import reset_after
from middleware.types import ASGIApp, Receive, Scope, Send

RATE_LIMITED = 429


@dataclass(frozen=True, slots=True)
class FallbackOptions:
    """Options for FallbackMiddleware: which statuses move on to the next target."""

    retriable: frozenset[int] = RETRIABLE_STATUSES


class FallbackMiddleware:
    """Re-runs the inside once per target of `call.route` until an attempt commits.

    Each attempt holds its response start until its first body byte (see
    `Attempt`), so a target that fails before that costs the client nothing but
    time. After every target failed: with a single attempt, that target's own
    answer is relayed as it came (there was nothing to fall back to); otherwise
    429 when every target was rate-limited, else 502 naming the last failure.
    """

    def __init__(self, app: ASGIApp, options: FallbackOptions | None = None) -> None:
        self.app = app
        self.options = options or FallbackOptions()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        call = Call.of(scope)
        route = call.route
        if route is None or len(route.targets) == 1:
            # Nothing to fall back to: the one target's answer goes out as it comes.
            await self.app(scope, receive, send)
            return
        failures: list[tuple[Target, Attempt | None, SluiceError | None]] = []
        for target in usable_targets(call, route.targets):
            call.target = target
            call.error = None  # each attempt reports its own failure
            attempt = Attempt(send, self.options.retriable)
            try:
                await self.app(scope, receive, attempt.send)
            except UpstreamError as exc:
                if attempt.committed:
                    raise
                failures.append((target, None, exc))
                continue
            if attempt.committed or call.client_gone:
                return
            failures.append((target, attempt, None))
        await _answer_all_failed(failures, send)


def usable_targets(call: Call, targets: tuple[Target, ...]) -> Iterator[Target]:
    """`targets`, skipping any with no key of its own that the client's key may not reach (SPEC §5)."""
    for target in targets:
        if target.api_key is None and call.client_key is not None and call.client_key_for(target) is None:
            continue
        yield target


async def _answer_all_failed(failures: list[tuple[Target, Attempt | None, SluiceError | None]], send: Send) -> None:
    if not failures:
        raise TargetUnavailable("no target of this route can be tried")
    target, attempt, error = failures[-1]
    if len(failures) == 1 and attempt is not None and attempt.body is not None:
        await attempt.relay()
        return
    if len(failures) == 1 and error is not None:
        raise error
    statuses = [a.status for _, a, _ in failures if a is not None]
    if len(statuses) == len(failures) and all(s == RATE_LIMITED for s in statuses):
        raise _all_rate_limited(failures)
    last = f"{target.name} answered {attempt.status}" if attempt is not None else f"{error.message if error else ''}"
    raise UpstreamError(f"all {len(failures)} targets failed; the last: {last}")


def _all_rate_limited(failures: list[tuple[Target, Attempt | None, SluiceError | None]]) -> SluiceError:
    waits = [w for _, a, _ in failures if a is not None and (w := _retry_after(a)) is not None]
    headers = [(b"retry-after", str(min(waits)).encode())] if waits else []
    return RateLimited(f"all {len(failures)} targets are rate-limited", headers=headers)


def _retry_after(attempt: Attempt) -> int | None:
    wait = reset_after(attempt.headers)
    return None if wait is None else math.ceil(wait)  # rounded up: a client never comes back early
