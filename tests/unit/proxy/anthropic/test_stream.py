"""A Chat Completions SSE stream translated into Anthropic events (issue 7, SPEC §4).

The output is checked twice: as the exact event list, and by the official
`anthropic` SDK's own stream accumulator (`messages.stream(...).get_final_message()`).
"""

import json

import anthropic
import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.anthropic.stream import MAX_EVENT, StreamTranslator

USAGE = {"prompt_tokens": 30, "completion_tokens": 12, "prompt_tokens_details": {"cached_tokens": 10}}
DONE = b"data: [DONE]\n\n"


def event(payload) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chunk(delta=None, finish_reason=None, **choice) -> bytes:
    choices = [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason, **choice}]
    return event({"id": "chatcmpl-s1", "object": "chat.completion.chunk", "choices": choices})


def tool_delta(index, arguments, call_id=None, name=None) -> bytes:
    call = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        call |= {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return chunk({"tool_calls": [call]})


USAGE_EVENT = event({"id": "chatcmpl-s1", "choices": [], "usage": USAGE})

TEXT_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hello"}),
    b": keep-alive\n\n",
    chunk({"content": ", world"}),
    chunk(finish_reason="stop"),
    USAGE_EVENT,
    DONE,
]

# Text, then two parallel tool calls whose arguments arrive a few characters at a time.
WEATHER = '{"city": "Paris", "units": "celsius"}'
TIME = '{"tz": "Europe/Paris"}'
TOOL_STREAM = [
    chunk({"role": "assistant", "content": "Let me check."}),
    tool_delta(0, "", "call_w", "weather"),
    *[tool_delta(0, WEATHER[i : i + 4]) for i in range(0, len(WEATHER), 4)],
    tool_delta(1, "", "call_t", "time"),
    *[tool_delta(1, TIME[i : i + 3]) for i in range(0, len(TIME), 3)],
    chunk(finish_reason="tool_calls"),
    USAGE_EVENT,
    DONE,
]


def translate(pieces, **options) -> bytes:
    translator = StreamTranslator(model="fast", **options)
    return b"".join(translator.feed(piece) for piece in pieces) + translator.finish()


def events(raw: bytes) -> list[tuple[str, dict]]:
    """The (event name, data) pairs of Anthropic SSE bytes, checking the framing on the way."""
    assert raw.endswith(b"\n\n")
    pairs = []
    for block in raw.decode().split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        name, data = name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        pairs.append((name, data))
    return pairs


def sdk_client(raw: bytes) -> anthropic.Anthropic:
    def handler(request):
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    transport = httpx2.MockTransport(handler)
    return anthropic.Anthropic(
        api_key="sk-test", base_url="http://sluice.test", http_client=httpx2.Client(transport=transport)
    )


def sdk_stream(raw: bytes):
    messages = [{"role": "user", "content": "hi"}]
    return sdk_client(raw).messages.stream(model="fast", max_tokens=100, messages=messages)


def final_message(raw: bytes):
    with sdk_stream(raw) as stream:
        return stream.get_final_message()


def test_a_text_stream_is_the_exact_anthropic_event_sequence():
    assert events(translate(TEXT_STREAM)) == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_s1",
                    "type": "message",
                    "role": "assistant",
                    "model": "fast",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ", world"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"input_tokens": 20, "output_tokens": 12, "cache_read_input_tokens": 10},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_the_sdk_reads_a_text_stream():
    with sdk_stream(translate(TEXT_STREAM)) as stream:
        assert list(stream.text_stream) == ["Hello", ", world"]
        message = stream.get_final_message()
    assert [(block.type, block.text) for block in message.content] == [("text", "Hello, world")]
    assert (message.id, message.model, message.stop_reason) == ("msg_s1", "fast", "end_turn")
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens) == (20, 12, 10)


def test_text_then_two_parallel_tool_calls_with_streamed_arguments():
    translator = StreamTranslator(model="fast")
    raw = b"".join(translator.feed(piece) for piece in TOOL_STREAM) + translator.finish()
    pairs = events(raw)
    starts = [(d["index"], d["content_block"]) for name, d in pairs if name == "content_block_start"]
    assert starts == [
        (0, {"type": "text", "text": ""}),
        (1, {"type": "tool_use", "id": "call_w", "name": "weather", "input": {}}),
        (2, {"type": "tool_use", "id": "call_t", "name": "time", "input": {}}),
    ]
    for index, arguments in [(1, WEATHER), (2, TIME)]:
        parts = [
            d["delta"]["partial_json"] for name, d in pairs if name == "content_block_delta" and d["index"] == index
        ]
        assert len(parts) > 3
        assert "".join(parts) == arguments
    # Each block is closed before the next opens, and all before message_delta.
    names = [(name, d.get("index")) for name, d in pairs]
    assert names.index(("content_block_stop", 0)) < names.index(("content_block_start", 1))
    assert names.index(("content_block_stop", 1)) < names.index(("content_block_start", 2))
    assert [name for name, _ in pairs[-3:]] == ["content_block_stop", "message_delta", "message_stop"]
    assert translator.usage == USAGE

    message = final_message(raw)
    assert message.content[0].type == "text"
    assert message.content[0].text == "Let me check."
    tools = [(block.type, block.id, block.name, block.input) for block in message.content[1:]]
    assert tools == [
        ("tool_use", "call_w", "weather", json.loads(WEATHER)),
        ("tool_use", "call_t", "time", json.loads(TIME)),
    ]
    assert (message.stop_reason, message.usage.output_tokens) == ("tool_use", 12)


def test_deltas_are_relayed_as_they_arrive():
    translator = StreamTranslator(model="fast")
    assert b'"message_start"' in translator.feed(TEXT_STREAM[0])
    assert b'"Hello"' in translator.feed(TEXT_STREAM[1])
    half = len(TEXT_STREAM[3]) // 2
    assert translator.feed(TEXT_STREAM[3][:half]) == b""  # an incomplete event is held...
    assert b'", world"' in translator.feed(TEXT_STREAM[3][half:])  # ...only until it completes


@given(st.data())
def test_any_rechunking_of_the_upstream_bytes_gives_the_same_events(data):
    stream = data.draw(st.sampled_from([TEXT_STREAM, TOOL_STREAM]))
    whole = b"".join(stream)
    if data.draw(st.booleans(), label="crlf"):
        whole = whole.replace(b"\n", b"\r\n")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=40), label="cuts"))
    pieces = [whole[start:end] for start, end in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    translator = StreamTranslator(model="fast")
    outputs = [translator.feed(piece) for piece in pieces]
    outputs.append(translator.finish())
    assert all(out == b"" or out.endswith(b"\n\n") for out in outputs)  # only whole events go out
    assert b"".join(outputs) == translate([b"".join(stream)])


def test_byte_by_byte_crlf_framing_gives_the_same_events():
    whole = b"".join(TOOL_STREAM).replace(b"\n", b"\r\n")
    assert translate([whole[i : i + 1] for i in range(len(whole))]) == translate(TOOL_STREAM)


class TestErrors:
    def test_an_error_event_mid_stream_ends_the_stream_with_an_anthropic_error(self):
        error = event({"error": {"message": "Provider overloaded", "type": "server_error", "code": 503}})
        translator = StreamTranslator(model="fast")
        raw = b"".join(translator.feed(piece) for piece in [*TEXT_STREAM[:2], error, *TEXT_STREAM[2:]])
        raw += translator.finish()
        pairs = events(raw)
        assert [name for name, _ in pairs] == [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "error",
        ]
        assert pairs[-1][1] == {"type": "error", "error": {"type": "api_error", "message": "Provider overloaded"}}
        assert translator.done
        assert translator.fail("late") == b""

        received = []
        with pytest.raises(anthropic.APIStatusError, match="Provider overloaded"), sdk_stream(raw) as stream:
            received.extend(stream.text_stream)
        assert received == ["Hello"]  # what came before the error was delivered

    @pytest.mark.parametrize(
        "error",
        [
            b'event: error\ndata: {"message": "boom"}\n\n',
            event({"id": "x", "error": {"message": "boom"}, "choices": [{"index": 0, "delta": {}}]}),  # OpenRouter
        ],
    )
    def test_other_upstream_error_shapes_are_errors(self, error):
        assert events(translate([TEXT_STREAM[1], error]))[-1][1]["error"]["message"] == "boom"

    def test_an_openrouter_finish_reason_error_is_an_error(self):
        assert events(translate([TEXT_STREAM[1], chunk(finish_reason="error")]))[-1][0] == "error"

    @pytest.mark.parametrize("bad", [b"data: {not json\n\n", b"data: [1, 2]\n\n", b"data: " + b"[" * 100_000 + b"\n\n"])
    def test_an_event_that_is_not_a_json_object_is_an_error(self, bad):
        assert events(translate([TEXT_STREAM[1], bad]))[-1][0] == "error"

    def test_an_event_over_the_limit_is_an_error_and_not_held(self):
        translator = StreamTranslator(model="fast")
        raw = translator.feed(b"data: " + b"x" * (MAX_EVENT + 1))
        assert events(raw)[-1][0] == "error"
        assert translator.feed(b"more\n\n") == b""

    def test_the_caller_can_fail_a_broken_stream(self):
        translator = StreamTranslator(model="fast")
        raw = translator.feed(TEXT_STREAM[1]) + translator.fail("upstream timed out", "overloaded_error")
        assert events(raw)[-1][1]["error"] == {"type": "overloaded_error", "message": "upstream timed out"}
        assert translator.finish() == b""
        with pytest.raises(anthropic.APIStatusError), sdk_stream(raw) as stream:
            stream.get_final_message()

    def test_an_upstream_cut_before_finish_reason_is_an_error(self):
        assert events(translate(TEXT_STREAM[:3]))[-1][1]["error"]["message"] == "upstream ended mid-answer"


class TestEndings:
    def test_a_missing_done_is_completed_by_finish(self):
        raw = translate(TOOL_STREAM[:-1])
        assert raw == translate(TOOL_STREAM)
        assert final_message(raw).stop_reason == "tool_use"

    def test_a_last_event_without_its_blank_line_is_read_by_finish(self):
        raw = translate([*TEXT_STREAM[:4], chunk(finish_reason="length").rstrip(b"\n")])
        assert final_message(raw).stop_reason == "max_tokens"

    def test_without_usage_the_input_estimate_stands(self):
        raw = translate([chunk({"content": "Hi"}), chunk(finish_reason="stop"), DONE], input_tokens=42)
        assert events(raw)[-2][1]["usage"] == {"output_tokens": 0}
        message = final_message(raw)
        assert (message.usage.input_tokens, message.usage.output_tokens) == (42, 0)

    def test_done_alone_is_an_empty_message(self):
        message = final_message(translate([DONE], message_id="msg_given"))
        assert (message.id, message.content, message.stop_reason) == ("msg_given", [], "end_turn")

    def test_a_stop_sequence_is_reported(self):
        raw = translate(TEXT_STREAM, stop_sequences=["</answer>"])
        message = final_message(raw)
        assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "</answer>")

    def test_a_stop_sequence_the_provider_kept_is_seen_across_chunks(self):
        pieces = [chunk({"content": "42</ans"}), chunk({"content": "wer>"}), chunk(finish_reason="stop"), DONE]
        message = final_message(translate(pieces, stop_sequences=["END", "</answer>"]))
        assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "</answer>")


class TestProviderQuirks:
    def test_a_tool_call_without_an_id_gets_one_and_index_less_calls_are_told_apart_by_id(self):
        calls = [
            chunk({"tool_calls": [{"function": {"name": "a", "arguments": ""}}]}),  # no index, no id
            chunk({"tool_calls": [{"function": {"arguments": '{"x": 1}'}}]}),
            chunk({"tool_calls": [{"id": "call_b", "function": {"name": "b", "arguments": "{}"}}]}),
            chunk(finish_reason="tool_calls"),
            DONE,
        ]
        message = final_message(translate(calls))
        assert [(block.name, block.input) for block in message.content] == [("a", {"x": 1}), ("b", {})]
        assert message.content[0].id.startswith("toolu_")
        assert message.content[1].id == "call_b"

    def test_groq_usage_and_a_refusal(self):
        groq_usage = event(
            {"id": "x", "choices": [], "x_groq": {"usage": {"prompt_tokens": 5, "completion_tokens": 2}}}
        )
        raw = translate([chunk({"refusal": "No."}), chunk(finish_reason="stop"), groq_usage, DONE])
        message = final_message(raw)
        assert (message.content[0].text, message.stop_reason, message.usage.output_tokens) == ("No.", "refusal", 2)

    def test_other_choices_are_ignored(self):
        other = event({"id": "x", "choices": [{"index": 1, "delta": {"content": "other"}}]})
        message = final_message(translate([chunk({"content": "mine"}), other, chunk(finish_reason="stop"), DONE]))
        assert [block.text for block in message.content] == ["mine"]
