"""Backoff, circuits, the retry budget and the call deadline, seen from the fake providers' request logs."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from proxy.demo import FakeProvider
from proxy.demo_script import Step
from tests.servers import serve

MESSAGES = [{"role": "user", "content": "Hello"}]
CHAT = "/v1/chat/completions"


def route(*targets: str, name: str = "chain", extra: str = "") -> str:
    return f"[routes.{name}]\ntargets = [" + ", ".join(f'"{t}"' for t in targets) + f"]\n{extra}"


def provider(name: str, url: str, key: str = "sk-other-provider-key-0000") -> str:
    return f'[providers.{name}]\nbase_url = "{url}/v1"\nmodels = ["echo"]\napi_key = "{key}"\n'


def chat(live, model="chain", stream=False, headers=None, timeout=10) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    return httpx.post(live.url + CHAT, json=body, headers=headers or {}, timeout=timeout)


@pytest.fixture
def other():
    fake = FakeProvider()
    with serve(fake) as url:
        yield fake, url


def test_a_429_cools_its_target_down_until_the_reset_and_the_next_target_answers_meanwhile(gateway_factory):
    live = gateway_factory(route("fake/429-ra-1", "fake/echo"))
    first = chat(live)
    assert first.status_code == 200
    assert first.headers["x-sluice-attempts"] == "2"
    for _ in range(5):
        during = chat(live)
        assert during.status_code == 200
        assert during.headers["x-sluice-attempts"] == "1"  # the cooling target is not even tried
    assert [r.model for r in live.fake.requests].count("429-ra-1") == 1
    time.sleep(1.1)
    after = chat(live)
    assert after.headers["x-sluice-attempts"] == "2"  # reset passed: tried again
    assert [r.model for r in live.fake.requests].count("429-ra-1") == 2


@pytest.mark.parametrize(
    ("directive", "cooling_s"),
    [("429-ms-1500", 1.5), ("429-reset-1s500ms", 1.5), ("429-reset-6m0s", 360)],
)
def test_every_reset_header_form_sets_the_cooldown(gateway_factory, directive, cooling_s):
    live = gateway_factory(route(f"fake/{directive}", "fake/echo"))
    chat(live)
    chat(live)
    assert [r.model for r in live.fake.requests].count(directive) == 1


def test_every_target_cooling_is_a_429_with_the_shortest_remaining_cooldown(gateway_factory):
    live = gateway_factory(route("fake/429-ra-30", "fake/429-ra-7"))
    first = chat(live)
    assert first.status_code == 429
    assert first.headers["retry-after"] == "7"
    assert first.json()["error"]["type"] == "rate_limit_error"
    second = chat(live)
    assert second.status_code == 429
    assert second.headers["x-sluice-attempts"] == "0"  # nothing sent upstream: both are cooling
    assert 1 <= int(second.headers["retry-after"]) <= 7
    assert live.fake.count() == 2


def test_a_short_retry_after_with_no_other_target_is_waited_out_once(gateway_factory):
    live = gateway_factory()
    live.fake.script.steps.append(Step(status=429, headers={"retry-after": "1"}))
    started = time.monotonic()
    response = chat(live, model="fake/echo")
    took = time.monotonic() - started
    assert response.status_code == 200
    assert response.headers["x-sluice-attempts"] == "2"
    first, second = live.fake.requests
    assert second.received_at - first.received_at >= 0.95  # Retry-After honoured
    assert took < 3


def test_a_long_retry_after_is_not_waited_out(gateway_factory):
    live = gateway_factory("[retry]\nmax_wait_s = 0.5\n")
    live.fake.script.steps.append(Step(status=429, headers={"retry-after": "5"}))
    started = time.monotonic()
    response = chat(live, model="fake/echo")
    assert time.monotonic() - started < 1
    assert response.status_code == 429
    assert response.headers["retry-after"] == "5"  # the provider's own answer, relayed
    again = chat(live, model="fake/echo")
    assert again.status_code == 429
    assert again.headers["x-sluice-attempts"] == "0"
    assert live.fake.count() == 1


def test_a_quota_exhausted_429_moves_on_at_once_and_is_not_retried(gateway_factory):
    live = gateway_factory(route("fake/quota-429", "fake/echo"))
    started = time.monotonic()
    response = chat(live)
    assert time.monotonic() - started < 0.5
    assert response.status_code == 200
    chat(live)
    assert [r.model for r in live.fake.requests].count("quota-429") == 1


def test_a_failing_target_is_ejected_after_five_failures_then_probed(gateway_factory):
    live = gateway_factory(route("fake/503", "fake/echo"))
    for _ in range(8):
        assert chat(live).status_code == 200
    assert [r.model for r in live.fake.requests].count("503") == 5  # then its circuit opened
    time.sleep(1.1)  # the first ejection lasts 1 s
    assert chat(live).headers["x-sluice-attempts"] == "2"  # one probe
    assert chat(live).headers["x-sluice-attempts"] == "1"  # failed probe: ejected again, for longer
    assert [r.model for r in live.fake.requests].count("503") == 6


def test_a_recovered_target_is_used_again_after_its_probe(gateway_factory):
    live = gateway_factory(route("fake/503-then-200:5", "fake/echo"))
    for _ in range(6):
        chat(live)
    time.sleep(1.1)
    response = chat(live)
    assert response.headers["x-sluice-model"] == "503-then-200:5"
    assert chat(live).headers["x-sluice-model"] == "503-then-200:5"


def test_with_every_circuit_open_the_least_bad_target_is_still_tried(gateway_factory):
    live = gateway_factory(route("fake/503", "fake/500"))
    statuses = [chat(live).status_code for _ in range(12)]
    assert set(statuses) == {502}
    # Both ejected after 5 failures each; from then on one try per call, never zero, never both.
    assert live.fake.count() <= 5 + 5 + (12 - 5)


def test_a_retry_storm_adds_at_most_a_fifth_to_upstream_traffic(gateway_factory, other):
    other_fake, other_url = other
    live = gateway_factory(provider("other", other_url) + route("fake/503", "other/503"))
    calls = 200
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: chat(live).status_code, range(calls)))
    assert set(statuses) == {502}
    upstream = live.fake.count() + other_fake.count()
    assert upstream <= 1.2 * calls


def test_all_attempts_of_a_call_fit_in_one_total_deadline(gateway_factory):
    live = gateway_factory(route("fake/a", "fake/b", "fake/c"), timeouts="first_byte_s = 5\ntotal_s = 1")
    live.fake.script.steps += [Step(status=503, first_byte_delay_s=0.6), Step(first_byte_delay_s=0.7)]
    started = time.monotonic()
    response = chat(live)
    took = time.monotonic() - started
    # 0.6 s on the first target, then the second is cut at the call's 1 s deadline: no third try.
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout_error"
    assert took < 1.5
    assert [r.model for r in live.fake.requests] == ["a", "b"]


def test_a_429_learned_by_one_target_key_does_not_cool_another_key(gateway_factory, other):
    _, other_url = other
    extra = provider("other", other_url, key="sk-key-one-000000000000") + provider(
        "other2", other_url, key="sk-key-two-000000000000"
    )
    live = gateway_factory(extra + route("other/429-ra-30", "other2/429-ra-30", "fake/echo"))
    assert chat(live).headers["x-sluice-attempts"] == "3"
    assert chat(live).headers["x-sluice-attempts"] == "1"
