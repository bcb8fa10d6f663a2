"""Two `sluice serve` processes sharing one real Redis honour each other's cooldowns and circuits (SPEC §8)."""

from __future__ import annotations

import signal
import time

import httpx

from .test_cache_redis import redis_toml, replica

MESSAGES = [{"role": "user", "content": "Hello"}]
CHAT = "/v1/chat/completions"


def config_for(tmp_path, fake_url, redis_url, *targets):
    listed = ", ".join(f'"{t}"' for t in targets)
    path = tmp_path / "replica.toml"
    path.write_text(
        f'[providers.fake]\nbase_url = "{fake_url}/v1"\napi_key = "sk-replica-test-000000"\n'
        f"[routes.chain]\ntargets = [{listed}]\n" + redis_toml(redis_url, 200)
    )
    return path


def chat(url):
    return httpx.post(url + CHAT, json={"model": "chain", "messages": MESSAGES}, timeout=10)


def test_a_cooldown_learned_by_one_replica_is_honoured_by_the_other(fake_server, redis_server, tmp_path):
    fake, fake_url = fake_server
    config = config_for(tmp_path, fake_url, redis_server.url, "fake/429-ra-3", "fake/echo")
    with replica(config) as first, replica(config) as second:
        assert chat(first).headers["x-sluice-attempts"] == "2"  # learns: 429, Retry-After 3
        for _ in range(5):
            response = chat(second)
            assert response.status_code == 200
            assert response.headers["x-sluice-attempts"] == "1"  # never tried before the reset
        assert [r.model for r in fake.requests].count("429-ra-3") == 1
        time.sleep(3.1)
        assert chat(second).headers["x-sluice-attempts"] == "2"  # the reset passed: tried again
    assert [r.model for r in fake.requests].count("429-ra-3") == 2


def test_failures_seen_by_both_replicas_open_one_shared_circuit(fake_server, redis_server, tmp_path):
    fake, fake_url = fake_server
    config = config_for(tmp_path, fake_url, redis_server.url, "fake/503", "fake/echo")
    with replica(config) as first, replica(config) as second:
        for url in (first, second, first, second, first):  # 5 failures, split across replicas
            assert chat(url).status_code == 200
        for url in (first, second) * 3:
            assert chat(url).headers["x-sluice-attempts"] == "1"  # ejected for both
    assert [r.model for r in fake.requests].count("503") == 5


def test_with_redis_frozen_each_replica_keeps_its_own_state_and_answers(fake_server, redis_server, tmp_path):
    fake, fake_url = fake_server
    config = config_for(tmp_path, fake_url, redis_server.url, "fake/429-ra-30", "fake/echo")
    with replica(config) as first:
        assert chat(first).status_code == 200
        redis_server.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            for _ in range(3):
                response = chat(first)
                assert response.status_code == 200
                assert response.headers["x-sluice-attempts"] == "1"  # its own memory still knows
            assert time.monotonic() - started < 3
        finally:
            redis_server.signal(signal.SIGCONT)
    assert [r.model for r in fake.requests].count("429-ra-30") == 1
