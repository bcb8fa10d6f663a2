"""RaceMiddleware: a call sent to several targets at once; the first real answer wins (SPEC §8, §9 `race`).

Racers are attempts (see `Attempt`, `until="content"`) run on the fallback's
inside, each with its own fork of the call. The first to reach its commit
point (a stream's first content chunk, a plain body's end) wins: it alone
sends to the client, and the others are cancelled at once, which closes their
upstream connections (the forwarder closes a response it stopped reading).
One task alone listens for the client's disconnect; racers get a `receive`
that never returns, so no two readers race on the client's socket.

With a hedge delay (the route's `hedge_delay_ms`, or "auto" = the live p95
time to first byte of the first racer's target) each further racer starts
only if no racer has won by then, or at once when a racer fails, so a
healthy primary costs nothing extra. If every racer fails, the rest of the
route is tried by the fallback strategy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from middleware.attempt import Attempt, LostRace
from middleware.call import CALL_KEY, Call, Route, Target
from middleware.errors import SluiceError
from middleware.fallback import Failures, FallbackMiddleware, answer_all_failed, skipped_error, usable_targets
from middleware.health import TargetHealth
from middleware.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_RACERS = 4  # a `race` route with no X-Sluice-Race races this many of its targets at most
AUTO_HEDGE_DEFAULT_S = 0.5  # "auto" before the first target has enough samples for a p95


class RaceMiddleware:
    """Runs `race` calls itself; hands every other call to the fallback strategy it wraps."""

    def __init__(self, fallback: FallbackMiddleware, *, health: TargetHealth | None = None) -> None:
        self.app = fallback
        self.health = health or fallback.health

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = Call.of(scope) if scope["type"] == "http" else None
        route = call.route if call is not None else None
        if call is None or route is None or route.strategy != "race" or len(route.targets) < 2:
            await self.app(scope, receive, send)
            return
        with self.health.budget.call():
            plan = await self.health.plan(call, usable_targets(call, route.targets))
            failures: Failures = [(t, None, skipped_error(t, b)) for t, b in plan.skipped]
            count = min(route.racers or DEFAULT_RACERS, len(plan.tries))
            racers, rest = plan.tries[:count], plan.tries[count:]
            if len(racers) < 2:
                racers, rest = [], plan.tries  # nothing to race: the fallback order over what is left
            if racers:
                race = _Race(self.app.app, scope, send, call, racers, self._hedge_s(call, route, racers[0]))
                lost = await race.run(receive)
                if lost is None or call.client_gone:
                    return
                failures.extend(lost)
            if rest:
                more = await self.app.run(scope, receive, send, rest)
                if more is None:
                    return
                failures.extend(more)
            await answer_all_failed(call, self.health, failures, send)

    def _hedge_s(self, call: Call, route: Route, first: Target) -> float:
        delay = route.hedge_delay_ms
        if delay is None:
            return 0.0
        if delay == "auto":
            p95 = self.health.first_byte_p95(call, first)
            return AUTO_HEDGE_DEFAULT_S if p95 is None else p95
        return float(delay) / 1000


async def _never() -> Message:
    """A racer's `receive`: the body is already read, and the race alone listens for a disconnect."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


class _Race:
    """One race: starts the racers (hedged), picks the winner, cancels the rest."""

    def __init__(
        self, inside: ASGIApp, scope: Scope, send: Send, call: Call, targets: Sequence[Target], hedge_s: float
    ) -> None:
        self.inside = inside
        self.scope = scope
        self.call = call
        self.targets = targets
        self.hedge_s = hedge_s
        self.winner: int | None = None
        self.won = asyncio.Event()
        self.forks = [call.fork(t) for t in targets]
        for fork in self.forks:
            fork.alternatives = len(targets)  # never wait out a cooldown in place while racing
        self.attempts = [Attempt(send, until="content", may_commit=self._claimer(i)) for i in range(len(targets))]
        self.tasks: list[asyncio.Task[None]] = []

    def _claimer(self, index: int) -> Callable[[], bool]:
        def claim() -> bool:
            if self.winner is not None:
                return False
            self.winner = index
            self.won.set()
            for other, task in enumerate(self.tasks):
                if other != index:
                    task.cancel()  # closes the loser's upstream response
            return True

        return claim

    async def run(self, receive: Receive) -> Failures | None:
        """None once a racer won (or the client left); else each racer's failure."""
        watcher = asyncio.create_task(self._watch(receive))
        try:
            for index in range(len(self.targets)):
                if index and not await self._hedge():
                    break
                self.tasks.append(asyncio.create_task(self._run_racer(index)))
            await asyncio.wait(self.tasks)
        finally:
            watcher.cancel()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        return self._outcome()

    async def _hedge(self) -> bool:
        """Wait before the next racer: the hedge delay, unless a racer fails first. False once one won."""
        running = [t for t in self.tasks if not t.done()]
        if running and self.hedge_s > 0 and not self.won.is_set():
            won = asyncio.ensure_future(self.won.wait())
            try:
                await asyncio.wait([*running, won], timeout=self.hedge_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                won.cancel()
        return not self.won.is_set() and not self.call.client_gone

    async def _run_racer(self, index: int) -> None:
        scope = {**self.scope, CALL_KEY: self.forks[index]}
        await self.inside(scope, _never, self.attempts[index].send)

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] != "http.disconnect":
                continue
            if self.winner is not None and self.attempts[self.winner].ended:
                return  # the server's end-of-response disconnect, not the client leaving
            self.call.client_gone = True
            for fork, task in zip(self.forks, self.tasks, strict=False):
                fork.client_gone = True
                task.cancel()
            return

    def _outcome(self) -> Failures | None:
        call = self.call
        if self.winner is not None:
            fork = self.forks[self.winner]
            call.target, call.status, call.usage, call.error = fork.target, fork.status, fork.usage, fork.error
            call.deadline = fork.deadline
            task = self.tasks[self.winner]
            error = None if task.cancelled() else task.exception()
            if error is not None and not isinstance(error, LostRace):
                raise error  # the winner failed after its first bytes reached the client
            return None
        call.deadline = min((f.deadline for f in self.forks if f.deadline is not None), default=call.deadline)
        if call.client_gone:
            return None
        failures: Failures = []
        for index, task in enumerate(self.tasks):
            error = None if task.cancelled() else task.exception()
            if error is not None and not isinstance(error, SluiceError):
                raise error
            attempt = self.attempts[index]
            failures.append((self.targets[index], attempt if error is None else None, error))
        return failures
