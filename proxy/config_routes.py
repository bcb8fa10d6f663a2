"""The ``[routes]`` and ``[prices]`` sections: everything addressed as "provider/model" (SPEC §3, §9, §10)."""

from __future__ import annotations

from collections.abc import Mapping

from proxy.config_reader import Table
from proxy.config_schema import STRATEGIES, Price, ProviderConfig, RouteConfig

_ROUTE_KEYS = ("strategy", "targets", "hedge_delay_ms", "weights", "judge", "judge_sample_rate")
_PRICE_KEYS = ("input", "output", "cached_input", "reasoning")


def _target(t: Table, value: str, providers: Mapping[str, ProviderConfig], *where: str | int) -> str:
    """Check a "provider/model" reference; the model part may itself contain "/"."""
    provider, slash, model = value.partition("/")
    if not (provider and slash and model):
        raise t.error(f'must be "provider/model", got {value!r}', *where)
    if provider not in providers:
        raise t.error(f"unknown provider {provider!r} (known: {', '.join(providers)})", *where)
    return value


def read_routes(t: Table, providers: Mapping[str, ProviderConfig]) -> dict[str, RouteConfig]:
    """``[routes.NAME]`` tables, in file order; targets must name a provider in providers.

    An ``ab`` route's variants may also be other routes' names (a variant is then that
    route's chain), as long as those are not ``ab`` routes themselves.
    """
    routes = {}
    for name in t.names():
        if not name.strip() or "/" in name:  # "a/b" always means provider/model (SPEC §3)
            raise t.error('a route name must be non-blank and contain no "/"', name)
        routes[name] = _route(t.table(name), name, providers)
    for name, route in routes.items():
        for i, variant in enumerate(route.targets):
            if "/" in variant:
                continue
            aliased = routes.get(variant)
            if aliased is None or aliased.strategy == "ab" or variant == name:
                why = "an A/B route" if aliased is not None else "not a route defined in this file"
                raise t.table(name).error(f"{variant!r} is {why}; a variant is provider/model or a route", "targets", i)
    return routes


def _route(t: Table, name: str, providers: Mapping[str, ProviderConfig]) -> RouteConfig:
    t.only(*_ROUTE_KEYS)
    strategy = t.string("strategy", "fallback", STRATEGIES)
    targets = tuple(
        v if strategy == "ab" and "/" not in v else _target(t, v, providers, "targets", i)  # a route alias
        for i, v in enumerate(t.strings("targets") or ())
    )
    if len(set(targets)) < len(targets):
        raise t.error("lists a target twice", "targets")
    if not targets:  # a route that can never be served is a config mistake, found now
        raise t.error('needs at least one "provider/model" target', "targets")
    if len(targets) == 1 and strategy in ("race", "ab"):
        raise t.error(f"strategy {strategy!r} needs at least 2 targets", "targets")
    for key in ("weights", "judge", "judge_sample_rate"):
        if key in t and strategy != "ab":
            raise t.error('only applies to strategy = "ab"', key)
    judge = t.opt_string("judge")
    rate = t.number("judge_sample_rate", 0.0, lo_open=False, hi=1)
    if rate > 0 and judge is None:
        raise t.error("needs judge to be set", "judge_sample_rate")
    return RouteConfig(
        name=name,
        strategy=strategy,
        targets=targets,
        hedge_delay_ms=_hedge_delay(t),
        weights=_weights(t, len(targets)),
        judge=None if judge is None else _target(t, judge, providers, "judge"),
        judge_sample_rate=rate,
    )


def _hedge_delay(t: Table) -> float | str | None:
    # Allowed on any route: X-Sluice-Route: race can turn one into a race per call (SPEC §5).
    if t.data.get("hedge_delay_ms") == "auto":
        return "auto"
    if "hedge_delay_ms" in t and isinstance(t.data["hedge_delay_ms"], str):
        raise t.error('must be a number of milliseconds or "auto"', "hedge_delay_ms")
    return t.opt_number("hedge_delay_ms", lo_open=False)


def _weights(t: Table, count: int) -> tuple[float, ...] | None:
    weights = t.numbers("weights")
    if weights is None:
        return None  # equal weights
    if len(weights) != count:
        raise t.error(f"has {len(weights)} entries but targets has {count}", "weights")
    if not any(weights):
        raise t.error("needs at least one weight > 0", "weights")
    return weights


def read_prices(t: Table, providers: Mapping[str, ProviderConfig]) -> dict[str, Price]:
    """``[prices."provider/model"]`` tables: USD per million tokens, each >= 0 or absent."""
    prices = {}
    for key in t.names():
        _target(t, key, providers, key)
        entry = t.table(key)
        entry.only(*_PRICE_KEYS)
        values = {field: entry.opt_number(field, lo_open=False) for field in _PRICE_KEYS}
        prices[key] = Price(**values)
    return prices
