"""Per-key budgets on the live gateway (SPEC §10): reserve, settle, 429 at the limit, shared by replicas.

The numbers: with `fake/echo` at $20 per million tokens in and out, a call of
`BODY` reserves (9 estimated prompt + 8 max_tokens) * 20 / 1e6 = $0.00034 and,
once answered (1 prompt + 7 completion tokens), costs $0.00016. Against
$0.001 a day, the k-th call fits while 0.00016 * (k - 1) + 0.00034 <= 0.001:
five calls, then 429s, with $0.0008 spent.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import redis

from proxy.demo import Step

from .conftest import wait_until
from .test_cache_redis import redis_toml, replica

CHAT = "/v1/chat/completions"
BODY = {"model": "fake/echo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
TEAM_A = {"authorization": "Bearer gk-a"}
TEAM_B = {"authorization": "Bearer gk-b"}
ADMIN = {"authorization": "Bearer gk-admin"}
BUDGET = Decimal("0.001")
COST = Decimal("0.00016")
FIT = 5
CONFIG = """
[auth]
admin_key = "gk-admin"
keys = [
  { id = "team-a", key = "gk-a", budget_usd = 0.001, budget_period = "day" },
  { id = "team-b", key = "gk-b" },
]
[prices."fake/echo"]
input = 20
output = 20
[prices."fake/400"]
input = 20
output = 20
"""


def chat(url: str, headers=TEAM_A, body=BODY) -> httpx.Response:
    return httpx.post(url + CHAT, json=body, headers=headers, timeout=10)


def ledger(url: str, n: int, **query) -> list[dict]:
    """The newest calls matching `query`, once the ledger has `n` of them (it writes in the background)."""

    def rows() -> list[dict]:
        return httpx.get(url + "/sluice/calls", params=query, headers=ADMIN).json()["data"]

    assert wait_until(lambda: len(rows()) >= n, timeout=5)
    return rows()


def tomorrow() -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=1)


def test_calls_go_through_until_the_budget_is_spent_then_429_naming_it(gateway_factory):
    live = gateway_factory(CONFIG)
    for _ in range(FIT):
        response = chat(live.url)
        assert response.status_code == 200
        assert Decimal(response.headers["x-sluice-cost-usd"]) == COST
    refused = chat(live.url)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("rate_limit_error", "budget_exceeded", None)
    reset = tomorrow()
    assert error["message"] == (
        "budget exceeded for key 'team-a': $0.0008 of $0.001 per day spent (calls in flight included) "
        f"and this call may cost up to $0.00034; the budget resets at {reset:%Y-%m-%dT%H:%M:%SZ}"
    )
    retry_after = int(refused.headers["retry-after"])
    assert abs(retry_after - math.ceil((reset - datetime.now(UTC)).total_seconds())) <= 2
    assert refused.headers["x-sluice-attempts"] == "0"
    assert live.fake.count() == FIT  # a refused call never reaches a provider

    assert chat(live.url, headers=TEAM_B).status_code == 200  # a key without a budget is unaffected

    [row] = ledger(live.url, 1, status=429)
    assert (row["key_id"], row["status"], row["attempts"]) == ("team-a", 429, 0)
    assert "budget exceeded for key 'team-a': $0.0008 of $0.001 per day" in row["error"]
    spent = [Decimal(r["cost_usd"]) for r in ledger(live.url, FIT, key="team-a", status=200)]
    assert sum(spent) == FIT * COST <= BUDGET


def test_an_unpriced_model_cannot_be_bounded_and_is_never_free(gateway_factory):
    live = gateway_factory(CONFIG)
    response = chat(live.url, body=BODY | {"model": "fake/gpt-fake"})  # no price: $0.05 is reserved
    assert response.status_code == 429
    assert "may cost up to $0.05, more than the whole budget" in response.json()["error"]["message"]


def test_a_call_refused_upstream_gives_its_reservation_back(gateway_factory):
    live = gateway_factory(CONFIG)
    for _ in range(3):
        assert chat(live.url, body=BODY | {"model": "fake/400"}).status_code == 400  # not billed
    assert [chat(live.url).status_code for _ in range(FIT + 1)] == [200] * FIT + [429]


async def _burst(urls: list[str], n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=10) as client:
        return await asyncio.gather(
            *(client.post(urls[i % len(urls)] + CHAT, json=BODY, headers=TEAM_A) for i in range(n))
        )


def test_a_concurrent_burst_never_spends_more_than_the_budget(gateway_factory):
    live = gateway_factory(CONFIG)
    live.fake.script.default = Step(first_byte_delay_s=0.5)  # all 20 are in flight together
    responses = asyncio.run(_burst([live.url], 20))
    statuses = [r.status_code for r in responses]
    answered = statuses.count(200)
    assert 1 <= answered <= FIT
    assert statuses.count(429) == 20 - answered
    rows = ledger(live.url, 20, key="team-a")
    assert sum(Decimal(r["cost_usd"]) for r in rows if r["cost_usd"] is not None) <= BUDGET
    assert live.fake.count() == answered


def test_a_cache_hit_is_served_even_when_the_budget_is_spent(gateway_factory):
    live = gateway_factory(CONFIG)
    cached = {**TEAM_A, "x-sluice-cache": "on"}
    assert chat(live.url, headers=cached).headers["x-sluice-cache"] == "MISS"  # spends like any call
    while chat(live.url).status_code == 200:
        pass
    hit = chat(live.url, headers=cached)
    assert (hit.status_code, hit.headers["x-sluice-cache"]) == (200, "HIT")
    assert Decimal(hit.headers["x-sluice-cost-usd"]) == 0
    other = BODY | {"messages": [{"role": "user", "content": "Ho"}]}
    assert chat(live.url, headers=cached, body=other).status_code == 429  # a miss still needs the budget
    assert live.fake.count() == FIT


def replica_config(tmp_path, fake_url: str, redis_url: str):
    """One config for every replica: budgets and the ledger in Redis (its spool, unused here, in tmp_path)."""
    config = tmp_path / "replica.toml"
    provider = f'[providers.fake]\nbase_url = "{fake_url}/v1"\napi_key = "sk-x"\n'
    config.write_text(provider + CONFIG + redis_toml(redis_url, 500) + f'[ledger]\npath = "{tmp_path}/replica.db"\n')
    return config


def test_two_gateway_processes_sharing_redis_share_one_budget(fake_server, redis_server, tmp_path):
    config = replica_config(tmp_path, fake_server[1], redis_server.url)
    client = redis.Redis(port=redis_server.port)
    key = f"sluice:v1:budget:team-a:{datetime.now(UTC):%Y-%m-%d}".encode()
    with replica(config) as first, replica(config) as second:
        statuses = []
        for url in (first, second) * 4:
            response = chat(url)
            statuses.append(response.status_code)
            if response.status_code == 200:  # settled after the answer went out: wait for it
                settled = str(int(statuses.count(200) * COST * 10**9)).encode()
                assert wait_until(lambda settled=settled: client.get(key) == settled, timeout=5)
        assert statuses == [200] * FIT + [429] * 3
        assert client.get(key) == b"800000"
        assert 0 < client.ttl(key) <= 2 * 86400
        burst = asyncio.run(_burst([first, second], 4))
        assert {r.status_code for r in burst} == {429}
        assert chat(first, headers=TEAM_B).status_code == 200


def test_a_burst_split_across_replicas_never_spends_more_than_the_budget(fake_server, redis_server, tmp_path):
    fake, fake_url = fake_server
    fake.script.default = Step(first_byte_delay_s=0.5)
    config = replica_config(tmp_path, fake_url, redis_server.url)
    with replica(config) as first, replica(config) as second:
        responses = asyncio.run(_burst([first, second], 20))
    answered = [r for r in responses if r.status_code == 200]
    assert 1 <= len(answered) <= FIT
    assert sum(Decimal(r.headers["x-sluice-cost-usd"]) for r in answered) <= BUDGET
    assert [r.status_code for r in responses].count(429) == 20 - len(answered)
    assert fake.count() == len(answered)
