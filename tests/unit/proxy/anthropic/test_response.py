"""A Chat Completions answer translated into an Anthropic Message (issue 7, SPEC §4)."""

import json

import anthropic
import httpx2
import pytest
from anthropic.types import Message

from proxy.anthropic.response import message_id_of, stop_of, to_message, tool_input_of, usage_of

USAGE = {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}


def chat(message, finish_reason="stop", usage=USAGE, **choice):
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason, **choice}
        ],
        "usage": usage,
    }


def tool_call(call_id, name, arguments):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_a_text_answer_becomes_a_message_with_one_text_block():
    message = to_message(chat({"content": "Hello!"}), model="fast")
    assert message == {
        "id": "msg_abc123",
        "type": "message",
        "role": "assistant",
        "model": "fast",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 7},
    }
    Message.model_validate(message)  # the SDK's own type accepts it


def test_the_message_id_is_given_derived_or_generated():
    assert to_message(chat({"content": "x"}), model="m", message_id="msg_given")["id"] == "msg_given"
    assert message_id_of("msg_01Abc") == "msg_01Abc"
    assert message_id_of("gen-123") == "msg_gen-123"
    generated = {message_id_of(None), message_id_of("")}
    assert len(generated) == 2
    assert all(i.startswith("msg_") and len(i) == 28 for i in generated)


def test_tool_calls_become_tool_use_blocks_with_parsed_input():
    calls = [tool_call("call_1", "weather", '{"city": "Paris"}'), tool_call("call_2", "time", '{"tz": "CET"}')]
    message = to_message(chat({"content": None, "tool_calls": calls}, "tool_calls"), model="m")
    assert message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "time", "input": {"tz": "CET"}},
    ]
    assert message["stop_reason"] == "tool_use"
    Message.model_validate(message)


def test_text_before_tool_calls_comes_first():
    message = to_message(
        chat({"content": "Let me check.", "tool_calls": [tool_call("c", "f", "{}")]}, "tool_calls"), model="m"
    )
    assert [block["type"] for block in message["content"]] == ["text", "tool_use"]


def test_a_tool_call_without_an_id_gets_a_toolu_id():
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    (block,) = to_message(chat({"tool_calls": [call]}, "tool_calls"), model="m")["content"]
    assert block["id"].startswith("toolu_")


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ("", {}),
        ("  ", {}),
        (None, {}),
        ('{"a": ', {}),  # cut short (max_tokens inside the arguments)
        ("[1, 2]", {}),  # JSON, but not an object
        ("[" * 100_000, {}),  # deep enough to overflow the parser
        ({"a": 1}, {"a": 1}),  # a provider that sends the object itself
    ],
)
def test_tool_arguments_that_are_not_a_json_object_give_an_empty_input(arguments, expected):
    assert tool_input_of(arguments) == expected


def test_the_legacy_function_call_is_a_tool_use():
    message = to_message(chat({"function_call": {"name": "f", "arguments": '{"x": 1}'}}, "function_call"), model="m")
    assert message["content"][0] | {"id": "?"} == {"type": "tool_use", "id": "?", "name": "f", "input": {"x": 1}}
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("eos", "end_turn"),
    ],
)
def test_finish_reasons_map_to_stop_reasons(finish_reason, stop_reason):
    message = to_message(chat({"content": "x"}, finish_reason), model="m")
    assert (message["stop_reason"], message["stop_sequence"]) == (stop_reason, None)


def test_tool_calls_under_finish_reason_stop_are_still_tool_use():
    # Some providers (Gemini's OpenAI endpoint) say "stop" for a tool call.
    message = to_message(chat({"tool_calls": [tool_call("c", "f", "{}")]}, "stop"), model="m")
    assert message["stop_reason"] == "tool_use"


def test_a_tool_call_cut_by_the_token_limit_is_max_tokens():
    message = to_message(chat({"tool_calls": [tool_call("c", "f", '{"a": ')]}, "length"), model="m")
    assert message["stop_reason"] == "max_tokens"


def test_an_empty_answer_has_no_content_blocks():
    message = to_message(chat({"content": ""}), model="m")
    assert message["content"] == []
    Message.model_validate(message)


def test_text_parts_are_joined_and_a_refusal_is_the_text():
    assert to_message(chat({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}), model="m")[
        "content"
    ] == [{"type": "text", "text": "ab"}]
    refused = to_message(chat({"content": None, "refusal": "I can't help with that."}), model="m")
    assert refused["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert refused["stop_reason"] == "refusal"


def test_no_choices_is_an_empty_end_turn():
    message = to_message({"id": "x", "choices": []}, model="m")
    assert (message["content"], message["stop_reason"]) == ([], "end_turn")
    assert message["usage"] == {"input_tokens": 0, "output_tokens": 0}


class TestStopSequence:
    """OpenAI says "stop" without saying which sequence matched: `stop_of`'s best effort."""

    def test_the_only_requested_sequence_is_assumed_to_have_matched(self):
        message = to_message(chat({"content": "<answer>42"}), model="m", stop_sequences=["</answer>"])
        assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "</answer>")

    def test_several_sequences_without_evidence_is_end_turn(self):
        message = to_message(chat({"content": "42"}), model="m", stop_sequences=["\n\nHuman:", "</answer>"])
        assert (message["stop_reason"], message["stop_sequence"]) == ("end_turn", None)

    def test_a_sequence_the_provider_kept_in_the_text_is_named(self):
        message = to_message(chat({"content": "42</answer>"}), model="m", stop_sequences=["STOP", "</answer>"])
        assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "</answer>")

    def test_a_provider_that_names_the_match_is_believed(self):
        # vLLM / SGLang: choice.stop_reason is the matched string, or null for a natural end.
        named = chat({"content": "42"}, stop_reason="END")
        assert stop_of("stop", tool_use=False, text="42", stop_sequences=["A", "END"], choice=named["choices"][0]) == (
            "stop_sequence",
            "END",
        )
        natural = to_message(chat({"content": "42"}, stop_reason=None), model="m", stop_sequences=["END"])
        assert natural["stop_reason"] == "end_turn"

    def test_other_finish_reasons_are_never_a_stop_sequence(self):
        message = to_message(chat({"content": "42"}, "length"), model="m", stop_sequences=["END"])
        assert (message["stop_reason"], message["stop_sequence"]) == ("max_tokens", None)


class TestUsage:
    def test_cached_tokens_move_out_of_input_tokens(self):
        usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 12}}
        assert usage_of(usage) == {"input_tokens": 8, "output_tokens": 7, "cache_read_input_tokens": 12}

    def test_a_reported_zero_cache_read_is_kept(self):
        usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0}}
        assert usage_of(usage) == {"input_tokens": 20, "output_tokens": 7, "cache_read_input_tokens": 0}

    def test_deepseek_cache_hits_and_openrouter_cache_writes(self):
        assert usage_of({**USAGE, "prompt_cache_hit_tokens": 5})["cache_read_input_tokens"] == 5
        usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 10}}
        assert usage_of(usage) == {
            "input_tokens": 6,
            "output_tokens": 7,
            "cache_read_input_tokens": 4,
            "cache_creation_input_tokens": 10,
        }

    def test_bad_counts_are_zero_and_never_negative(self):
        assert usage_of({"prompt_tokens": "20", "completion_tokens": True}) == {"input_tokens": 0, "output_tokens": 0}
        clamped = usage_of({"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 5}})
        assert clamped["input_tokens"] == 0

    def test_the_message_carries_the_translated_usage(self):
        answer = chat({"content": "x"}, usage={**USAGE, "prompt_tokens_details": {"cached_tokens": 12}})
        assert to_message(answer, model="m")["usage"]["cache_read_input_tokens"] == 12


def test_the_anthropic_sdk_reads_the_translated_answer():
    calls = [tool_call("call_1", "weather", '{"city": "Paris"}')]
    answer = chat(
        {"content": "Checking.", "tool_calls": calls},
        "tool_calls",
        {**USAGE, "prompt_tokens_details": {"cached_tokens": 2}},
    )
    body = json.dumps(to_message(answer, model="fast")).encode()

    def handler(request):
        return httpx2.Response(200, headers={"content-type": "application/json"}, content=body)

    client = anthropic.Anthropic(
        api_key="sk-test",
        base_url="http://sluice.test",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    message = client.messages.create(model="fast", max_tokens=100, messages=[{"role": "user", "content": "weather?"}])
    assert message.content[0].type == "text"
    assert message.content[0].text == "Checking."
    assert message.content[1].type == "tool_use"
    assert (message.content[1].name, message.content[1].input) == ("weather", {"city": "Paris"})
    assert (message.stop_reason, message.usage.input_tokens, message.usage.cache_read_input_tokens) == (
        "tool_use",
        18,
        2,
    )
