"""A/B routes as a user sees them: sticky variants, X-Sluice-Variant, fallback inside a variant, the ledger."""

from __future__ import annotations

import httpx
import pytest

from proxy.config import ConfigError, load_config
from tests.integration.conftest import wait_until

MESSAGES = [{"role": "user", "content": "Hello"}]
AB = """
[routes.backup]
targets = ["fake/503", "fake/second"]

[routes.trial]
strategy = "ab"
targets = ["fake/first", "backup"]
weights = [50, 50]
"""


def chat(live, headers=None, **body) -> httpx.Response:
    payload = {"model": "trial", "messages": MESSAGES, **body}
    return httpx.post(live.url + "/v1/chat/completions", json=payload, headers=headers or {}, timeout=10)


def test_a_subject_keeps_its_variant_and_the_answer_says_which(gateway_factory):
    live = gateway_factory(AB)
    seen = {chat(live, {"x-sluice-subject": "alice"}).headers["x-sluice-variant"] for _ in range(5)}
    assert len(seen) == 1
    assert seen <= {"fake/first", "backup"}


def test_subjects_are_spread_over_both_variants(gateway_factory):
    live = gateway_factory(AB)
    variants = [chat(live, user=f"user-{i}").headers["x-sluice-variant"] for i in range(40)]
    assert 10 <= variants.count("backup") <= 30


def test_a_variant_that_is_a_route_falls_back_inside_its_own_chain(gateway_factory):
    live = gateway_factory(AB)
    for i in range(40):
        response = chat(live, user=f"user-{i}")
        assert response.status_code == 200
        if response.headers["x-sluice-variant"] == "backup":
            assert response.headers["x-sluice-model"] == "second"
        else:
            assert response.headers["x-sluice-model"] == "first"
    assert {r.model for r in live.fake.requests} <= {"first", "503", "second"}


def test_the_ledger_records_the_variant(gateway_factory):
    live = gateway_factory(AB)
    variant = chat(live, {"x-sluice-subject": "bob"}).headers["x-sluice-variant"]
    assert wait_until(lambda: httpx.get(live.url + "/sluice/calls").json()["data"], timeout=5)
    [row] = httpx.get(live.url + "/sluice/calls").json()["data"]
    assert row["variant"] == variant


@pytest.mark.parametrize(
    ("targets", "problem"),
    [('["fake/a", "nowhere"]', "not a route defined"), ('["fake/a", "trial"]', "an A/B route")],
)
def test_a_variant_must_be_provider_model_or_another_route(tmp_path, targets, problem):
    path = tmp_path / "sluice.toml"
    path.write_text(
        f'[providers.fake]\nbase_url = "http://127.0.0.1:9/v1"\n[routes.trial]\nstrategy = "ab"\ntargets = {targets}\n'
    )
    with pytest.raises(ConfigError, match=problem):
        load_config(path, env={})
