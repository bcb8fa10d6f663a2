"""The shape of a compiled config (SPEC §2): frozen dataclasses, the allowed enums, and ConfigError.

``proxy.config`` builds these from TOML and the environment and re-exports them; import them
from there. Field defaults are the SPEC §2 defaults, so a missing key means "this value".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

STRATEGIES = ("fallback", "race", "cheapest", "fastest", "ab")
BUDGET_PERIODS = ("day", "month")


class ConfigError(Exception):
    """A configuration problem, found once at load time.

    ``str()`` reads "<file>: <key path>: <problem>", e.g.
    ``sluice.toml: routes.fast.strategy: must be one of fallback, race, ...``.
    The message never contains a secret value, only the names of keys and variables.
    """

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: where the gateway listens, how large a request body may be, how long a shutdown drains."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 10_485_760
    drain_s: float = 20  # on SIGTERM/SIGINT, calls in flight get this long to finish (proxy.shutdown)


@dataclass(frozen=True, slots=True)
class GatewayKey:
    """One tenant key from ``[auth].keys``, with its optional USD budget per day or month."""

    id: str
    key: str = field(repr=False)
    budget_usd: float | None = None
    budget_period: str | None = None  # "day" | "month"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: present means gateway auth is on; absent (``Config.auth is None``) is sidecar mode."""

    admin_key: str | None = field(repr=False)
    keys: tuple[GatewayKey, ...]


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """``[redis]``: present means shared state, cache and ledger live in Redis."""

    url: str = field(default="redis://127.0.0.1:6379/0", repr=False)  # may carry a password
    op_timeout_ms: float = 50


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """``[cache]``: entry lifetime and the in-memory store's byte budget (SPEC §7)."""

    default_ttl_s: float = 3600
    max_bytes: int = 268_435_456
    max_entry_bytes: int = 4_194_304


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    """``[timeouts]`` for upstream calls, in seconds."""

    connect_s: float = 5
    first_byte_s: float = 60
    idle_s: float = 60  # between two chunks of a stream
    total_s: float = 600


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """``[retry]``: the longest Retry-After waited out in place, and the retry budget (SPEC §8)."""

    max_wait_s: float = 2.0
    budget_ratio: float = 0.2


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """A provider as the gateway will call it: a catalog row merged with ``[providers.NAME]``."""

    name: str
    base_url: str  # no trailing slash
    api_key: str | None = field(repr=False)  # None: no key; the client's own may be passed through
    models: tuple[str, ...]
    stream_options: bool
    auth_style: str
    builtin: bool  # False for a custom provider defined only in the config


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """``[routes.NAME]``: an alias for a list of "provider/model" targets and a strategy (SPEC §9)."""

    name: str
    strategy: str = "fallback"
    targets: tuple[str, ...] = ()  # "provider/model"; at least one in a loaded config
    hedge_delay_ms: float | str | None = None  # a number, or "auto"
    weights: tuple[float, ...] | None = None  # ab only; None means equal weights
    judge: str | None = None  # ab only: "provider/model" of the judging LLM
    judge_sample_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class Price:
    """``[prices."provider/model"]``: USD per million tokens; None means "not given"."""

    input: float | None
    output: float | None
    cached_input: float | None
    reasoning: float | None = None


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """``[ledger]``: the SQLite file (unused with Redis) and whether prompt/answer text is kept."""

    path: str = "sluice.db"
    store_text: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    """The whole compiled configuration. Built once by ``load_config``; never mutated."""

    path: str | None  # the file it came from; None for built-in defaults
    server: ServerConfig
    auth: AuthConfig | None
    redis: RedisConfig | None
    cache: CacheConfig
    timeouts: TimeoutsConfig
    retry: RetryConfig
    providers: Mapping[str, ProviderConfig]  # every catalog provider, then custom ones
    routes: Mapping[str, RouteConfig]
    prices: Mapping[str, Price]  # overrides only, keyed "provider/model"
    ledger: LedgerConfig

    def secrets(self) -> tuple[str, ...]:
        """Every secret value in the config, longest first, for scrubbing logs and responses.

        Longest first so a scrubber that replaces in order never leaves the tail of a
        longer secret behind after replacing a shorter one that it contains.
        """
        found = {provider.api_key for provider in self.providers.values()}
        if self.auth is not None:
            found.add(self.auth.admin_key)
            found.update(key.key for key in self.auth.keys)
        if self.redis is not None:
            password = urlsplit(self.redis.url).password
            found.update((password, unquote(password)) if password else ())
        return tuple(sorted((s for s in found if s), key=len, reverse=True))
