"""`cheapest` and `fastest` routes as a user sees them: who serves, and fallback within the order."""

from __future__ import annotations

import httpx

MESSAGES = [{"role": "user", "content": "Hello"}]
PRICES = """
[prices."fake/pricey"]
input = 10.0
output = 30.0
[prices."fake/bargain"]
input = 0.1
output = 0.2
[prices."fake/503"]
input = 0.01
output = 0.01
"""


def chat(live, model, headers=None, stream=False) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    return httpx.post(live.url + "/v1/chat/completions", json=body, headers=headers or {}, timeout=10)


def route(name, strategy, *targets) -> str:
    listed = ", ".join(f'"{t}"' for t in targets)
    return f'[routes.{name}]\nstrategy = "{strategy}"\ntargets = [{listed}]\n'


def test_cheapest_serves_the_cheapest_target_for_this_request(gateway_factory):
    live = gateway_factory(PRICES + route("thrifty", "cheapest", "fake/pricey", "fake/unpriced", "fake/bargain"))
    response = chat(live, "thrifty")
    assert response.status_code == 200
    assert response.headers["x-sluice-model"] == "bargain"
    assert response.headers["x-sluice-attempts"] == "1"


def test_cheapest_falls_back_in_price_order_and_unpriced_go_last(gateway_factory):
    live = gateway_factory(PRICES + route("thrifty", "cheapest", "fake/unpriced", "fake/pricey", "fake/503"))
    response = chat(live, "thrifty")
    assert response.headers["x-sluice-model"] == "pricey"
    assert [r.model for r in live.fake.requests] == ["503", "pricey"]


def test_x_sluice_route_cheapest_reorders_any_route(gateway_factory):
    live = gateway_factory(PRICES + route("chain", "fallback", "fake/pricey", "fake/bargain"))
    assert chat(live, "chain").headers["x-sluice-model"] == "pricey"
    assert chat(live, "chain", {"x-sluice-route": "cheapest"}).headers["x-sluice-model"] == "bargain"


def test_fastest_prefers_the_target_that_has_been_quicker(gateway_factory):
    live = gateway_factory(route("quick", "fastest", "fake/slow-ttft-0.2", "fake/echo"))
    for _ in range(6):  # every call is observed, whatever its route: warm both estimates
        assert chat(live, "fake/slow-ttft-0.2").status_code == 200
        assert chat(live, "fake/echo").status_code == 200
    served = [chat(live, "quick").headers["x-sluice-model"] for _ in range(10)]
    assert served.count("echo") >= 8  # a small exploring share may still try the other


def test_fastest_with_no_data_keeps_the_configured_order(gateway_factory):
    live = gateway_factory(route("quick", "fastest", "fake/first", "fake/second"))
    assert chat(live, "quick").headers["x-sluice-model"] == "first"


def test_fastest_counts_errors_against_a_target(gateway_factory):
    live = gateway_factory(route("quick", "fastest", "fake/503-then-200:6", "fake/echo"))
    for _ in range(6):
        chat(live, "fake/503-then-200:6")
        chat(live, "fake/echo")
    served = [chat(live, "quick").headers["x-sluice-model"] for _ in range(10)]
    assert served.count("echo") >= 8
