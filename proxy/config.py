"""Configuration: one TOML file (SPEC §2) plus the environment, compiled once into a frozen Config.

This is the only module that reads the environment. Every check happens here, at load time,
so the rest of the gateway trusts what it is handed:

- any key outside the SPEC §2 shape is an error naming its full key path;
- ``"env:NAME"`` values are read from the environment: for a provider ``api_key`` an unset
  variable means "no key", for ``admin_key`` and gateway keys it is an error;
- every catalog provider is present, keyed from its usual variable unless the config says
  otherwise; custom providers need a ``base_url``;
- route targets, judges and price keys are "provider/model" with a known provider.
- a price row for a model with no built-in price (``proxy/prices.toml``) sets input and output.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from proxy.config_describe import describe, mask
from proxy.config_reader import Table, env_value
from proxy.config_routes import read_prices, read_routes
from proxy.config_schema import (
    BUDGET_PERIODS,
    AuthConfig,
    CacheConfig,
    Config,
    ConfigError,
    GatewayKey,
    LedgerConfig,
    Price,
    ProviderConfig,
    RedisConfig,
    RetryConfig,
    RouteConfig,
    ServerConfig,
    TimeoutsConfig,
)
from proxy.pricing import PriceTable
from proxy.providers import CATALOG, ProviderSpec

__all__ = [
    "AuthConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "GatewayKey",
    "LedgerConfig",
    "Price",
    "ProviderConfig",
    "RedisConfig",
    "RetryConfig",
    "RouteConfig",
    "ServerConfig",
    "TimeoutsConfig",
    "describe",
    "load_config",
    "mask",
]

_SECTIONS = ("server", "auth", "redis", "cache", "timeouts", "retry", "providers", "routes", "prices", "ledger")
_PROVIDER_KEYS = ("api_key", "base_url", "models", "stream_options")
# Names that end up in "provider/model", headers, ledger rows and Redis keys: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NO_FILE = "(no config file)"


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and compile the config; raise ConfigError on the first problem.

    path None means built-in defaults plus provider keys from env. env defaults to os.environ.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if path is None:
        return _compile({}, None, environ)
    source = os.fspath(path)
    return _compile(_read_toml(source), source, environ)


def _read_toml(source: str) -> dict[str, Any]:
    try:
        with open(source, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(source, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:  # its message has a line and column, never the text
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(source, "", "invalid TOML: the file is not UTF-8") from None


def _compile(data: Mapping[str, object], path: str | None, env: Mapping[str, str]) -> Config:
    root = Table(data, (), path or _NO_FILE)
    root.only(*_SECTIONS)
    providers = _providers(root.table("providers"), env)
    return Config(
        path=path,
        server=_server(root.table("server")),
        auth=_auth(root.opt_table("auth"), env),
        redis=_redis(root.opt_table("redis"), env),
        cache=_cache(root.table("cache")),
        timeouts=_timeouts(root.table("timeouts")),
        retry=_retry(root.table("retry")),
        providers=MappingProxyType(providers),
        routes=MappingProxyType(read_routes(root.table("routes"), providers)),
        prices=MappingProxyType(_prices(root.table("prices"), providers)),
        ledger=_ledger(root.table("ledger")),
    )


def _prices(t: Table, providers: Mapping[str, ProviderConfig]) -> dict[str, Price]:
    prices = read_prices(t, providers)
    for key, price in prices.items():
        # An override fills in only what it sets; a model with no built-in row has nothing to
        # fill from, so a missing input or output would price its calls wrongly.
        if key not in PriceTable.builtin():
            for name in ("input", "output"):
                if getattr(price, name) is None:
                    raise t.error(f"required: {key!r} has no built-in price to take it from", key, name)
    return prices


def _server(t: Table) -> ServerConfig:
    t.only("host", "port", "max_body_bytes", "drain_s")
    d = ServerConfig()
    return ServerConfig(
        host=t.string("host", d.host),
        port=t.integer("port", d.port, lo=1, hi=65535),
        max_body_bytes=t.integer("max_body_bytes", d.max_body_bytes),
        drain_s=t.number("drain_s", d.drain_s, lo_open=False),  # 0: cut every call at once
    )


def _cache(t: Table) -> CacheConfig:
    t.only("default_ttl_s", "max_bytes", "max_entry_bytes")
    d = CacheConfig()
    cache = CacheConfig(
        default_ttl_s=t.number("default_ttl_s", d.default_ttl_s),
        max_bytes=t.integer("max_bytes", d.max_bytes),
        max_entry_bytes=t.integer("max_entry_bytes", d.max_entry_bytes),
    )
    if cache.max_entry_bytes > cache.max_bytes:  # such an entry could never be stored
        raise t.error(f"must be <= max_bytes ({cache.max_bytes})", "max_entry_bytes")
    return cache


def _timeouts(t: Table) -> TimeoutsConfig:
    t.only("connect_s", "first_byte_s", "idle_s", "total_s")
    d = TimeoutsConfig()
    return TimeoutsConfig(
        connect_s=t.number("connect_s", d.connect_s),
        first_byte_s=t.number("first_byte_s", d.first_byte_s),
        idle_s=t.number("idle_s", d.idle_s),
        total_s=t.number("total_s", d.total_s),
    )


def _retry(t: Table) -> RetryConfig:
    t.only("max_wait_s", "budget_ratio")
    d = RetryConfig()
    return RetryConfig(
        max_wait_s=t.number("max_wait_s", d.max_wait_s, lo_open=False),  # 0: never wait in place
        budget_ratio=t.number("budget_ratio", d.budget_ratio, lo_open=False, hi=1),
    )


def _ledger(t: Table) -> LedgerConfig:
    t.only("path", "store_text")
    d = LedgerConfig()
    return LedgerConfig(path=t.string("path", d.path), store_text=t.boolean("store_text", d.store_text))


def _redis(t: Table | None, env: Mapping[str, str]) -> RedisConfig | None:
    if t is None:
        return None  # SPEC §2: no [redis] means one process with in-memory stores
    t.only("url", "op_timeout_ms")
    d = RedisConfig()
    url = t.secret("url", env, must_resolve=True) or d.url  # "env:REDIS_URL" keeps a password out of the file
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise t.error("must be a redis://, rediss:// or unix:// URL", "url")
    return RedisConfig(url=url, op_timeout_ms=t.number("op_timeout_ms", d.op_timeout_ms))


def _auth(t: Table | None, env: Mapping[str, str]) -> AuthConfig | None:
    if t is None:
        return None  # SPEC §2: no [auth] is pass-through sidecar mode
    t.only("admin_key", "keys")
    admin_key = t.secret("admin_key", env, must_resolve=True)
    keys = tuple(_gateway_key(item, env) for item in t.tables("keys"))
    if admin_key is None and not keys:
        raise t.error("needs admin_key or at least one entry in keys (omit [auth] to run without gateway keys)")
    seen_ids: dict[str, int] = {}
    seen_keys: dict[str, str] = {admin_key: "admin_key"} if admin_key else {}
    for i, key in enumerate(keys):
        if key.id in seen_ids:
            raise t.error(f"duplicate id {key.id!r} (also keys[{seen_ids[key.id]}])", "keys", i, "id")
        if key.key in seen_keys:  # one secret must map to exactly one identity
            raise t.error(f"the same key value as {seen_keys[key.key]}", "keys", i, "key")
        seen_ids[key.id] = i
        seen_keys[key.key] = f"keys[{i}]"
    return AuthConfig(admin_key=admin_key, keys=keys)


def _gateway_key(t: Table, env: Mapping[str, str]) -> GatewayKey:
    t.only("id", "key", "budget_usd", "budget_period")
    key_id = t.string("id")
    if not _NAME.fullmatch(key_id):
        raise t.error("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", "id")
    secret = t.secret("key", env, must_resolve=True)
    if secret is None:
        raise t.error("is required", "key")
    budget = t.opt_number("budget_usd", lo_open=False)
    period = t.opt_string("budget_period", BUDGET_PERIODS)
    if budget is not None and period is None:
        raise t.error(f"is required with budget_usd (one of {', '.join(BUDGET_PERIODS)})", "budget_period")
    if period is not None and budget is None:
        raise t.error("is required with budget_period", "budget_usd")
    return GatewayKey(id=key_id, key=secret, budget_usd=budget, budget_period=period)


def _providers(t: Table, env: Mapping[str, str]) -> dict[str, ProviderConfig]:
    providers = {name: _provider(t.table(name), name, spec, env) for name, spec in CATALOG.items()}
    for name in t.names():
        if name in CATALOG:
            continue
        if not _NAME.fullmatch(name):
            raise t.error("a provider name is 1-64 letters, digits, '.', '_' or '-' (no '/')", name)
        providers[name] = _provider(t.table(name), name, None, env)
    return providers


def _provider(t: Table, name: str, spec: ProviderSpec | None, env: Mapping[str, str]) -> ProviderConfig:
    t.only(*_PROVIDER_KEYS)
    if "api_key" in t:  # set in the config: it decides, even when its variable turns out unset
        api_key = t.secret("api_key", env, must_resolve=False)
    else:
        api_key = env_value(env, spec.key_env) if spec and spec.key_env else None
    if "base_url" in t:
        base_url = _base_url(t)
    elif spec is not None:
        base_url = spec.base_url
    else:
        raise t.error("is required for a custom provider (one not in the built-in catalog)", "base_url")
    models = t.strings("models")  # replaces the catalog's list rather than extending it
    if models is None:
        models = spec.models if spec else ()
    return ProviderConfig(
        name=name,
        base_url=base_url,
        api_key=api_key,
        models=models,
        stream_options=t.boolean("stream_options", spec.stream_options if spec else True),
        auth_style=spec.auth_style if spec else "bearer",
        builtin=spec is not None,
    )


def _base_url(t: Table) -> str:
    url = t.string("base_url").rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError:
        raise t.error("is not a valid URL", "base_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise t.error('must be an http:// or https:// URL with a host, e.g. "https://api.example.com/v1"', "base_url")
    if parts.username is not None or parts.password is not None:
        raise t.error("must not contain credentials; use api_key", "base_url")
    if parts.query or parts.fragment:  # request paths are appended to it
        raise t.error("must not have a query or fragment", "base_url")
    return url
