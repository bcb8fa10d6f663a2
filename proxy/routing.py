"""Model string -> Route (SPEC §3): route aliases, `auto`, `provider/model`, bare model ids."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from middleware.body import replay
from middleware.call import Call, Route, Target, Variant
from middleware.errors import InvalidRequest, ModelNotFound
from middleware.headers import SLUICE_FALLBACK, SLUICE_RACE, SLUICE_ROUTE, header
from middleware.types import ASGIApp, Receive, Scope, Send
from proxy.config import Config, ProviderConfig, RouteConfig
from proxy.ordering import auto_order
from proxy.pricing import PriceTable

AUTO = "auto"
MAX_FALLBACKS = 8
MAX_RACERS = 8
# X-Sluice-Route values (SPEC §5); `ab` is a route's own strategy, never a per-call override.
ROUTE_OVERRIDES = ("fallback", "race", "cheapest", "fastest")


def target_of(provider: ProviderConfig, model: str) -> Target:
    """The Target for `model` at `provider`, as the forwarder needs it."""
    return Target(
        provider=provider.name,
        model=model,
        base_url=provider.base_url,
        api_key=provider.api_key,
        auth_style=provider.auth_style,
        stream_options=provider.stream_options,
    )


class Router:
    """Every routable name, compiled once from the config."""

    def __init__(self, config: Config, prices: PriceTable | None = None) -> None:
        self.providers: Mapping[str, ProviderConfig] = config.providers
        self.routes: dict[str, Route] = {
            name: Route(
                name, tuple(self._parse_target(t) for t in rc.targets), rc.strategy, hedge_delay_ms=rc.hedge_delay_ms
            )
            for name, rc in config.routes.items()
            if rc.strategy != "ab"
        }
        for name, rc in config.routes.items():
            if rc.strategy == "ab":  # after the others: a variant may be another route's name
                self.routes[name] = self._ab_route(name, rc)
        if AUTO not in self.routes:
            # Unconfigured `auto`: every keyed catalog model, cheapest first (proxy.ordering.auto_order).
            self.routes[AUTO] = Route(AUTO, tuple(auto_order(self._keyed_catalog(), prices or PriceTable.builtin())))
        self.bare: dict[str, Target] = self._bare_ids()

    def resolve(self, model: str) -> Route:
        """The route for a requested model string; ModelNotFound naming what was tried."""
        route = self.routes.get(model)
        if route is not None:
            if not route.targets:
                why = "no provider has an API key" if model == AUTO else "the route has no targets"
                raise ModelNotFound(f"model '{model}': {why}, so there is nothing to route to", param="model")
            return route
        provider_name, slash, provider_model = model.partition("/")
        provider = self.providers.get(provider_name) if slash else None
        if provider is not None and provider_model:
            return Route(model, (target_of(provider, provider_model),))
        target = self.bare.get(model)
        if target is not None:
            return Route(model, (target,))
        raise ModelNotFound(
            f"model '{model}' not found: it is not a route alias ({', '.join(sorted(self.routes))}), "
            f"not 'provider/model' for a known provider ({', '.join(self.providers)}), "
            "and no configured provider lists it",
            param="model",
        )

    def with_fallbacks(self, route: Route, chain: str) -> Route:
        """`route` with the ad-hoc `X-Sluice-Fallback` chain appended (SPEC §5).

        Only `provider/model` names of known providers: a header can name a
        target, never a URL. Targets already in the route are not repeated.
        """
        extra: list[Target] = []
        for name in (part.strip() for part in chain.split(",")):
            if not name:
                continue
            provider_name, slash, model = name.partition("/")
            provider = self.providers.get(provider_name) if slash and model else None
            if provider is None:
                raise InvalidRequest(
                    f"X-Sluice-Fallback: '{name}' is not provider/model for a known provider", param="X-Sluice-Fallback"
                )
            extra.append(target_of(provider, model))
        if len(extra) > MAX_FALLBACKS:
            raise InvalidRequest(
                f"X-Sluice-Fallback names more than {MAX_FALLBACKS} targets", param="X-Sluice-Fallback"
            )
        targets = route.targets + tuple(t for t in dict.fromkeys(extra) if t not in route.targets)
        return dataclasses.replace(route, targets=targets)

    def routable_names(self) -> list[str]:
        """Aliases (with `auto`), then every `provider/model` the catalog and config know."""
        names = list(self.routes)
        for provider in self.providers.values():
            names.extend(f"{provider.name}/{model}" for model in provider.models)
        return names

    def _ab_route(self, name: str, rc: RouteConfig) -> Route:
        weights = rc.weights or (1.0,) * len(rc.targets)
        variants = tuple(
            Variant(v, self.routes[v].targets if "/" not in v else (self._parse_target(v),), w)
            for v, w in zip(rc.targets, weights, strict=True)
        )
        every = tuple(dict.fromkeys(t for variant in variants for t in variant.targets))
        return Route(name, every, "ab", hedge_delay_ms=rc.hedge_delay_ms, variants=variants)

    def _parse_target(self, name: str) -> Target:
        provider_name, _, model = name.partition("/")
        return target_of(self.providers[provider_name], model)  # config.py checked the provider exists

    def _keyed_catalog(self) -> tuple[Target, ...]:
        return tuple(
            target_of(p, model) for p in self.providers.values() if p.api_key is not None for model in p.models
        )

    def _bare_ids(self) -> dict[str, Target]:
        # A provider with a key (or one the operator added) wins over a catalog
        # provider with none; within a rank, catalog order then config order.
        bare: dict[str, Target] = {}
        ranked = sorted(self.providers.values(), key=lambda p: 0 if (p.api_key is not None or not p.builtin) else 1)
        for provider in ranked:
            for model in provider.models:
                bare.setdefault(model, target_of(provider, model))
        return bare


class RoutingMiddleware:
    """Reads the body once, resolves `model` (plus any X-Sluice-Fallback chain) to a Route, aims at its first target."""

    def __init__(self, app: ASGIApp, router: Router, max_body_bytes: int) -> None:
        self.app = app
        self.router = router
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        call = Call.of(scope)
        await call.read_body(scope, receive, self.max_body_bytes)
        model = call.json().get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("`model` is required and must be a non-empty string", param="model")
        if not model.isprintable():
            # It is echoed in response headers, where a control character would break the response.
            raise InvalidRequest("`model` must not contain control characters", param="model")
        route = self.router.resolve(model)
        chain = header(scope, SLUICE_FALLBACK)
        if chain is not None:
            route = self.router.with_fallbacks(route, chain.decode("latin-1"))
        call.route = with_strategy_headers(route, scope)
        call.target = route.targets[0]
        await self.app(scope, replay(call.body or b"", receive), send)


def with_strategy_headers(route: Route, scope: Scope) -> Route:
    """`route` as `X-Sluice-Route` and `X-Sluice-Race: N` ask for this call (SPEC §5); 400 on a bad value."""
    strategy = header(scope, SLUICE_ROUTE)
    race = header(scope, SLUICE_RACE)
    if strategy is None and race is None:
        return route
    if strategy is not None:
        name = strategy.decode("latin-1").strip().lower()
        if name not in ROUTE_OVERRIDES:
            raise InvalidRequest(f"X-Sluice-Route must be one of {', '.join(ROUTE_OVERRIDES)}", param="X-Sluice-Route")
        route = dataclasses.replace(route, strategy=name)
    if race is not None:
        text = race.decode("latin-1").strip()
        if not (text.isdigit() and 2 <= int(text) <= MAX_RACERS):
            raise InvalidRequest(f"X-Sluice-Race must be a whole number from 2 to {MAX_RACERS}", param="X-Sluice-Race")
        route = dataclasses.replace(route, strategy="race", racers=int(text))
    return route
