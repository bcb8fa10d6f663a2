"""The A/B judge's pure parts and its queue: answer text, the prompt, the verdict table, dropping when full."""

from __future__ import annotations

import asyncio
import json

import pytest

from middleware.call import Variant
from proxy.experiments.answer_text import answer_text
from proxy.experiments.judge import Judge, JudgeSample, JudgeSettings
from proxy.experiments.judge_prompt import (
    JUDGE_SYSTEM,
    MAX_ANSWER_CHARS,
    MAX_CONVERSATION_CHARS,
    conversation_text,
    judge_body,
    parse_choice,
    verdict,
)

pytestmark = pytest.mark.anyio


def sse(*events: object) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def test_answer_text_of_a_chat_completion_with_a_tool_call():
    body = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}],
                }
            }
        ]
    }
    assert answer_text(json.dumps(body).encode(), sse=False) == 'Let me look.\n[tool call] search({"q": "x"})'


def test_answer_text_of_a_chat_completion_stream_joins_the_deltas():
    body = sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {"choices": [], "usage": {"prompt_tokens": 1}},
    )
    assert answer_text(body, sse=True) == "Hello"


def test_answer_text_of_anthropic_messages_json_and_stream():
    message = {
        "type": "message",
        "content": [{"type": "text", "text": "Hi"}, {"type": "tool_use", "name": "f", "input": {"a": 1}}],
    }
    assert answer_text(json.dumps(message).encode(), sse=False) == 'Hi\n[tool call] f({"a": 1})'
    events = (
        b"event: content_block_start\ndata: "
        + json.dumps(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        ).encode()
        + b"\n\nevent: content_block_delta\ndata: "
        + json.dumps(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Bonjour"}}
        ).encode()
        + b"\n\n"
    )
    assert answer_text(events, sse=True) == "Bonjour"


def test_a_stream_that_failed_after_its_200_has_no_answer():
    body = sse(
        {"choices": [{"index": 0, "delta": {"content": "Hal"}}]}, {"error": {"message": "cut", "type": "server_error"}}
    )
    assert answer_text(body, sse=True) is None
    assert answer_text(b"not json", sse=False) is None
    assert answer_text(b'{"choices": []}', sse=False) is None


@pytest.mark.parametrize(
    ("reply", "choice"),
    [("A", "A"), ("b", "B"), (" TIE.", "TIE"), ("**Answer B**", "B"), ("tie", "TIE"), ("Neither", None), ("", None)],
)
def test_parse_choice_takes_the_first_a_b_or_tie(reply, choice):
    assert parse_choice(reply) == choice


@pytest.mark.parametrize(
    ("first", "second", "outcome"),
    [
        ("A", "B", "win"),
        ("B", "A", "loss"),
        ("A", "A", "tie"),
        ("B", "B", "tie"),
        ("TIE", "B", "tie"),
        ("A", "TIE", "tie"),
    ],
)
def test_only_a_preference_that_survives_the_swap_counts(first, second, outcome):
    assert verdict(first, second) == outcome


def test_the_judge_request_carries_the_documented_prompt_and_cuts_long_inputs():
    request = {
        "system": "Be brief.",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "x" * (MAX_CONVERSATION_CHARS + 10)}, {"type": "image"}],
            },
        ],
    }
    conversation = conversation_text(request)
    assert conversation.startswith("[... ")
    assert conversation.endswith("[image]")
    assert len(conversation) < MAX_CONVERSATION_CHARS + 100
    body = judge_body("openai/gpt-4o-mini", conversation, "a" * (MAX_ANSWER_CHARS + 5), "short")
    assert body["model"] == "openai/gpt-4o-mini"
    assert body["temperature"] == 0
    system, user = body["messages"]
    assert system == {"role": "system", "content": JUDGE_SYSTEM}
    assert "[... 5 more characters cut ...]" in user["content"]
    assert "<answer_b>\nshort\n</answer_b>" in user["content"]


def sample(n: int) -> JudgeSample:
    return JudgeSample("trial", "a", "b", "/v1/chat/completions", {"messages": []}, f"answer {n}", f"r{n}")


async def test_a_full_queue_drops_and_counts_and_never_waits():
    judge = Judge({"trial": JudgeSettings("fake/judge", 1.0)}, queue_size=2)
    for n in range(5):
        judge.submit(sample(n))  # no worker runs: the queue fills
    assert judge.stats() == {"sampled": 2, "dropped": 3, "judged": 0, "failed": 0, "queued": 2}
    await judge.aclose()  # what is still queued at shutdown is dropped too
    assert judge.stats()["dropped"] == 5


async def test_a_judge_failure_is_counted_and_the_worker_goes_on():
    judge = Judge({"trial": JudgeSettings("fake/judge", 1.0)})

    async def app(scope, receive, send):  # the gateway answering 503 to the judge's first ask
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b'{"error": {"message": "down"}}'})

    judge.app = app
    await judge.start()
    try:
        judge.submit(sample(1))
        judge.submit(sample(2))
        for _ in range(100):
            if judge.stats()["failed"] == 2:
                break
            await asyncio.sleep(0.01)
        assert judge.stats() == {"sampled": 2, "dropped": 0, "judged": 0, "failed": 2, "queued": 0}
    finally:
        await judge.aclose()


def test_the_sample_rate_and_the_other_variant():
    coin = iter([0.05, 0.5])
    judge = Judge({"trial": JudgeSettings("fake/judge", 0.1)}, chance=lambda: next(coin))
    assert judge.samples("trial") is True
    assert judge.samples("trial") is False
    assert judge.samples("not-an-ab-route") is False
    variants = (Variant("a", ()), Variant("b", ()), Variant("c", (), weight=0.0))
    assert {judge.other_variant(variants, "a") for _ in range(20)} == {"b"}  # a zero weight is never asked
    assert judge.other_variant(variants[:1], "a") is None
