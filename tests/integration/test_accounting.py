"""Per-call cost accounting as a user sees it: the cost header, the ledger views, the CLI, metrics and logs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from decimal import Decimal

import httpx
import openai
import pytest

from tests.integration.conftest import CANARY_KEY, wait_until

MESSAGES = [{"role": "user", "content": "Hello there, how are you today?"}]
CHAT = "/v1/chat/completions"
PRICED = """
[prices."fake/echo"]
input = 1.5
output = 2.0
"""
AUTH = """
[auth]
admin_key = "gk-admin-secret"
keys = [{ id = "team-a", key = "gk-team-a-secret" }]
"""
ADMIN = {"authorization": "Bearer gk-admin-secret"}


def chat(live, model="fake/echo", stream=False, headers=None, **extra) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "stream": stream, **extra}
    return httpx.post(live.url + CHAT, json=body, headers=headers or {}, timeout=10)


def expected_cost(usage) -> Decimal:
    return (Decimal(usage["prompt_tokens"]) * Decimal("1.5") + Decimal(usage["completion_tokens"]) * 2) / 1_000_000


def calls(live, headers=None, **query) -> list[dict]:
    response = httpx.get(live.url + "/sluice/calls", params=query, headers=headers or {})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def recorded(live, n, headers=None) -> list[dict]:
    """The newest calls once the ledger has `n` of them (it writes in the background)."""
    assert wait_until(lambda: len(calls(live, headers)) >= n, timeout=5)
    return calls(live, headers)


def test_a_priced_answer_carries_its_cost_and_the_ledger_keeps_it(gateway_factory):
    live = gateway_factory(PRICED)
    response = chat(live)
    usage = response.json()["usage"]
    cost = Decimal(response.headers["x-sluice-cost-usd"])
    assert cost == expected_cost(usage)
    [row] = recorded(live, 1)
    assert row["request_id"] == response.headers["x-request-id"]
    assert (row["provider"], row["model"], row["status"], row["cache_status"]) == ("fake", "echo", 200, "BYPASS")
    assert (row["input_tokens"], row["output_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert Decimal(row["cost_usd"]) == cost
    assert row["attempts"] == 1
    assert row["tries"][0]["status"] == 200


def test_an_unpriced_model_has_no_cost_header_and_counts_as_unpriced_not_free(live):
    response = chat(live)
    assert response.status_code == 200
    assert "x-sluice-cost-usd" not in response.headers
    recorded(live, 1)
    usage = httpx.get(live.url + "/sluice/usage", params={"by": "provider"}).json()
    assert usage["totals"]["unpriced"] == 1
    assert Decimal(usage["totals"]["cost_usd"]) == 0


def test_a_stream_gets_exactly_what_it_asked_for_and_is_still_priced(gateway_factory):
    live = gateway_factory(PRICED)
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="k", max_retries=0)
    chunks = list(client.chat.completions.create(model="fake/echo", messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in chunks)  # the usage event the gateway asked for was removed
    assert all(c.choices for c in chunks)
    assert live.fake.requests[0].json["stream_options"] == {"include_usage": True}
    [row] = recorded(live, 1)
    assert row["stream"] is True
    assert row["output_tokens"] > 0
    assert Decimal(row["cost_usd"]) > 0


def test_a_stream_that_asked_for_usage_gets_the_usage_event(gateway_factory):
    live = gateway_factory(PRICED)
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="k", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="fake/echo", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].choices == []


def test_a_cache_hit_costs_zero_and_records_what_it_saved(gateway_factory):
    live = gateway_factory(PRICED)
    on = {"x-sluice-cache": "on"}
    first = chat(live, headers=on)
    hit = chat(live, headers=on)
    assert hit.headers["x-sluice-cache"] == "HIT"
    assert hit.headers["x-sluice-cost-usd"] == "0"
    rows = recorded(live, 2)
    assert rows[0]["cache_status"] == "HIT"
    assert Decimal(rows[0]["cost_usd"]) == 0
    assert Decimal(rows[0]["saved_usd"]) == Decimal(first.headers["x-sluice-cost-usd"])
    usage = httpx.get(live.url + "/sluice/usage").json()["totals"]
    assert (usage["calls"], usage["cache_hits"]) == (2, 1)
    assert Decimal(usage["saved_usd"]) == Decimal(first.headers["x-sluice-cost-usd"])


def test_a_stream_cache_hit_records_the_saving_too(gateway_factory):
    live = gateway_factory(PRICED)
    on = {"x-sluice-cache": "on"}
    for _ in range(2):
        with httpx.stream(
            "POST", live.url + CHAT, json={"model": "fake/echo", "messages": MESSAGES, "stream": True}, headers=on
        ) as r:
            r.read()
    rows = recorded(live, 2)
    assert rows[0]["cache_status"] == "HIT"
    assert Decimal(rows[0]["saved_usd"]) == Decimal(rows[1]["cost_usd"]) > 0


def test_a_failed_call_is_recorded_with_each_try(gateway_factory):
    live = gateway_factory('[routes.chain]\ntargets = ["fake/503", "fake/502"]\n')
    response = chat(live, model="chain")
    assert response.status_code == 502
    [row] = recorded(live, 1)
    assert row["status"] == 502
    assert row["route"] == "chain"
    assert row["error"]
    assert [(t["model"], t["status"], t["possibly_billed"]) for t in row["tries"]] == [
        ("503", 503, False),
        ("502", 502, True),
    ]
    assert row["possibly_billed"] is True
    assert row["cost_usd"] is None


def test_calls_can_be_filtered_and_paged_newest_first(gateway_factory):
    live = gateway_factory(PRICED)
    ids = [chat(live, headers={"x-request-id": f"req-{i}"}).headers["x-request-id"] for i in range(5)]
    recorded(live, 5)
    assert [r["request_id"] for r in calls(live)] == ids[::-1]
    assert [r["request_id"] for r in calls(live, request_id="req-2")] == ["req-2"]
    page = httpx.get(live.url + "/sluice/calls", params={"limit": 2}).json()
    assert [r["request_id"] for r in page["data"]] == ["req-4", "req-3"]
    after = httpx.get(live.url + "/sluice/calls", params={"limit": 2, "before": page["next"]}).json()
    assert [r["request_id"] for r in after["data"]] == ["req-2", "req-1"]


@pytest.mark.parametrize(("query", "param"), [({"since": "yesterday"}, "since"), ({"by": "colour"}, "by")])
def test_bad_usage_queries_are_400s_naming_the_parameter(live, query, param):
    response = httpx.get(live.url + "/sluice/usage", params=query)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_the_views_need_the_admin_key_and_never_show_a_key(gateway_factory):
    live = gateway_factory(AUTH + PRICED)
    assert chat(live, headers={"authorization": "Bearer gk-team-a-secret"}).status_code == 200
    for path in ("/sluice/calls", "/sluice/usage", "/metrics"):
        assert httpx.get(live.url + path).status_code == 401
        assert httpx.get(live.url + path, headers={"authorization": "Bearer gk-team-a-secret"}).status_code == 403
    rows = recorded(live, 1, headers=ADMIN)
    assert rows[0]["key_id"] == "team-a"
    text = (
        httpx.get(live.url + "/sluice/calls", headers=ADMIN).text + httpx.get(live.url + "/metrics", headers=ADMIN).text
    )
    for secret in ("gk-team-a-secret", "gk-admin-secret", CANARY_KEY):
        assert secret not in text
    by_key = httpx.get(live.url + "/sluice/usage", params={"by": "key"}, headers=ADMIN).json()
    assert [r["group"]["key"] for r in by_key["rows"]] == ["team-a"]


def test_metrics_count_calls_cost_and_fallbacks(gateway_factory):
    live = gateway_factory(PRICED + '[routes.chain]\ntargets = ["fake/503", "fake/echo"]\n')
    chat(live)
    chat(live, model="chain")
    text = httpx.get(live.url + "/metrics").text
    assert 'sluice_requests_total{provider="fake",model="echo",status="200",cache="BYPASS"} 2' in text
    assert 'sluice_fallbacks_total{provider="fake",model="echo"} 1' in text
    assert "sluice_cost_usd_total{" in text
    assert "sluice_request_duration_seconds_bucket{" in text


def access_lines(caplog) -> list[str]:
    """The call lines logged so far (the gateway hands them to logging in batches)."""
    return [x for r in caplog.records if r.name == "sluice.access" for x in r.getMessage().splitlines()]


def test_one_json_log_line_per_call_without_keys(gateway_factory, caplog):
    live = gateway_factory(AUTH + PRICED)
    with caplog.at_level(logging.INFO, logger="sluice.access"):
        chat(live, headers={"authorization": "Bearer gk-team-a-secret"})
        chat(live, headers={"authorization": "Bearer gk-wrong"})  # refused before routing: logged all the same
        assert wait_until(lambda: len(access_lines(caplog)) >= 2)
    line, refused = [json.loads(x) for x in access_lines(caplog)]
    assert (refused["status"], refused["key_id"], refused["provider"]) == (401, None, None)
    assert (line["key_id"], line["provider"], line["status"], line["cache"], line["attempts"]) == (
        "team-a",
        "fake",
        200,
        "BYPASS",
        1,
    )
    assert Decimal(line["cost_usd"]) > 0
    assert "gk-team-a-secret" not in caplog.text
    assert CANARY_KEY not in caplog.text


def test_sluice_usage_prints_the_table_from_the_ledger(gateway_factory, tmp_path):
    live = gateway_factory(PRICED)
    for _ in range(3):
        chat(live)
    recorded(live, 3)
    config = sorted(tmp_path.glob("sluice-*.toml"))[-1]
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "usage", "--config", str(config), "--by", "provider,model"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["provider", "model", "calls"]
    assert any(line.split()[:3] == ["fake", "echo", "3"] for line in lines)
    assert lines[-1].split()[:2] == ["total", "3"]


def test_sluice_usage_refuses_an_unknown_dimension(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "usage", "--by", "colour"], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 2
    assert "colour" in out.stderr
