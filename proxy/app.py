"""build_app(config): the whole gateway, its middleware stack written in one place, outermost first."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from middleware.auth import AuthMiddleware, AuthOptions
from middleware.backoff import BackoffMiddleware
from middleware.boundary import ErrorMiddleware
from middleware.budget import RetryBudget
from middleware.cache import CacheMiddleware, CacheOptions
from middleware.fallback import FallbackMiddleware
from middleware.health import TargetHealth
from middleware.race import RaceMiddleware
from middleware.stores import CacheStore, MemoryCacheStore
from middleware.stores.state_base import StateStore
from middleware.stores.state_memory import MemoryStateStore
from middleware.types import ASGIApp, Receive, Scope, Send
from proxy import endpoints, views
from proxy.access_log import AccessLog
from proxy.anthropic.messages import MessagesMiddleware
from proxy.budget_store import BudgetStore, MemoryBudgetStore
from proxy.budgets import BudgetMiddleware, Budgets, KeyBudget
from proxy.config import Config, load_config
from proxy.dashboard import dashboard_endpoints
from proxy.experiments.judge import Judge, JudgeSettings
from proxy.experiments.middleware import ABMiddleware
from proxy.forwarder import Forwarder, ForwarderOptions
from proxy.ledger import Ledger, open_ledger
from proxy.ledger_middleware import LedgerMiddleware
from proxy.lifespan import Upstream, make_lifespan
from proxy.metrics import Metrics
from proxy.ordering_middleware import OrderingMiddleware
from proxy.pricing import PriceTable
from proxy.routing import Router, RoutingMiddleware
from proxy.scrub import Scrubber
from proxy.shutdown import Drain

logger = logging.getLogger("sluice")


def build_app(
    config: Config | None = None,
    *,
    upstream: Upstream | None = None,
    tune_gc: bool = False,
    drain_on_signals: bool = False,
) -> ASGIApp:
    """The gateway as one ASGI app. `config` defaults to the embedded defaults plus provider keys from the env.

    The stack, outermost first:
        ErrorMiddleware    request id, X-Sluice-Cache, every failure in the contract's shape
        LedgerMiddleware   every /v1/ call timed, priced, recorded (cache hits and failures too)
        Drain              with drain_on_signals (`sluice serve`): SIGINT/SIGTERM drain calls in flight
        AuthMiddleware     gateway key -> tenant, or pass-through identity
        Endpoints          /healthz /readyz /v1/models, else /v1/... into the gateway below
        CacheMiddleware    opt-in lookup, single-flight, store of complete answers (memory or Redis)
        RoutingMiddleware  body read once, `model` (+ X-Sluice-Fallback) -> Route
        BudgetMiddleware   only when some key has a budget: reserve the call's worst case, or 429
        ABMiddleware       `ab` routes: the subject's variant (a stable hash), X-Sluice-Variant
        OrderingMiddleware `cheapest` / `fastest` routes: the targets put in order for this call
        RaceMiddleware     `race` calls: several targets (hedged), the first real answer wins
        FallbackMiddleware the route's targets in order until one commits
        MessagesMiddleware per try: /v1/messages as sent to Anthropic, translated for any other provider
        BackoffMiddleware  per try: skip cooling/ejected targets, learn 429 resets, short waits
        Forwarder          one upstream request, bytes relayed as they arrive
    """
    config = config or load_config(None)
    upstream = upstream or Upstream()
    prices = PriceTable.builtin().with_overrides(config.prices)
    router = Router(config, prices)
    scrubber = Scrubber(config.secrets())
    t = config.timeouts
    forwarder = Forwarder(
        upstream,
        ForwarderOptions(t.connect_s, t.first_byte_s, t.idle_s, t.total_s, config.server.max_body_bytes),
        scrub=scrubber.bytes,
    )
    store = cache_store(config)
    health = target_health(config)
    spend = budgets(config)
    gateway: ASGIApp = RaceMiddleware(
        FallbackMiddleware(MessagesMiddleware(BackoffMiddleware(forwarder, health)), health=health)
    )
    gateway = OrderingMiddleware(gateway, prices, health)
    judge = ab_judge(config)
    gateway = ABMiddleware(gateway, judge)
    if spend is not None:  # absent, not idle, without budgets: nothing on the hot path
        gateway = BudgetMiddleware(gateway, spend, prices)
    gateway = RoutingMiddleware(gateway, router, config.server.max_body_bytes)
    gateway = CacheMiddleware(gateway, store, cache_options(config))
    ledger = cost_ledger(config)
    metrics = Metrics()
    access_log = AccessLog()
    app: ASGIApp = Endpoints(
        endpoint_table(config, router, store, ledger, judge, metrics),
        gateway=gateway,
        lifespan=gateway_lifespan(upstream, ledger, judge, store, health, spend, access_log, tune_gc=tune_gc),
    )
    app = AuthMiddleware(app, auth_options(config))
    if drain_on_signals:  # inside the ledger, so a call cut at the drain deadline is still recorded
        app = Drain(app, config.server.drain_s, on_signals=True)
    app = LedgerMiddleware(
        app,
        ledger,
        prices,
        metrics=metrics,
        access_log=access_log,
        store_text=config.ledger.store_text,
        budgets=spend,
    )
    app = ErrorMiddleware(app, scrub=scrubber)
    if judge is not None:
        judge.app = app  # the judge's calls go through the whole gateway, as a client's would
    return app


def endpoint_table(
    config: Config, router: Router, store: CacheStore, ledger: Ledger, judge: Judge | None, metrics: Metrics
) -> dict[tuple[str, str], ASGIApp]:
    """The exact (method, path) endpoints: health, models, the /sluice/* views, /metrics and the dashboard."""
    return {
        ("GET", "/healthz"): endpoints.healthz,
        ("GET", "/readyz"): endpoints.readyz(lambda: "not configured" if config.redis is None else store.state()),
        ("GET", "/v1/models"): endpoints.models(router),
        ("GET", "/sluice/calls"): views.calls_view(ledger, store_text=config.ledger.store_text),
        ("GET", "/sluice/usage"): views.usage_view(ledger),
        ("GET", "/sluice/experiments"): views.experiments_view(ledger, judge),
        ("GET", "/metrics"): views.metrics_view(metrics, judge),
        **dashboard_endpoints(config.auth.admin_key if config.auth is not None else None),
    }


def gateway_lifespan(
    upstream: Upstream,
    ledger: Ledger,
    judge: Judge | None,
    store: CacheStore,
    health: TargetHealth,
    spend: Budgets | None,
    access_log: AccessLog,
    *,
    tune_gc: bool,
) -> Any:
    """The lifespan: the upstream session, the ledger and the judge at start-up; at shutdown everything closed.

    The judge stops first (until then it makes calls through the whole gateway,
    which the ledger records); the ledger closes last.
    """
    return make_lifespan(
        upstream,
        tune_gc=tune_gc,
        opening=(ledger.start, *((judge.start,) if judge is not None else ())),
        closing=(
            *((judge.aclose,) if judge is not None else ()),
            store.aclose,
            health.store.aclose,
            *((spend.aclose,) if spend is not None else ()),
            access_log.aclose,
            ledger.aclose,
        ),
    )


def cost_ledger(config: Config) -> Ledger:
    """The ledger of [ledger]: SQLite by default; with [redis], a Redis stream shared by replicas."""
    return open_ledger(
        config.ledger.path,
        config.redis.url if config.redis else None,
        op_timeout_s=config.redis.op_timeout_ms / 1000 if config.redis else 0.05,
        store_text=config.ledger.store_text,
    )


def ab_judge(config: Config) -> Judge | None:
    """The A/B judge when some `ab` route samples calls for one (`judge_sample_rate` > 0); else None."""
    settings = {
        name: JudgeSettings(route.judge, route.judge_sample_rate)
        for name, route in config.routes.items()
        if route.strategy == "ab" and route.judge is not None and route.judge_sample_rate > 0
    }
    return Judge(settings) if settings else None


def cache_store(config: Config) -> CacheStore:
    """The memory LRU by default; Redis, fail-open, when [redis] is configured."""
    if config.redis is None:
        return MemoryCacheStore(max_bytes=config.cache.max_bytes, max_entry_bytes=config.cache.max_entry_bytes)
    from middleware.stores.redis import RedisCacheStore  # only with [redis]: redis-py is heavy to import

    return RedisCacheStore.from_url(
        config.redis.url, op_timeout_s=config.redis.op_timeout_ms / 1000, max_entry_bytes=config.cache.max_entry_bytes
    )


def target_health(config: Config) -> TargetHealth:
    """Cooldowns and circuits in memory by default; in Redis, shared by replicas, with [redis]."""
    store: StateStore
    if config.redis is None:
        store = MemoryStateStore()
    else:
        from middleware.stores.state_redis import RedisStateStore

        store = RedisStateStore.from_url(config.redis.url, op_timeout_s=config.redis.op_timeout_ms / 1000)
    budget = RetryBudget(ratio=config.retry.budget_ratio)
    return TargetHealth(store, budget=budget, max_wait_s=config.retry.max_wait_s)


def budgets(config: Config) -> Budgets | None:
    """The keys' budgets, spend in memory or (with [redis]) shared in Redis; None when no key has one."""
    keys = config.auth.keys if config.auth is not None else ()
    limits = {
        k.id: KeyBudget.of(k.budget_usd, k.budget_period)
        for k in keys
        if k.budget_usd is not None and k.budget_period is not None
    }
    if not limits:
        return None
    store: BudgetStore
    if config.redis is None:
        store = MemoryBudgetStore()
    else:
        from proxy.budget_redis import RedisBudgetStore  # only with [redis]: redis-py is heavy to import

        store = RedisBudgetStore.from_url(config.redis.url, op_timeout_s=config.redis.op_timeout_ms / 1000)
    return Budgets(limits, store)


def cache_options(config: Config) -> CacheOptions:
    """CacheMiddleware's options from [cache] and [timeouts].

    Identical concurrent misses wait for the call in flight at most as long as
    a first byte may take (60 s by default), then go upstream themselves.
    """
    return CacheOptions(
        default_ttl_s=config.cache.default_ttl_s,
        max_entry_bytes=config.cache.max_entry_bytes,
        max_body_bytes=config.server.max_body_bytes,
        lock_wait_s=min(config.timeouts.first_byte_s, config.timeouts.total_s),
    )


def auth_options(config: Config) -> AuthOptions:
    """AuthMiddleware's options from [auth]; none means pass-through mode."""
    if config.auth is None:
        return AuthOptions()
    return AuthOptions(keys={k.key: k.id for k in config.auth.keys}, admin_key=config.auth.admin_key)


class Endpoints:
    """Exact (method, path) endpoints first, then every /v1/ path into the gateway, else 404.

    Hand-written rather than Starlette's Router so that a 404 or 405 is in the
    OpenAI error shape, and the hot path costs one dict lookup.
    """

    def __init__(self, exact: Mapping[tuple[str, str], ASGIApp], *, gateway: ASGIApp, lifespan: Any = None) -> None:
        self.exact = dict(exact)
        self.gateway = gateway
        self.lifespan = lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._run_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        handler = self.exact.get((scope["method"], scope["path"]))
        if handler is not None:
            await handler(scope, receive, send)
        elif scope["path"].startswith("/v1/"):
            await self.gateway(scope, receive, send)
        else:
            await endpoints.not_found(scope, receive, send)

    async def _run_lifespan(self, receive: Receive, send: Send) -> None:
        context: AbstractAsyncContextManager[None] | None = self.lifespan(self) if self.lifespan else None
        await receive()  # lifespan.startup
        try:
            if context is not None:
                await context.__aenter__()
        except Exception as exc:
            logger.error("start-up failed: %s", type(exc).__name__)
            await send({"type": "lifespan.startup.failed", "message": type(exc).__name__})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        if context is not None:
            await context.__aexit__(None, None, None)
        await send({"type": "lifespan.shutdown.complete"})
