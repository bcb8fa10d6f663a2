"""The A/B judge as a user sees it: real uvicorn, the openai SDK, a fake provider whose judge has opinions.

The fake answers model `good` with "GOOD answer" and `meh` with "meh answer".
Model `judge` reads the two answers it is shown and replies by its mood:
`fair` picks the answer with GOOD in it, `first` always says A (a pure
position bias, which asking both orders must cancel), `broken` fails with
a 500, `slow` waits 3 s before being fair.
"""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest

from proxy.app import build_app
from proxy.config import load_config
from tests.integration.conftest import wait_until
from tests.servers import serve

ADMIN = "sk-admin-judge-test"
TEAM = "sk-team-judge-test"
PROVIDER_KEY = "sk-provider-judge-SECRET-4f1c"


@dataclass
class JudgeFake:
    """A tiny OpenAI-compatible provider: two answering models and one judge with a mood."""

    mood: str = "fair"
    stream_gap_s: float = 0.0  # between a stream's chunks
    arrivals: list[tuple[str, float]] = field(default_factory=list)  # (model, monotonic time) per request

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        model = request["model"]
        self.arrivals.append((model, time.monotonic()))
        if model == "judge":
            if self.mood == "broken":
                await _json(send, 500, {"error": {"message": "judge down", "type": "server_error"}})
                return
            if self.mood == "slow":
                await asyncio.sleep(3)
            content = self._verdict(request["messages"][-1]["content"])
        else:
            content = "GOOD answer" if model == "good" else "meh answer"
        usage = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
        if request.get("stream"):
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            )
            for piece in (content[:4], content[4:]):
                await asyncio.sleep(self.stream_gap_s)
                chunk = {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
                await send(
                    {"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(), "more_body": True}
                )
            if (request.get("stream_options") or {}).get("include_usage"):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage}
                await send(
                    {"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(), "more_body": True}
                )
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return
        answer = {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": usage,
        }
        await _json(send, 200, answer)

    def _verdict(self, prompt: str) -> str:
        if self.mood == "first":
            return "A"
        a = re.search(r"<answer_a>(.*)</answer_a>", prompt, re.S)
        b = re.search(r"<answer_b>(.*)</answer_b>", prompt, re.S)
        assert a is not None, prompt
        assert b is not None, prompt
        if "GOOD" in a.group(1) and "GOOD" not in b.group(1):
            return "A"
        if "GOOD" in b.group(1) and "GOOD" not in a.group(1):
            return "B"
        return "TIE"

    def judge_requests(self) -> list[float]:
        return [t for model, t in self.arrivals if model == "judge"]


async def _json(send: Any, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Gateway:
    url: str
    fake: JudgeFake
    client: openai.OpenAI

    def experiments(self) -> dict[str, Any]:
        return httpx.get(self.url + "/sluice/experiments", headers={"authorization": f"Bearer {ADMIN}"}).json()

    def queue(self) -> dict[str, int]:
        return self.experiments()["judge_queue"]

    def variants(self) -> dict[str, dict[str, Any]]:
        routes = self.experiments()["routes"]  # empty until the ledger has written the first records
        return {v["variant"]: v for route in routes for v in route["variants"]}


@pytest.fixture
def gateway(tmp_path) -> Iterator[Any]:
    started = []

    def start(mood: str = "fair", rate: float = 1.0) -> Gateway:
        fake = JudgeFake(mood)
        upstream = serve(fake)
        fake_url = upstream.__enter__()
        started.append(upstream)
        config = tmp_path / f"sluice-{len(started)}.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                [providers.fake]
                base_url = "{fake_url}/v1"
                models = ["good", "meh", "judge"]
                api_key = "{PROVIDER_KEY}"
                [auth]
                admin_key = "{ADMIN}"
                keys = [{{ id = "team-a", key = "{TEAM}" }}]
                [routes.trial]
                strategy = "ab"
                targets = ["fake/good", "fake/meh"]
                weights = [50, 50]
                judge = "fake/judge"
                judge_sample_rate = {rate}
                [prices."fake/good"]
                input = 1.0
                output = 2.0
                [prices."fake/meh"]
                input = 0.5
                output = 1.0
                [prices."fake/judge"]
                input = 0.1
                output = 0.1
                [ledger]
                path = "{tmp_path}/ledger-{len(started)}.db"
                """
            )
        )
        gateway = serve(build_app(load_config(config, env={})))
        url = gateway.__enter__()
        started.append(gateway)
        return Gateway(url, fake, openai.OpenAI(base_url=url + "/v1", api_key=TEAM, max_retries=0))

    yield start
    for context in reversed(started):
        context.__exit__(None, None, None)


def ask(gw: Gateway, subject: str, *, stream: bool = False) -> tuple[str, str, float]:
    """One call of route `trial` as `subject`: (its answer, the variant, when the whole answer had arrived)."""
    messages = [{"role": "user", "content": "Say something good."}]
    headers = {"x-sluice-subject": subject}
    if stream:
        raw = gw.client.chat.completions.with_raw_response.create(
            model="trial", messages=messages, stream=True, extra_headers=headers
        )
        with raw.parse() as chunks:
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        variant = raw.headers["x-sluice-variant"]
        return text, variant, time.monotonic()
    raw = gw.client.chat.completions.with_raw_response.create(model="trial", messages=messages, extra_headers=headers)
    answer = raw.parse().choices[0].message.content or ""
    return answer, raw.headers["x-sluice-variant"], time.monotonic()


def test_a_fair_judge_makes_the_better_variant_win_with_an_honest_interval(gateway):
    gw = gateway("fair")
    served = [ask(gw, f"user-{i}", stream=i % 2 == 0)[1] for i in range(10)]
    assert set(served) == {"fake/good", "fake/meh"}  # both variants served someone
    assert wait_until(lambda: gw.queue()["judged"] == 10, timeout=15), gw.queue()
    assert wait_until(lambda: gw.variants().get("fake/good", {}).get("judged") == 10)  # the ledger has the verdicts
    variants = gw.variants()
    good, meh = variants["fake/good"], variants["fake/meh"]
    assert (good["judged"], good["wins"], good["losses"], good["ties"]) == (10, 10, 0, 0)
    assert (meh["judged"], meh["wins"], meh["losses"], meh["ties"]) == (10, 0, 10, 0)
    assert good["win_rate"] == 1.0
    assert good["win_rate_95"] == [0.7225, 1.0]  # Wilson, 10 of 10 (published value)
    assert meh["win_rate_95"] == [0.0, 0.2775]
    # The calls the judge made are the experiment's spend, not the variants' traffic.
    assert good["calls"] + meh["calls"] == 10
    [trial] = gw.experiments()["routes"]
    assert Decimal(trial["judge_usd"]) > 0
    assert gw.queue() == {"sampled": 10, "dropped": 0, "judged": 10, "failed": 0, "queued": 0}
    metrics = httpx.get(gw.url + "/metrics", headers={"authorization": f"Bearer {ADMIN}"}).text
    assert 'sluice_judge_samples_total{outcome="judged"} 10' in metrics
    assert 'sluice_judge_samples_total{outcome="dropped"} 0' in metrics


def test_asking_both_orders_turns_a_position_bias_into_ties(gateway):
    gw = gateway("first")
    for i in range(6):
        ask(gw, f"user-{i}")
    assert wait_until(lambda: gw.queue()["judged"] == 6, timeout=15), gw.queue()
    assert wait_until(lambda: [v["judged"] for v in gw.variants().values()] == [6, 6])
    for stats in gw.variants().values():
        assert (stats["judged"], stats["wins"], stats["losses"], stats["ties"]) == (6, 0, 0, 6)
        assert stats["win_rate"] == 0.5


def test_the_caller_has_its_answer_before_the_judge_starts(gateway):
    gw = gateway("fair")
    gw.fake.stream_gap_s = 0.2  # the caller's stream takes 0.4 s: a judge started alongside would show
    answer, variant, answered_at = ask(gw, "alice", stream=True)
    assert answer in ("GOOD answer", "meh answer")
    assert wait_until(lambda: len(gw.fake.judge_requests()) == 2, timeout=10)
    [(_, asked_at), *judge_work] = gw.fake.arrivals
    assert answered_at - asked_at >= 0.4
    assert [model for model, _ in judge_work] == ["meh" if variant == "fake/good" else "good", "judge", "judge"]
    # The other variant is asked once the caller's last byte is sent (the client may take a moment
    # more to read it: 50 ms of slack, far less than the 0.4 s a concurrent start would show).
    assert min(t for _, t in judge_work) > answered_at - 0.05
    assert min(gw.fake.judge_requests()) > answered_at


def test_a_slow_or_failing_judge_changes_nothing_for_the_caller(gateway):
    slow = gateway("slow")
    started = time.monotonic()
    for i in range(3):
        answer, _, _ = ask(slow, f"user-{i}")
        assert answer in ("GOOD answer", "meh answer")
    assert time.monotonic() - started < 2.5  # each judge ask takes 3 s; the callers never wait for one

    broken = gateway("broken")
    for i in range(4):
        answer, _, _ = ask(broken, f"user-{i}")
        assert answer in ("GOOD answer", "meh answer")
    assert wait_until(lambda: broken.queue()["failed"] == 4, timeout=10), broken.queue()
    assert wait_until(lambda: sum(v["calls"] for v in broken.variants().values()) == 4)
    variants = broken.variants()
    assert sum(v["calls"] for v in variants.values()) == 4
    assert all(v["judged"] == 0 and v["win_rate"] is None for v in variants.values())


def test_judge_calls_are_in_the_ledger_as_judge_spend_never_as_the_callers(gateway):
    gw = gateway("fair")
    ask(gw, "bob")
    assert wait_until(lambda: gw.queue()["judged"] == 1, timeout=10)
    admin = {"authorization": f"Bearer {ADMIN}"}
    assert wait_until(lambda: len(httpx.get(gw.url + "/sluice/calls", headers=admin).json()["data"]) == 4)
    calls = httpx.get(gw.url + "/sluice/calls", headers=admin).json()["data"]
    caller = [c for c in calls if not c["judge"]]
    judged = [c for c in calls if c["judge"]]
    assert [c["key_id"] for c in caller] == ["team-a"]
    assert len(judged) == 3
    assert {c["key_id"] for c in judged} == {"judge:trial"}
    assert {c["route"] for c in judged} == {"trial"}
    [verdict] = [c for c in judged if c["verdict"] is not None]
    assert {verdict["variant"], verdict["opponent"]} == {"fake/good", "fake/meh"}
    assert verdict["verdict"] == ("win" if verdict["variant"] == "fake/good" else "loss")
    by_key = httpx.get(gw.url + "/sluice/usage", params={"by": "key"}, headers=admin).json()["rows"]
    spend = {row["group"]["key"]: Decimal(row["cost_usd"]) for row in by_key}
    assert spend["team-a"] == Decimal(caller[0]["cost_usd"])  # the judge's spend is not the team's
    assert spend["judge:trial"] == sum(Decimal(c["cost_usd"]) for c in judged)
    logs = json.dumps(calls)
    assert PROVIDER_KEY not in logs
    assert TEAM not in logs


def test_without_sampling_nothing_is_judged(gateway):
    gw = gateway("fair", rate=0.0)
    for i in range(3):
        ask(gw, f"user-{i}")
    # Three rows in the ledger: each call got past the A/B layer, where a sample would have been taken.
    admin = {"authorization": f"Bearer {ADMIN}"}
    assert wait_until(lambda: len(httpx.get(gw.url + "/sluice/calls", headers=admin).json()["data"]) == 3)
    assert gw.queue()["sampled"] == 0
    assert [model for model, _ in gw.fake.arrivals] == [m for m, _ in gw.fake.arrivals if m in ("good", "meh")]
    assert len(gw.fake.arrivals) == 3


def test_calls_through_the_messages_api_are_judged_too(gateway):
    gw = gateway("fair")
    client = anthropic.Anthropic(base_url=gw.url, api_key=TEAM, max_retries=0)
    try:
        for i in range(2):
            message = client.messages.create(
                model="trial",
                max_tokens=50,
                messages=[{"role": "user", "content": "Say something good."}],
                extra_headers={"x-sluice-subject": f"user-{i}"},
            )
            assert message.content[0].text in ("GOOD answer", "meh answer")
    finally:
        client.close()
    assert wait_until(lambda: gw.queue()["judged"] == 2, timeout=10), gw.queue()
    assert wait_until(lambda: sum(v["judged"] for v in gw.variants().values()) == 4)  # each pair counts for both
    assert sum(v["wins"] for v in gw.variants().values()) == 2


def test_a_request_over_a_mebibyte_is_answered_but_not_judged(gateway):
    gw = gateway("fair")
    big = [{"role": "user", "content": "x" * (1024 * 1024)}]
    answer = gw.client.chat.completions.create(model="trial", messages=big).choices[0].message.content
    assert answer in ("GOOD answer", "meh answer")
    ask(gw, "small")  # a normal call right after is judged: the sampler itself is on
    assert wait_until(lambda: gw.queue()["judged"] == 1, timeout=10), gw.queue()
    assert gw.queue()["sampled"] == 1
