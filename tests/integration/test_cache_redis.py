"""The cache shared through a real Redis: across replicas, and failing open when Redis misbehaves."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import redis

from proxy.demo import Step
from tests.redis_server import free_port

from .conftest import wait_until

MESSAGES = [{"role": "user", "content": "Hello"}]
CHAT = "/v1/chat/completions"
ON = {"x-sluice-cache": "on", "authorization": "Bearer client-key"}
BODY = {"model": "fake/echo", "messages": MESSAGES}


def redis_toml(url: str, op_timeout_ms: int = 50) -> str:
    return f'[redis]\nurl = "{url}"\nop_timeout_ms = {op_timeout_ms}\n'


def post(url: str, body=BODY, headers=ON) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(url + CHAT, json=body, headers=headers, timeout=10)
    return response, time.monotonic() - started


def test_entries_live_in_redis_under_versioned_keys(gateway_factory, redis_server):
    live = gateway_factory(redis_toml(redis_server.url))
    first, _ = post(live.url)
    second, _ = post(live.url)
    assert (first.headers["x-sluice-cache"], second.headers["x-sluice-cache"]) == ("MISS", "HIT")
    client = redis.Redis(port=redis_server.port)
    keys = client.keys(b"sluice:v1:cache:*")  # the ledger keeps its own keys beside the cache
    assert len(keys) == 1
    assert keys[0].startswith(b"sluice:v1:cache:anon:")
    assert 0 < client.pttl(keys[0]) <= 3600_000
    assert httpx.get(live.url + "/readyz").json() == {"status": "ready", "redis": "up"}


def test_no_store_writes_nothing_to_redis(gateway_factory, redis_server):
    live = gateway_factory(redis_toml(redis_server.url))
    response, _ = post(live.url, headers={**ON, "cache-control": "no-store"})
    assert response.headers["x-sluice-cache"] == "BYPASS"
    assert redis.Redis(port=redis_server.port).keys(b"sluice:v1:cache:*") == []


async def _burst(urls: list[str], n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=10) as client:
        return await asyncio.gather(*(client.post(urls[i % 2] + CHAT, json=BODY, headers=ON) for i in range(n)))


def test_two_gateway_processes_share_entries_and_single_flight(fake_server, redis_server, tmp_path):
    fake, fake_url = fake_server
    config = tmp_path / "replica.toml"
    config.write_text(
        f'[providers.fake]\nbase_url = "{fake_url}/v1"\napi_key = "sk-x"\n' + redis_toml(redis_server.url, 500)
    )
    fake.script.steps.append(Step(first_byte_delay_s=0.5))
    with replica(config) as first, replica(config) as second:
        responses = asyncio.run(_burst([first, second], 50))
    assert [r.status_code for r in responses] == [200] * 50
    assert sorted(r.headers["x-sluice-cache"] for r in responses) == ["HIT"] * 49 + ["MISS"]
    assert fake.count() == 1


@contextlib.contextmanager
def replica(config) -> Iterator[str]:
    """`sluice serve` in its own process, as a replica would run."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _healthy(url), timeout=15), "the replica did not start"
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=0.5).status_code == 200
    except httpx.TransportError:
        return False


def test_gateway_started_while_redis_is_down_serves_bypass_then_caches_when_it_returns(gateway_factory, redis_server):
    redis_server.kill()
    live = gateway_factory(redis_toml(redis_server.url))
    for _ in range(8):
        response, elapsed = post(live.url)
        assert response.status_code == 200
        assert response.headers["x-sluice-cache"] == "BYPASS"
        assert elapsed < 0.5
    ready = httpx.get(live.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["redis"] == "down"
    redis_server.start()
    assert wait_until(lambda: post(live.url)[0].headers["x-sluice-cache"] == "MISS", timeout=8)
    assert post(live.url)[0].headers["x-sluice-cache"] == "HIT"


def test_frozen_redis_costs_each_call_a_bounded_wait_and_never_an_error(gateway_factory, redis_server):
    live = gateway_factory(redis_toml(redis_server.url))
    assert post(live.url)[0].headers["x-sluice-cache"] == "MISS"
    redis_server.signal(signal.SIGSTOP)
    try:
        timings = []
        for _ in range(10):
            response, elapsed = post(live.url)
            assert response.status_code == 200
            assert response.headers["x-sluice-cache"] in ("BYPASS", "MISS")
            timings.append(elapsed)
        assert max(timings) < 0.5, timings
    finally:
        redis_server.signal(signal.SIGCONT)
    assert wait_until(lambda: post(live.url)[0].headers["x-sluice-cache"] == "HIT", timeout=8)
