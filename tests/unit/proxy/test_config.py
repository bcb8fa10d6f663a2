"""proxy.config: SPEC §2's TOML shape plus the environment, as a user of `sluice check-config` sees it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxy.config import (
    CacheConfig,
    Config,
    ConfigError,
    LedgerConfig,
    RetryConfig,
    ServerConfig,
    TimeoutsConfig,
    describe,
    load_config,
    mask,
)
from proxy.providers import CATALOG

# The example from SPEC §2, verbatim.
SPEC_EXAMPLE = """\
[server]
host = "127.0.0.1"
port = 8080
max_body_bytes = 10485760

[auth]                        # omit: pass-through sidecar mode, no gateway keys
admin_key = "env:SLUICE_ADMIN_KEY"
keys = [
  { id = "team-a", key = "env:SLUICE_KEY_TEAM_A" },
  { id = "team-b", key = "env:SLUICE_KEY_TEAM_B", budget_usd = 50.0, budget_period = "month" },
]

[redis]                       # omit: one process, in-memory stores, SQLite ledger
url = "redis://127.0.0.1:6379/0"
op_timeout_ms = 50            # per Redis operation; past it the store fails open

[cache]
default_ttl_s = 3600
max_bytes = 268435456         # in-memory store budget
max_entry_bytes = 4194304

[timeouts]
connect_s = 5
first_byte_s = 60
idle_s = 60                   # between two chunks of a stream
total_s = 600

[retry]
max_wait_s = 2.0              # longest Retry-After waited out in place
budget_ratio = 0.2

[providers.cerebras]          # a built-in provider: override what you need
api_key = "env:CEREBRAS_API_KEY"
base_url = "https://api.cerebras.ai/v1"

[providers.local]             # a custom OpenAI-compatible provider
base_url = "http://127.0.0.1:8000/v1"
api_key = "env:LOCAL_KEY"
models = ["my-model"]
stream_options = false        # it rejects stream_options

[routes.fast]
strategy = "fallback"         # fallback | race | cheapest | fastest | ab
targets = ["cerebras/llama3.1-8b", "groq/llama-3.1-8b-instant", "openai/gpt-4o-mini"]

[routes.quick]
strategy = "race"
targets = ["cerebras/llama3.1-8b", "groq/llama-3.1-8b-instant"]
hedge_delay_ms = 150          # or "auto"

[routes.trial]
strategy = "ab"
targets = ["cerebras/llama3.1-8b", "openai/gpt-4o-mini"]
weights = [50, 50]
judge = "openai/gpt-4o-mini"
judge_sample_rate = 0.1

[prices."cerebras/llama3.1-8b"]   # USD per million tokens; overrides the built-in table
input = 0.10
output = 0.10
cached_input = 0.05

[ledger]
path = "sluice.db"            # SQLite; with [redis], records go to Redis instead
store_text = false            # prompts and answers are not kept unless true
"""

SPEC_ENV = {
    "SLUICE_ADMIN_KEY": "sk-admin-0000000000000001",
    "SLUICE_KEY_TEAM_A": "sk-team-a-000000000000002",
    "SLUICE_KEY_TEAM_B": "sk-team-b-000000000000003",
    "CEREBRAS_API_KEY": "csk-cerebras-0000000000004",
    "LOCAL_KEY": "local-key-00000000000005",
}

CANARY = "sk-canary-7f3a9c2e5b1d8e4f"
USUAL_VARS = {
    "cerebras": "CEREBRAS_API_KEY",
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "groq": "GROQ_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "deepinfra": "DEEPINFRA_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "xai": "XAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
}
ROUTE = '[routes.fast]\ntargets = ["openai/gpt-4o-mini"]\n'


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    return load_config(path, env=env or {})


def load_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return str(info.value)


def test_spec_example_parses(tmp_path):
    config = load(tmp_path, SPEC_EXAMPLE, SPEC_ENV)
    assert config.path == str(tmp_path / "sluice.toml")
    assert config.server == ServerConfig()
    assert config.auth is not None
    assert config.auth.admin_key == SPEC_ENV["SLUICE_ADMIN_KEY"]
    team_a, team_b = config.auth.keys
    assert (team_a.id, team_a.key, team_a.budget_usd, team_a.budget_period) == (
        "team-a",
        SPEC_ENV["SLUICE_KEY_TEAM_A"],
        None,
        None,
    )
    assert (team_b.id, team_b.key, team_b.budget_usd, team_b.budget_period) == (
        "team-b",
        SPEC_ENV["SLUICE_KEY_TEAM_B"],
        50.0,
        "month",
    )
    assert config.redis is not None
    assert (config.redis.url, config.redis.op_timeout_ms) == ("redis://127.0.0.1:6379/0", 50)
    assert config.cache == CacheConfig()
    assert config.timeouts == TimeoutsConfig()
    assert config.retry == RetryConfig()
    assert config.ledger == LedgerConfig()


def test_spec_example_providers_routes_and_prices(tmp_path):
    config = load(tmp_path, SPEC_EXAMPLE, SPEC_ENV)
    assert list(config.providers) == [*CATALOG, "local"]
    assert config.providers["cerebras"].api_key == SPEC_ENV["CEREBRAS_API_KEY"]
    local = config.providers["local"]
    assert (local.base_url, local.api_key, local.models) == (
        "http://127.0.0.1:8000/v1",
        "local-key-00000000000005",
        ("my-model",),
    )
    assert (local.stream_options, local.builtin, local.auth_style) == (False, False, "bearer")
    assert list(config.routes) == ["fast", "quick", "trial"]
    fast, quick, trial = config.routes.values()
    assert fast.strategy == "fallback"
    assert fast.targets == ("cerebras/llama3.1-8b", "groq/llama-3.1-8b-instant", "openai/gpt-4o-mini")
    assert (quick.strategy, quick.hedge_delay_ms) == ("race", 150)
    assert (trial.strategy, trial.weights, trial.judge, trial.judge_sample_rate) == (
        "ab",
        (50.0, 50.0),
        "openai/gpt-4o-mini",
        0.1,
    )
    price = config.prices["cerebras/llama3.1-8b"]
    assert (price.input, price.output, price.cached_input, price.reasoning) == (0.10, 0.10, 0.05, None)


def test_defaults_with_no_file():
    config = load_config(env={})
    assert config.path is None
    assert (config.server.host, config.server.port, config.server.max_body_bytes) == ("127.0.0.1", 8080, 10_485_760)
    assert config.server.drain_s == 20
    assert config.auth is None
    assert config.redis is None
    assert config.cache == CacheConfig(default_ttl_s=3600, max_bytes=268_435_456, max_entry_bytes=4_194_304)
    assert config.timeouts == TimeoutsConfig(connect_s=5, first_byte_s=60, idle_s=60, total_s=600)
    assert config.retry == RetryConfig(max_wait_s=2.0, budget_ratio=0.2)
    assert config.ledger == LedgerConfig(path="sluice.db", store_text=False)
    assert list(config.providers) == list(CATALOG)
    assert all(p.api_key is None and p.builtin for p in config.providers.values())
    assert dict(config.routes) == {}
    assert dict(config.prices) == {}
    assert config.secrets() == ()


@pytest.mark.parametrize(("value", "drain_s"), [("0", 0), ("2.5", 2.5), ("45", 45)])
def test_drain_s_takes_zero_and_any_finite_number_of_seconds(tmp_path, value, drain_s):
    assert load(tmp_path, f"[server]\ndrain_s = {value}\n").server.drain_s == drain_s


def test_empty_file_gives_the_defaults(tmp_path):
    config = load(tmp_path, "")
    assert dataclasses.replace(config, path=None) == dataclasses.replace(load_config(env={}))


def test_provider_keys_come_from_the_usual_variables_with_no_config():
    env = {var: f"key-for-{name}-0123456789" for name, var in USUAL_VARS.items()}
    config = load_config(env=env)
    assert {name: p.api_key for name, p in config.providers.items()} == {
        name: f"key-for-{name}-0123456789" for name in USUAL_VARS
    }


def test_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-os-environ-0001")
    assert load_config().providers["openai"].api_key == "sk-from-os-environ-0001"


def test_blank_variable_means_no_key_and_whitespace_is_trimmed():
    config = load_config(env={"OPENAI_API_KEY": "  ", "GROQ_API_KEY": "gsk-0123456789\n"})
    assert config.providers["openai"].api_key is None
    assert config.providers["groq"].api_key == "gsk-0123456789"


def test_config_api_key_decides_even_when_its_variable_is_unset(tmp_path):
    env = {"OPENAI_API_KEY": "sk-usual", "MY_OPENAI": "sk-mine"}
    config = load(tmp_path, '[providers.openai]\napi_key = "env:MY_OPENAI"\n', env)
    assert config.providers["openai"].api_key == "sk-mine"
    config = load(tmp_path, '[providers.openai]\napi_key = "env:NOT_SET"\n', env)
    assert config.providers["openai"].api_key is None
    config = load(tmp_path, '[providers.openai]\napi_key = "sk-literal"\n', env)
    assert config.providers["openai"].api_key == "sk-literal"


def test_base_url_override_keeps_the_rest_of_the_catalog_row(tmp_path):
    config = load(tmp_path, '[providers.openai]\nbase_url = "http://10.0.0.5:9000/v1/"\n')
    openai = config.providers["openai"]
    assert openai.base_url == "http://10.0.0.5:9000/v1"  # trailing slash stripped
    assert openai.models == CATALOG["openai"].models
    assert openai.builtin
    assert config.providers["groq"].base_url == CATALOG["groq"].base_url


def test_models_override_replaces_the_catalog_list(tmp_path):
    config = load(tmp_path, '[providers.groq]\nmodels = ["only-this"]\nstream_options = false\n')
    assert config.providers["groq"].models == ("only-this",)
    assert config.providers["groq"].stream_options is False


def test_custom_provider(tmp_path):
    text = '[providers.vllm]\nbase_url = "https://llm.internal/v1"\n' + (
        '[routes.mine]\ntargets = ["vllm/org/model-7b", "openai/gpt-4o-mini"]\n'
    )
    config = load(tmp_path, text)
    vllm = config.providers["vllm"]
    assert (vllm.name, vllm.base_url, vllm.api_key, vllm.models) == ("vllm", "https://llm.internal/v1", None, ())
    assert (vllm.stream_options, vllm.auth_style, vllm.builtin) == (True, "bearer", False)
    assert list(config.providers)[-1] == "vllm"
    assert config.routes["mine"].targets == ("vllm/org/model-7b", "openai/gpt-4o-mini")


def test_redis_url_from_env(tmp_path):
    config = load(tmp_path, '[redis]\nurl = "env:REDIS_URL"\n', {"REDIS_URL": "rediss://:pw@redis.internal:6380/1"})
    assert config.redis is not None
    assert config.redis.url == "rediss://:pw@redis.internal:6380/1"
    assert "pw" in config.secrets()


def test_auto_strategy_route_and_hedge_auto(tmp_path):
    text = '[routes.auto]\nstrategy = "race"\nhedge_delay_ms = "auto"\ntargets = ["openai/gpt-4o", "xai/grok-3"]\n'
    route = load(tmp_path, text).routes["auto"]
    assert (route.strategy, route.hedge_delay_ms, route.weights, route.judge) == ("race", "auto", None, None)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[sever]\n", "sever", "unknown key"),
        ('[server]\nhots = "x"\n', "server.hots", "unknown key"),
        ("[server]\nport = 8080\n[server.tls]\n", "server.tls", "unknown key"),
        ('[providers.openai]\napikey = "x"\n', "providers.openai.apikey", "unknown key"),
        (ROUTE + 'strategyy = "race"\n', "routes.fast.strategyy", "unknown key"),
        ('[auth]\nkeys = [{ id = "a", key = "k-0123456789", budget = 5 }]\n', "auth.keys[0].budget", "unknown key"),
        ('[prices."openai/gpt-4o"]\ninptu = 1\n', 'prices."openai/gpt-4o".inptu', "unknown key"),
        ("[ledger]\nstore = true\n", "ledger.store", "unknown key"),
        ("server = 5\n", "server", "must be a table, not an integer"),
        ('[server]\nport = "x"\n', "server.port", "must be an integer, not a string"),
        ("[server]\nport = true\n", "server.port", "must be an integer, not a boolean"),
        ("[server]\nport = 8080.0\n", "server.port", "must be an integer, not a float"),
        ("[server]\nport = 0\n", "server.port", "between 1 and 65535"),
        ("[server]\nport = 65536\n", "server.port", "between 1 and 65535"),
        ('[server]\nhost = ""\n', "server.host", "must not be empty"),
        ("[server]\nmax_body_bytes = 0\n", "server.max_body_bytes", ">= 1"),
        ("[server]\ndrain_s = -1\n", "server.drain_s", ">= 0"),
        ('[server]\ndrain_s = "20s"\n', "server.drain_s", "finite number, not a string"),
        ("[server]\ndrain_s = inf\n", "server.drain_s", "finite number"),
        ("[cache]\ndefault_ttl_s = 0\n", "cache.default_ttl_s", "> 0"),
        ("[cache]\ndefault_ttl_s = nan\n", "cache.default_ttl_s", "finite number"),
        ("[cache]\nmax_bytes = 10\nmax_entry_bytes = 20\n", "cache.max_entry_bytes", "<= max_bytes"),
        ("[timeouts]\nidle_s = -1\n", "timeouts.idle_s", "> 0"),
        ('[timeouts]\ntotal_s = "10"\n', "timeouts.total_s", "finite number, not a string"),
        ("[timeouts]\nconnect_s = inf\n", "timeouts.connect_s", "finite number"),
        ("[timeouts]\nconnect_s = 1" + "0" * 400 + "\n", "timeouts.connect_s", "finite number"),
        ("[retry]\nbudget_ratio = 1.5\n", "retry.budget_ratio", "between 0 and 1"),
        ("[retry]\nmax_wait_s = -0.5\n", "retry.max_wait_s", ">= 0"),
        ("[redis]\nop_timeout_ms = 0\n", "redis.op_timeout_ms", "> 0"),
        ('[redis]\nurl = "http://redis"\n', "redis.url", "redis://"),
        ('[redis]\nurl = "env:NO_SUCH_VAR"\n', "redis.url", "NO_SUCH_VAR is not set"),
        ("[ledger]\nstore_text = 1\n", "ledger.store_text", "must be a boolean"),
        ('[ledger]\npath = ""\n', "ledger.path", "must not be empty"),
    ],
)
def test_scalar_errors_name_their_key(tmp_path, text, key, problem):
    message = load_error(tmp_path, text)
    assert f": {key}: " in message
    assert problem in message


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[routes.fast]\nstrategy = "fastes"\ntargets = ["openai/gpt-4o"]\n', "routes.fast.strategy", "must be one of"),
        ('[routes.fast]\ntargets = ["llama"]\n', "routes.fast.targets[0]", '"provider/model"'),
        ('[routes.fast]\ntargets = ["openai/"]\n', "routes.fast.targets[0]", '"provider/model"'),
        ('[routes.fast]\ntargets = ["openai/a", "nope/b"]\n', "routes.fast.targets[1]", "unknown provider 'nope'"),
        ("[routes.fast]\ntargets = []\n", "routes.fast.targets", "at least one"),
        ('[routes.fast]\nstrategy = "cheapest"\n', "routes.fast.targets", "at least one"),
        ('[routes.fast]\ntargets = "openai/gpt-4o"\n', "routes.fast.targets", "must be an array of strings"),
        ('[routes.fast]\ntargets = ["openai/a", "openai/a"]\n', "routes.fast.targets", "twice"),
        ('[routes."a/b"]\ntargets = ["openai/a"]\n', 'routes."a/b"', 'no "/"'),
        ('[routes.quick]\nstrategy = "race"\ntargets = ["openai/a"]\n', "routes.quick.targets", "at least 2"),
        (ROUTE + 'hedge_delay_ms = "soon"\n', "routes.fast.hedge_delay_ms", '"auto"'),
        (ROUTE + "hedge_delay_ms = -5\n", "routes.fast.hedge_delay_ms", ">= 0"),
        (ROUTE + "hedge_delay_ms = true\n", "routes.fast.hedge_delay_ms", "not a boolean"),
        (ROUTE + "weights = [1]\n", "routes.fast.weights", 'strategy = "ab"'),
        (ROUTE + 'judge = "openai/gpt-4o"\n', "routes.fast.judge", 'strategy = "ab"'),
    ],
)
def test_route_errors_name_their_key(tmp_path, text, key, problem):
    message = load_error(tmp_path, text)
    assert f": {key}: " in message
    assert problem in message


AB = '[routes.trial]\nstrategy = "ab"\ntargets = ["openai/a", "groq/b"]\n'


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (AB + "weights = [1, 2, 3]\n", "routes.trial.weights", "3 entries but targets has 2"),
        (AB + "weights = [1, -2]\n", "routes.trial.weights[1]", ">= 0"),
        (AB + 'weights = [1, "2"]\n', "routes.trial.weights[1]", "finite number, not a string"),
        (AB + "weights = [0, 0]\n", "routes.trial.weights", "at least one weight > 0"),
        (AB + 'judge = "openai/gpt-4o"\njudge_sample_rate = 2\n', "routes.trial.judge_sample_rate", "between 0 and 1"),
        (AB + "judge_sample_rate = 0.5\n", "routes.trial.judge_sample_rate", "needs judge"),
        (AB + 'judge = "gpt-4o"\n', "routes.trial.judge", '"provider/model"'),
        ('[routes.trial]\nstrategy = "ab"\ntargets = ["openai/a"]\n', "routes.trial.targets", "at least 2"),
    ],
)
def test_ab_errors_name_their_key(tmp_path, text, key, problem):
    message = load_error(tmp_path, text)
    assert f": {key}: " in message
    assert problem in message


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[providers.local]\nmodels = ["m"]\n', "providers.local.base_url", "required for a custom provider"),
        ('[providers.openai]\nbase_url = "ftp://example.com/v1"\n', "providers.openai.base_url", "http:// or https://"),
        ('[providers.openai]\nbase_url = "https://"\n', "providers.openai.base_url", "with a host"),
        ('[providers.openai]\nbase_url = "api.openai.com/v1"\n', "providers.openai.base_url", "http:// or https://"),
        ('[providers.openai]\nbase_url = "https://u:p@h/v1"\n', "providers.openai.base_url", "credentials"),
        ('[providers.openai]\nbase_url = "https://h/v1?x=1"\n', "providers.openai.base_url", "query"),
        ('[providers.openai]\nbase_url = "https://h:99999/v1"\n', "providers.openai.base_url", "not a valid URL"),
        ('[providers."a/b"]\nbase_url = "https://h/v1"\n', 'providers."a/b"', "provider name"),
        ('[providers.local]\nbase_url = "https://h/v1"\nmodels = "m"\n', "providers.local.models", "array of strings"),
        ('[providers.local]\nbase_url = "https://h/v1"\nmodels = [""]\n', "providers.local.models[0]", "non-empty"),
        ('[providers.openai]\nstream_options = "false"\n', "providers.openai.stream_options", "must be a boolean"),
        ('[providers.openai]\napi_key = "env:"\n', "providers.openai.api_key", "variable name"),
        ("[providers.openai]\napi_key = 12345\n", "providers.openai.api_key", "must be a string"),
        ("[providers]\nopenai = 1\n", "providers.openai", "must be a table"),
        ("[prices.gpt]\ninput = 1\n", "prices.gpt", '"provider/model"'),
        ('[prices."acme/m"]\ninput = 1\n', 'prices."acme/m"', "unknown provider 'acme'"),
        ('[prices."openai/gpt-4o"]\ninput = -1\n', 'prices."openai/gpt-4o".input', ">= 0"),
    ],
)
def test_provider_and_price_errors_name_their_key(tmp_path, text, key, problem):
    message = load_error(tmp_path, text)
    assert f": {key}: " in message
    assert problem in message


@pytest.mark.parametrize(
    ("text", "env", "key", "problem"),
    [
        ("[auth]\n", {}, "auth", "needs admin_key or at least one entry in keys"),
        ('[auth]\nadmin_key = "env:ADMIN"\n', {}, "auth.admin_key", "ADMIN is not set"),
        ('[auth]\nadmin_key = "env:ADMIN"\n', {"ADMIN": ""}, "auth.admin_key", "ADMIN is not set or is empty"),
        ('[auth]\nadmin_key = ""\n', {}, "auth.admin_key", "must not be empty"),
        ('[auth]\nkeys = [{ id = "a", key = "env:KA" }]\n', {}, "auth.keys[0].key", "KA is not set"),
        ('[auth]\nkeys = [{ id = "a", key = "env:KA" }]\n', {"KA": " "}, "auth.keys[0].key", "KA is not set"),
        ('[auth]\nkeys = [{ id = "a" }]\n', {}, "auth.keys[0].key", "is required"),
        ('[auth]\nkeys = [{ key = "k-0123456789" }]\n', {}, "auth.keys[0].id", "is required"),
        ('[auth]\nkeys = [{ id = "a b", key = "k-0123456789" }]\n', {}, "auth.keys[0].id", "letters, digits"),
        ('[auth]\nkeys = "k"\n', {}, "auth.keys", "must be an array of tables"),
        ('[auth]\nkeys = ["k"]\n', {}, "auth.keys[0]", "must be a table, not a string"),
        (
            '[auth]\nkeys = [{ id = "a", key = "k-1" }, { id = "a", key = "k-2" }]\n',
            {},
            "auth.keys[1].id",
            "duplicate id 'a' (also keys[0])",
        ),
        (
            '[[auth.keys]]\nid = "a"\nkey = "same-0123456789"\n[[auth.keys]]\nid = "b"\nkey = "same-0123456789"\n',
            {},
            "auth.keys[1].key",
            "the same key value as keys[0]",
        ),
        (
            '[auth]\nadmin_key = "k-0123456789"\nkeys = [{ id = "a", key = "k-0123456789" }]\n',
            {},
            "auth.keys[0].key",
            "the same key value as admin_key",
        ),
        (
            '[auth]\nkeys = [{ id = "a", key = "k-1", budget_period = "week" }]\n',
            {},
            "auth.keys[0].budget_period",
            "one of day, month",
        ),
        ('[auth]\nkeys = [{ id = "a", key = "k-1", budget_usd = 5 }]\n', {}, "auth.keys[0].budget_period", "required"),
        (
            '[auth]\nkeys = [{ id = "a", key = "k-1", budget_period = "day" }]\n',
            {},
            "auth.keys[0].budget_usd",
            "required",
        ),
        (
            '[auth]\nkeys = [{ id = "a", key = "k-1", budget_usd = -1, budget_period = "day" }]\n',
            {},
            "auth.keys[0].budget_usd",
            ">= 0",
        ),
    ],
)
def test_auth_errors_name_their_key(tmp_path, text, env, key, problem):
    message = load_error(tmp_path, text, env)
    assert f": {key}: " in message
    assert problem in message


def test_error_names_the_file(tmp_path):
    path = tmp_path / "sluice.toml"
    path.write_text("[routes.fast]\nstrategy = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}: routes.fast.strategy: must be a string")
    assert info.value.key == "routes.fast.strategy"


def test_missing_file_is_a_config_error(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="file not found") as info:
        load_config(path, env={})
    assert str(path) in str(info.value)


def test_invalid_toml_is_a_config_error(tmp_path):
    message = load_error(tmp_path, "[server\nport = 1\n")
    assert message.startswith(str(tmp_path / "sluice.toml"))
    assert "invalid TOML" in message
    assert "line 1" in message


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "sluice.toml"
    path.write_bytes(b'[server]\nhost = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, env={})


def test_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path, env={})


def canary_config(tmp_path: Path) -> Config:
    text = (
        '[auth]\nadmin_key = "env:ADMIN"\nkeys = [{ id = "t", key = "env:TENANT" }, { id = "u", key = "lit-'
        + CANARY
        + '" }]\n[redis]\nurl = "redis://:'
        + CANARY
        + '-redis@127.0.0.1:6379/0"\n[providers.openai]\napi_key = "'
        + CANARY
        + '-openai"\n'
        + ROUTE
    )
    env = {"ADMIN": CANARY + "-admin", "TENANT": CANARY + "-tenant", "GROQ_API_KEY": CANARY + "-groq"}
    return load(tmp_path, text, env)


def test_secrets_lists_every_secret_longest_first(tmp_path):
    secrets = canary_config(tmp_path).secrets()
    expected = {f"{CANARY}-{suffix}" for suffix in ("admin", "tenant", "redis", "openai", "groq")} | {"lit-" + CANARY}
    assert set(secrets) == expected
    assert [len(s) for s in secrets] == sorted((len(s) for s in secrets), reverse=True)


def test_secrets_never_in_repr_or_describe(tmp_path):
    config = canary_config(tmp_path)
    for text in (repr(config), str(config), describe(config), repr(config.auth), repr(config.providers)):
        assert CANARY not in text
        assert CANARY[:-4] not in text  # not even most of it
    described = describe(config)
    assert "set (…enai)" in described  # openai's key: last 4 characters only
    assert "***@127.0.0.1:6379/0" in described


@pytest.mark.parametrize(
    "text",
    [
        # duplicate key values: the message names both places, never the value
        f'[auth]\nkeys = [{{ id = "a", key = "{CANARY}" }}, {{ id = "b", key = "{CANARY}" }}]\n',
        f'[auth]\nadmin_key = "{CANARY}"\nkeys = [{{ id = "a", key = "{CANARY}" }}]\n',
        # wrong type or shape next to a secret
        f'[auth]\nkeys = [{{ id = "a", key = "{CANARY}", budget_usd = "x" }}]\n',
        f'[providers.local]\napi_key = "{CANARY}"\n',
        f'[providers.openai]\napi_key = ["{CANARY}"]\n',
        f'[providers.openai]\nbase_url = "https://user:{CANARY}@h/v1"\n',
        f'[redis]\nurl = "http://:{CANARY}@h"\n',
        # broken TOML on the secret's own line
        f'[providers.openai]\napi_key = "{CANARY}\n',
        f"[providers.openai]\napi_key = {CANARY}\n",
    ],
)
def test_secrets_never_in_config_errors(tmp_path, text):
    message = load_error(tmp_path, text)
    assert CANARY not in message
    assert CANARY[3:12] not in message


def test_describe_shows_what_check_config_promises(tmp_path):
    out = describe(load(tmp_path, SPEC_EXAMPLE, SPEC_ENV))
    assert "127.0.0.1:8080" in out
    assert "team-a" in out
    assert "team-b" in out
    assert "budget 50 USD per month" in out
    assert "redis://127.0.0.1:6379/0" in out
    assert "https://api.cerebras.ai/v1" in out
    assert "http://127.0.0.1:8000/v1" in out
    assert "key set (…0004)" in out  # CEREBRAS_API_KEY, last 4 only
    assert "key none" in out
    assert "fast: fallback; cerebras/llama3.1-8b, groq/llama-3.1-8b-instant (no key), openai/gpt-4o-mini" in out
    assert "quick: race;" in out
    assert "hedge 150 ms" in out
    assert "trial: ab;" in out
    for secret in SPEC_ENV.values():
        assert secret not in out


def test_describe_defaults():
    out = describe(load_config(env={}))
    assert "auth:     off" in out
    assert "redis:    off" in out
    assert "routes:   none" in out
    for name in CATALOG:
        assert name in out


@pytest.mark.parametrize(
    ("secret", "shown"),
    [
        (None, "none"),
        ("", "none"),
        ("short", "set (…)"),
        ("elevenchars", "set (…)"),
        ("sk-0123456789wxyz", "set (…wxyz)"),
        (CANARY, f"set (…{CANARY[-4:]})"),
    ],
)
def test_mask_shows_at_most_the_last_four_characters(secret, shown):
    assert mask(secret) == shown


def test_config_is_frozen(tmp_path):
    config = load(tmp_path, SPEC_EXAMPLE, SPEC_ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server = ServerConfig(port=1)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes["fast"].strategy = "race"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.providers["openai"] = config.providers["groq"]  # type: ignore[index]
    with pytest.raises(TypeError):
        config.routes["new"] = config.routes["fast"]  # type: ignore[index]
