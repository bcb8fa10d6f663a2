"""The `sluice` command: serve, demo, check-config, usage (SPEC §2)."""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvicorn

from middleware.errors import SluiceError
from middleware.types import ASGIApp, Receive, Scope, Send
from proxy.app import build_app
from proxy.config import ConfigError, describe, load_config
from proxy.ledger.base import check_dimensions
from proxy.shutdown import GracefulServer, graceful_timeout_s

# Hands the config path to worker processes, which import the app afresh.
_CONFIG_PATH_VAR = "SLUICE_CONFIG_PATH"
DEMO_PREFIX = "/_demo"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sluice` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="A self-hosted, zero-markup LLM gateway.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="TOML config file (default: ./sluice.toml when present)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(run=_serve)

    demo = commands.add_parser("demo", help="run the gateway with a built-in fake provider; no keys, no network")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.set_defaults(run=_demo)

    check = commands.add_parser("check-config", help="validate a config and print the resolved routes")
    check.add_argument("--config", help="TOML config file (default: ./sluice.toml when present)")
    check.set_defaults(run=_check_config)

    usage = commands.add_parser("usage", help="the cost table from the ledger the config names")
    usage.add_argument("--config", help="TOML config file (default: ./sluice.toml when present)")
    usage.add_argument("--since", default="24h", help="a window like 24h, 7d, 30m, or a date (default 24h)")
    usage.add_argument(
        "--by", default="provider,model", help="comma list of provider, model, key, route, day, hour, minute"
    )
    usage.set_defaults(run=_usage)
    return parser


def _usage(args: argparse.Namespace) -> int:
    from proxy.usage_table import render, usage_rows  # the ledger's modules, only for this command

    config = load_config(_config_path(args.config))
    by = [d.strip() for d in args.by.split(",") if d.strip()]
    try:
        check_dimensions(by)
        rows = usage_rows(config, args.since, by)
    except (ValueError, SluiceError) as exc:
        print(f"sluice usage: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    print(render(rows, by))
    return 0


def _config_path(given: str | None) -> str | None:
    if given is not None:
        return given
    return "sluice.toml" if Path("sluice.toml").is_file() else None


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args.config))
    print(describe(config))
    return 0


def _serve(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    config = load_config(path)
    host = args.host or config.server.host
    port = args.port or config.server.port
    options = _uvicorn_options(host, port, config.server.drain_s)
    if args.workers > 1:
        if path is not None:
            os.environ[_CONFIG_PATH_VAR] = str(Path(path).resolve())
        # uvicorn's supervisor sends each worker SIGTERM, and each drains on its own (proxy.shutdown);
        # the supervisor, the process a service manager watches, exits 0 once they are done.
        uvicorn.run("proxy.cli:app_from_environment", factory=True, workers=args.workers, **options)
        return 0
    server = GracefulServer(uvicorn.Config(build_app(config, tune_gc=True, drain_on_signals=True), **options))
    server.run()
    return 0 if server.started else uvicorn.config.STARTUP_FAILURE


def app_from_environment() -> ASGIApp:
    """The app factory each worker process calls (`serve --workers N`)."""
    return build_app(load_config(os.environ.get(_CONFIG_PATH_VAR)), tune_gc=True, drain_on_signals=True)


def _uvicorn_options(host: str, port: int, drain_s: float) -> dict[str, Any]:
    # uvloop + httptools, no access log: PERF-NOTES.md's fastest measured setup.
    return {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,  # nothing reads the client address; saves ~2% CPU per request
        "lifespan": "on",
        "timeout_graceful_shutdown": graceful_timeout_s(drain_s),  # past the drain deadline: the drain decides
        "log_config": log_config(),
    }


def log_config() -> dict[str, Any]:
    """uvicorn's logging, plus one JSON line per call on stdout (`sluice.access`, SPEC §11)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["sluice_json"] = {"format": "%(message)s"}
    config["handlers"]["sluice_access"] = {
        "class": "logging.StreamHandler",
        "formatter": "sluice_json",
        "stream": "ext://sys.stdout",
    }
    config["loggers"]["sluice.access"] = {"handlers": ["sluice_access"], "level": "INFO", "propagate": False}
    return config


def _demo(args: argparse.Namespace) -> int:
    reach = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    base = f"http://{reach}:{args.port}"
    with tempfile.TemporaryDirectory() as folder:
        config_file = Path(folder) / "demo.toml"
        config_file.write_text(demo_config_text(base + DEMO_PREFIX + "/v1"))
        config = load_config(config_file)
    from proxy.demo import FakeProvider  # imported here: `serve` never needs it

    print(demo_banner(base))
    options = _uvicorn_options(args.host, args.port, config.server.drain_s)
    uvicorn.run(DemoApp(build_app(config), FakeProvider()), **options)
    return 0


def demo_config_text(provider_url: str) -> str:
    """The demo's config: one custom provider, the fake, served by the same process, with made-up prices."""
    return f"""
[providers.demo]
base_url = "{provider_url}"
models = ["echo"]
stream_options = true

[routes.fast]                     # its first target always answers 503: calls fall back
targets = ["demo/503", "demo/echo"]

[routes.trial]                    # an A/B test: "echo" against "terse", every call judged
strategy = "ab"
targets = ["demo/echo", "demo/terse"]
weights = [50, 50]
judge = "demo/judge"              # a toy judge: the longer answer wins
judge_sample_rate = 1.0

[prices."demo/echo"]              # made up, so the demo's calls have a cost to show
input = 0.15
output = 0.60

[prices."demo/terse"]
input = 0.05
output = 0.20

[prices."demo/judge"]
input = 0.10
output = 0.40
"""


def demo_banner(base: str) -> str:
    """What `sluice demo` prints: ready-to-paste calls."""
    body = '{"model": "demo/echo", "messages": [{"role": "user", "content": "Hello"}]}'
    stream_body = body[:-1] + ', "stream": true}'
    fast_body = body.replace("demo/echo", "fast")
    trial_body = body.replace("demo/echo", "trial")
    return f"""Sluice demo: the gateway on {base}, a fake provider behind it (no keys, no network).

A completion:
  curl -s {base}/v1/chat/completions -H 'content-type: application/json' -d '{body}'

A stream:
  curl -sN {base}/v1/chat/completions -H 'content-type: application/json' -d '{stream_body}'

A cache hit (run it twice: MISS, then HIT):
  curl -si {base}/v1/chat/completions -H 'content-type: application/json' -H 'x-sluice-cache: on' \\
    -d '{body}' | grep -i '^x-sluice-cache'

A fallback (route "fast": its first target answers 503, the second serves; after 5 such
failures in a row the first is ejected for a while and X-Sluice-Attempts drops to 1):
  curl -si {base}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{fast_body}' | grep -i '^x-sluice-\\(model\\|attempts\\|cost\\)'

An A/B test (route "trial": subjects split between two variants, each answer compared with the
other variant's by a judge in the background); send a few, then read who wins:
  for u in ann bob cy dee; do curl -s {base}/v1/chat/completions -H 'content-type: application/json' \
    -H "x-sluice-subject: $u" -d '{trial_body}' -o /dev/null; done; curl -s {base}/sluice/experiments

What it all cost, per provider and model:
  curl -s '{base}/sluice/usage?since=1h&by=provider,model'

All of it on one page (spend, errors, cache savings, the last calls and their attempts):
  {base}/dashboard

With the openai SDK:
  from openai import OpenAI
  client = OpenAI(base_url="{base}/v1", api_key="unused")
  reply = client.chat.completions.create(model="demo/echo", messages=[{{"role": "user", "content": "Hi"}}])
  print(reply.choices[0].message.content)

Routable models: curl -s {base}/v1/models     Stop with Ctrl-C.
"""


class DemoApp:
    """The gateway, with the fake provider answering under /_demo on the same port."""

    def __init__(self, gateway: ASGIApp, provider: ASGIApp) -> None:
        self.gateway = gateway
        self.provider = provider

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(DEMO_PREFIX + "/"):
            raw: bytes = scope.get("raw_path") or path.encode()
            inner = {**scope, "path": path[len(DEMO_PREFIX) :], "raw_path": raw[len(DEMO_PREFIX) :]}
            await self.provider(inner, receive, send)
        else:
            await self.gateway(scope, receive, send)
