"""OrderingMiddleware: `cheapest` and `fastest` routes, put in order for each call (SPEC §9, issue 8).

Both strategies are an ordering of the route's targets, then the fallback
strategy over that order (so cooldowns, circuits, the retry budget and the
deadline all still apply): `cheapest` by the expected cost of this request
(`proxy.ordering.cheapest`), `fastest` by the live speed estimate of each
target, read from the StateStore that the backoff layer feeds
(`proxy.ordering.fastest`). `X-Sluice-Route: cheapest | fastest` asks for either
on any route. The provider a pass-through key belongs to stays the first
target as configured (`Route.home`), whatever the order.
"""

from __future__ import annotations

import dataclasses

from middleware.call import Call
from middleware.health import TargetHealth
from middleware.types import ASGIApp, Receive, Scope, Send
from proxy.ordering import cheapest, fastest
from proxy.pricing import PriceTable

ORDERINGS = ("cheapest", "fastest")


class OrderingMiddleware:
    """Reorders `call.route` for `cheapest` / `fastest`; the strategy inside is then `fallback`."""

    def __init__(self, app: ASGIApp, prices: PriceTable, health: TargetHealth) -> None:
        self.app = app
        self.prices = prices
        self.health = health

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = Call.of(scope) if scope["type"] == "http" else None
        route = call.route if call is not None else None
        if call is not None and route is not None and route.strategy in ORDERINGS:
            targets = list(route.targets)
            body = call.json()
            if route.strategy == "cheapest":
                order = cheapest(targets, body, self.prices)
            else:
                ids = [self.health.id_of(call, t) for t in targets]
                order = fastest(targets, await self.health.store.speeds(ids), stream=body.get("stream") is True)
            home = route.home or targets[0].provider
            call.route = dataclasses.replace(route, targets=tuple(order), strategy="fallback", home=home)
            call.target = order[0]
        await self.app(scope, receive, send)
