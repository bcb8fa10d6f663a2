"""Every upstream try is recorded on the Call, with `possibly_billed` (SPEC §8, RELIABILITY scenario 15)."""

from __future__ import annotations

import textwrap

import httpx
import pytest

from middleware.call import CALL_KEY, Call
from proxy.app import build_app
from proxy.config import load_config
from tests.integration.conftest import wait_until
from tests.redis_server import free_port
from tests.servers import serve

MESSAGES = [{"role": "user", "content": "Hello"}]


class Capture:
    """An outermost layer that keeps each call's Call for the test to read."""

    def __init__(self, app):
        self.app = app
        self.calls: list[Call] = []

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            self.calls.append(scope[CALL_KEY])


@pytest.fixture
def gateway(tmp_path, fake_server):
    _, fake_url = fake_server
    contexts = []

    def start(targets, extra=""):
        listed = ", ".join(f'"{t}"' for t in targets)
        path = tmp_path / "sluice.toml"
        path.write_text(
            textwrap.dedent(
                f"""
                [providers.fake]
                base_url = "{fake_url}/v1"
                api_key = "sk-test-key-000000000000"
                [providers.dead]
                base_url = "http://127.0.0.1:{free_port()}/v1"
                api_key = "sk-test-key-111111111111"
                [ledger]
                path = "{tmp_path}/sluice.db"
                [timeouts]
                first_byte_s = 0.3
                [routes.chain]
                targets = [{listed}]
                """
            )
            + extra
        )
        capture = Capture(build_app(load_config(path, env={})))
        context = serve(capture)
        url = context.__enter__()
        contexts.append(context)
        return url, capture

    yield start
    for context in contexts:
        context.__exit__(None, None, None)


def post(url, headers=None):
    body = {"model": "chain", "messages": MESSAGES}
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers or {}, timeout=10)


def test_each_try_is_recorded_with_its_status_and_whether_it_may_have_been_billed(gateway):
    url, capture = gateway(["dead/x", "fake/503", "fake/502", "fake/slow-ttft-2", "fake/echo"])
    response = post(url)
    assert response.status_code == 200
    assert response.headers["x-sluice-attempts"] == "5"
    assert wait_until(lambda: capture.calls)
    tries = capture.calls[-1].tries
    assert [(t.target, t.status, t.outcome, t.possibly_billed) for t in tries] == [
        ("dead/x", None, "failed", False),  # never connected: never sent
        ("fake/503", 503, "failed", False),  # refused before any work
        ("fake/502", 502, "failed", True),  # a gateway in front may have accepted it
        ("fake/slow-ttft-2", None, "failed", True),  # sent, then timed out
        ("fake/echo", 200, "ok", False),
    ]
    assert all(t.duration_s is not None and t.duration_s >= 0 for t in tries)
    assert tries[-1].first_byte_s is not None
    assert "did not answer in time" in (tries[3].error or "")


def test_a_race_loser_is_recorded_as_cancelled_and_possibly_billed(gateway):
    url, capture = gateway(["fake/slow-ttft-0.2", "fake/echo"], extra='strategy = "race"\n')
    response = post(url)
    assert response.headers["x-sluice-model"] == "echo"
    assert wait_until(lambda: capture.calls)
    tries = {t.target: t for t in capture.calls[-1].tries}
    assert tries["fake/slow-ttft-0.2"].outcome == "cancelled"
    assert tries["fake/slow-ttft-0.2"].possibly_billed is True
    assert tries["fake/echo"].outcome == "ok"
