"""``sluice check-config`` output: the resolved config in plain text, secrets masked (SPEC §2)."""

from __future__ import annotations

from urllib.parse import urlsplit

from proxy.config_schema import AuthConfig, Config, RedisConfig, RouteConfig

_MASK_MIN_LEN = 12  # below this, even 4 characters give away too much of a secret


def mask(secret: str | None) -> str:
    """Show that a secret is set without showing it: ``"none"``, ``"set (…wxyz)"`` or ``"set (…)"``.

    At most the last 4 characters appear, and none for a secret shorter than 12.
    """
    if not secret:
        return "none"
    return f"set (…{secret[-4:]})" if len(secret) >= _MASK_MIN_LEN else "set (…)"


def describe(config: Config) -> str:
    """A human summary of the resolved config; never contains a full secret."""
    server, cache, timeouts, retry, ledger = config.server, config.cache, config.timeouts, config.retry, config.ledger
    lines = [
        f"config:   {config.path or '(none: built-in defaults and environment)'}",
        f"server:   {server.host}:{server.port}, request bodies up to {server.max_body_bytes} bytes, "
        f"shutdown drains up to {server.drain_s:g}s",
        *_auth_lines(config.auth),
        f"redis:    {_redis_line(config.redis)}",
        f"cache:    ttl {cache.default_ttl_s:g}s, memory budget {cache.max_bytes} bytes, "
        f"entries up to {cache.max_entry_bytes} bytes",
        f"timeouts: connect {timeouts.connect_s:g}s, first byte {timeouts.first_byte_s:g}s, "
        f"idle {timeouts.idle_s:g}s, total {timeouts.total_s:g}s",
        f"retry:    wait up to {retry.max_wait_s:g}s in place, budget {retry.budget_ratio:.0%} of calls",
        f"ledger:   {'redis' if config.redis else 'sqlite ' + ledger.path}, "
        f"{'with' if ledger.store_text else 'without'} prompt/answer text",
        "providers:",
    ]
    name_w = max((len(p.name) for p in config.providers.values()), default=0)
    url_w = max((len(p.base_url) for p in config.providers.values()), default=0)
    for p in config.providers.values():
        extra = ("" if p.builtin else ", custom") + ("" if p.stream_options else ", no stream_options")
        lines.append(
            f"  {p.name:<{name_w}}  {p.base_url:<{url_w}}  key {mask(p.api_key)}, models: {len(p.models)}{extra}"
        )
    lines.append("routes:" if config.routes else "routes:   none (call provider/model, a bare model id, or auto)")
    lines.extend(_route_line(route, config) for route in config.routes.values())
    if config.prices:
        lines.append(f"prices:   overridden for {', '.join(config.prices)}")
    return "\n".join(lines)


def _auth_lines(auth: AuthConfig | None) -> list[str]:
    if auth is None:
        return ["auth:     off (sidecar mode: no gateway keys; client keys pass through)"]
    lines = [f"auth:     on, admin key {mask(auth.admin_key)}, {len(auth.keys)} gateway keys"]
    for key in auth.keys:
        budget = f", budget {key.budget_usd:g} USD per {key.budget_period}" if key.budget_usd is not None else ""
        lines.append(f"  {key.id}  key {mask(key.key)}{budget}")
    return lines


def _redis_line(redis: RedisConfig | None) -> str:
    if redis is None:
        return "off (one process, in-memory state)"
    parts = urlsplit(redis.url)
    url = redis.url
    if parts.password:  # show the URL with only its password hidden
        url = url.replace(f":{parts.password}@", ":***@", 1)
    return f"{url}, {redis.op_timeout_ms:g} ms per operation"


def _route_line(route: RouteConfig, config: Config) -> str:
    targets = [
        target + ("" if config.providers[target.partition("/")[0]].api_key else " (no key)") for target in route.targets
    ]
    details = [route.strategy, ", ".join(targets)]
    if route.hedge_delay_ms is not None:
        delay = route.hedge_delay_ms
        details.append("hedge auto (live p95 time to first token)" if delay == "auto" else f"hedge {delay:g} ms")
    if route.weights is not None:
        details.append("weights " + "/".join(f"{w:g}" for w in route.weights))
    if route.judge is not None:
        details.append(f"judge {route.judge} on {route.judge_sample_rate:.0%} of calls")
    return f"  {route.name}: " + "; ".join(details)
