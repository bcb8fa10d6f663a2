"""/sluice/experiments as a user sees it: an A/B route's variants, their traffic and latency, from the ledger."""

from __future__ import annotations

import httpx

from tests.integration.conftest import wait_until
from tests.integration.test_ab_live import AB, chat

AUTH = """
[auth]
admin_key = "gk-admin-secret"
keys = [{ id = "team-a", key = "gk-team-a-secret" }]
"""
ADMIN = {"authorization": "Bearer gk-admin-secret"}
TENANT = {"authorization": "Bearer gk-team-a-secret"}


def experiments(live, headers=None, **query) -> httpx.Response:
    return httpx.get(live.url + "/sluice/experiments", params=query, headers=headers or {}, timeout=10)


def trial_calls(live, headers=None) -> int:
    """The calls /sluice/experiments counts for route "trial" so far."""
    routes = {route["route"]: route for route in experiments(live, headers).json()["routes"]}
    return sum(v["calls"] for v in routes["trial"]["variants"]) if "trial" in routes else 0


def test_an_ab_route_lists_both_variants_with_their_calls_and_latency(gateway_factory):
    live = gateway_factory(AB)
    made = {"fake/first": 0, "backup": 0}
    for i in range(30):
        response = chat(live, user=f"subject-{i}", stream=i % 3 == 0)
        assert response.status_code == 200
        made[response.headers["x-sluice-variant"]] += 1
    chat(live, model="fake/echo")  # not an A/B call: not in the report
    assert wait_until(lambda: trial_calls(live) == 30, timeout=5)

    response = experiments(live, since="7d")
    assert response.status_code == 200
    report = response.json()
    assert report["since"].endswith("+00:00")
    [trial] = report["routes"]
    assert trial["route"] == "trial"
    variants = {v["variant"]: v for v in trial["variants"]}
    assert {name: v["calls"] for name, v in variants.items()} == made
    for variant in variants.values():
        assert variant["errors"] == 0
        assert variant["latency_ms"]["p50"] > 0
        assert variant["latency_ms"]["p95"] >= variant["latency_ms"]["p50"]
        assert (variant["judged"], variant["wins"], variant["losses"], variant["ties"]) == (0, 0, 0, 0)
        assert variant["win_rate"] is None
        assert variant["win_rate_95"] is None
        assert variant["cost_per_call_usd"] is None  # the fake models have no price: unknown, not free
    assert any(v["ttft_ms"]["p50"] is not None for v in variants.values())  # streams went to some variant
    assert trial["judge_usd"] == "0"


def test_a_window_with_no_ab_calls_is_an_empty_list(gateway_factory):
    live = gateway_factory(AB)
    chat(live, user="early")
    assert wait_until(lambda: trial_calls(live) == 1, timeout=5)
    assert experiments(live, since="2999-01-01").json()["routes"] == []


def test_a_bad_since_is_a_400_naming_the_parameter(gateway_factory):
    live = gateway_factory(AB)
    response = experiments(live, since="last week")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "since"


def test_with_auth_the_view_needs_the_admin_key(gateway_factory):
    live = gateway_factory(AB + AUTH)
    assert chat(live, TENANT, user="carol").status_code == 200
    assert experiments(live, TENANT).status_code == 403
    assert experiments(live).status_code == 401
    assert wait_until(lambda: trial_calls(live, ADMIN) == 1, timeout=5)
