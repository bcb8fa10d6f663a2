"""A live gateway in front of a live fake provider, both under real uvicorn on loopback."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from proxy.app import build_app
from proxy.config import load_config
from proxy.demo import FakeProvider
from tests.redis_server import RedisServer, free_port
from tests.servers import serve

CANARY_KEY = "sk-canary-7f3a9c1e5b2d4f6a8c0e"


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll `condition` until it holds or `timeout` passes; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


@dataclass
class Live:
    """What a test gets: the gateway's URL, the fake behind it and the provider key in use."""

    url: str
    fake: FakeProvider
    fake_url: str


@pytest.fixture
def fake_server() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider()
    with serve(fake) as url:
        yield fake, url


@pytest.fixture
def gateway_factory(tmp_path, fake_server) -> Iterator[Callable[..., Live]]:
    """Start a gateway whose `fake` provider is the fake server; extra TOML is appended."""
    fake, fake_url = fake_server
    stops = []

    def start(extra: str = "", *, provider_key: str | None = CANARY_KEY, timeouts: str = "") -> Live:
        key_line = f'api_key = "{provider_key}"' if provider_key else ""
        text = textwrap.dedent(
            f"""
            [providers.fake]
            base_url = "{fake_url}/v1"
            models = ["echo", "gpt-fake"]
            {key_line}
            [timeouts]
            {timeouts or "connect_s = 2"}
            """
        ) + textwrap.dedent(extra)
        if "[ledger]" not in text:
            text += f'\n[ledger]\npath = "{tmp_path}/sluice-{len(stops)}.db"\n'  # each gateway its own ledger
        path = tmp_path / f"sluice-{len(stops)}.toml"
        path.write_text(text)
        context = serve(build_app(load_config(path, env={})))
        url = context.__enter__()
        stops.append(context)
        return Live(url=url, fake=fake, fake_url=fake_url)

    yield start
    for context in reversed(stops):
        context.__exit__(None, None, None)


@pytest.fixture
def live(gateway_factory) -> Live:
    """The default live gateway: provider `fake` with a configured (canary) key, no gateway auth."""
    return gateway_factory()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    yield server
    server.kill()
