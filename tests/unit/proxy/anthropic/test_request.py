"""Anthropic Messages request -> Chat Completions request (proxy/anthropic/request.py; issue 7)."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.anthropic.request import TOOL_ERROR_PREFIX, Capabilities, to_chat
from proxy.anthropic.request_fields import Untranslatable

PNG = "iVBORw0KGgo="
PDF = "JVBERi0xLjQK"
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def body(**fields):
    return {"model": "claude-sonnet-4-5", "max_tokens": 256, "messages": [{"role": "user", "content": "Hi"}]} | fields


def user(*blocks):
    return body(messages=[{"role": "user", "content": list(blocks)}])


def chat_messages(request, caps=None):
    return to_chat(request, target_supports=caps)["messages"]


def untranslatable(request, caps=None) -> Untranslatable:
    with pytest.raises(Untranslatable) as info:
        to_chat(request, target_supports=caps)
    return info.value


# --- top level -----------------------------------------------------------------------


def test_a_minimal_request_keeps_model_max_tokens_and_the_text():
    assert to_chat(body()) == {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 256,
    }


def test_sampling_stop_and_user_fields_map_to_their_openai_names():
    chat = to_chat(body(temperature=0.2, top_p=0.9, stop_sequences=["\n\nHuman:", "END"], metadata={"user_id": "u-42"}))
    assert chat["temperature"] == 0.2
    assert chat["top_p"] == 0.9
    assert chat["stop"] == ["\n\nHuman:", "END"]
    assert chat["user"] == "u-42"


def test_a_stream_asks_for_usage_so_message_delta_can_report_it():
    chat = to_chat(body(stream=True))
    assert chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}


def test_a_non_stream_gets_no_stream_options():
    chat = to_chat(body(stream=False))
    assert chat["stream"] is False
    assert "stream_options" not in chat


def test_empty_stop_sequences_and_metadata_without_user_add_nothing():
    assert to_chat(body(stop_sequences=[], metadata={})) == to_chat(body())


def test_null_fields_count_as_absent():
    assert to_chat(body(system=None, temperature=None, top_k=None, metadata={"user_id": None})) == to_chat(body())


def test_cache_control_is_dropped_everywhere_as_documented():
    hint = {"type": "ephemeral"}
    request = body(
        cache_control=hint,
        system=[{"type": "text", "text": "Be brief.", "cache_control": hint}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": hint}]}],
        tools=[{"name": "f", "input_schema": {"type": "object"}, "cache_control": hint}],
    )
    chat = to_chat(request)
    assert chat["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize(
    ("request_body", "param"),
    [
        ({"messages": [], "max_tokens": 1}, "model"),
        ({"model": "m", "messages": []}, "max_tokens"),
        ({"model": "m", "max_tokens": 1}, "messages"),
        (body(max_tokens=0), "max_tokens"),
        (body(max_tokens=-1), "max_tokens"),
        (body(max_tokens=True), "max_tokens"),
        (body(max_tokens="5"), "max_tokens"),
        (body(model=7), "model"),
        (body(messages={}), "messages"),
        (body(temperature="hot"), "temperature"),
        (body(top_p=False), "top_p"),
        (body(stream="yes"), "stream"),
        (body(stop_sequences="END"), "stop_sequences"),
        (body(stop_sequences=["END", 3]), "stop_sequences[1]"),
        (body(metadata={"user_id": 5}), "metadata.user_id"),
        (body(metadata={"session": "s"}), "metadata.session"),
        (body(top_k=40), "top_k"),
        (body(thinking={"type": "enabled", "budget_tokens": 2048}), "thinking"),
        (body(service_tier="auto"), "service_tier"),
        (body(output_config={"effort": "low"}), "output_config"),
        (body(container="c-1"), "container"),
        (body(whatever=1), "whatever"),
    ],
)
def test_a_missing_wrong_or_untranslatable_top_level_field_is_named(request_body, param):
    assert untranslatable(request_body).param == param


def test_the_error_message_names_the_field_and_the_reason():
    error = untranslatable(body(top_k=40))
    assert str(error) == "top_k: Chat Completions has no top_k sampling parameter"
    assert error.reason == "Chat Completions has no top_k sampling parameter"


def test_a_body_that_is_not_an_object_is_untranslatable():
    assert untranslatable([]).param == "body"


# --- system --------------------------------------------------------------------------


def test_a_system_string_becomes_the_leading_system_message():
    assert chat_messages(body(system="You are terse.")) == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
    ]


def test_system_text_blocks_are_joined_with_a_blank_line():
    system = [{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two."}]
    assert chat_messages(body(system=system))[0] == {"role": "system", "content": "Rule one.\n\nRule two."}


def test_an_empty_system_prompt_is_omitted():
    assert chat_messages(body(system="")) == chat_messages(body(system=[])) == [{"role": "user", "content": "Hi"}]


def test_a_system_turn_inside_the_messages_stays_in_place():
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": [{"type": "text", "text": "Now French."}]},
    ]
    assert chat_messages(body(messages=messages))[1] == {"role": "system", "content": "Now French."}


@pytest.mark.parametrize(
    ("system", "param"),
    [
        ([{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}], "system[0].type"),
        ([{"type": "text"}], "system[0].text"),
        ([{"type": "text", "text": "a", "citations": [{"type": "char_location"}]}], "system[0].citations"),
        (["plain"], "system[0]"),
        (5, "system"),
    ],
)
def test_a_system_prompt_that_is_not_text_is_named(system, param):
    assert untranslatable(body(system=system)).param == param


# --- user content ----------------------------------------------------------------------


def test_a_single_text_block_becomes_a_plain_string():
    assert chat_messages(user({"type": "text", "text": "Hello"})) == [{"role": "user", "content": "Hello"}]


def test_several_text_blocks_of_a_user_turn_become_text_parts():
    assert chat_messages(user({"type": "text", "text": "a"}, {"type": "text", "text": "b"})) == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


def test_a_base64_image_becomes_a_data_url():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert chat_messages(user({"type": "text", "text": "What is this?"}, image)) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        }
    ]


def test_a_url_image_keeps_its_url_and_stays_a_part_even_alone():
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    assert chat_messages(user(image)) == [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}
    ]


def test_a_pdf_document_becomes_a_file_part_where_the_target_takes_documents():
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}}
    titled = document | {"title": "q3.pdf"}
    caps = Capabilities(documents=True)
    assert chat_messages(user(document, titled), caps)[0]["content"] == [
        {"type": "file", "file": {"filename": "document.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}},
        {"type": "file", "file": {"filename": "q3.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}},
    ]


def test_a_document_with_citations_disabled_translates():
    document = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
        "citations": {"enabled": False},
    }
    assert chat_messages(user(document), Capabilities(documents=True))[0]["content"][0]["type"] == "file"


def test_an_empty_user_content_list_is_an_empty_string():
    assert chat_messages(user()) == [{"role": "user", "content": ""}]


IMAGE_URL = {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
PDF_DOC = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}}


@pytest.mark.parametrize(
    ("block", "caps", "param"),
    [
        (PDF_DOC, None, "messages[0].content[0].type"),
        (IMAGE_URL, Capabilities(images=False), "messages[0].content[0].type"),
        ({"type": "image", "source": {"type": "file", "file_id": "f1"}}, None, "messages[0].content[0].source.type"),
        ({"type": "image", "source": {"type": "url"}}, None, "messages[0].content[0].source.url"),
        (
            {"type": "image", "source": {"type": "base64", "data": PNG}},
            None,
            "messages[0].content[0].source.media_type",
        ),
        ({"type": "image", "source": "https://x/y.png"}, None, "messages[0].content[0].source"),
        (IMAGE_URL | {"transformations": {"resize": "x"}}, None, "messages[0].content[0].transformations"),
        (
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hi"}},
            Capabilities(documents=True),
            "messages[0].content[0].source.type",
        ),
        (
            {"type": "document", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            Capabilities(documents=True),
            "messages[0].content[0].source.media_type",
        ),
        (PDF_DOC | {"context": "from the wiki"}, Capabilities(documents=True), "messages[0].content[0].context"),
        (PDF_DOC | {"citations": {"enabled": True}}, Capabilities(documents=True), "messages[0].content[0].citations"),
        ({"type": "search_result", "source": "s", "title": "t", "content": []}, None, "messages[0].content[0].type"),
        ({"type": "tool_use", "id": "t", "name": "f", "input": {}}, None, "messages[0].content[0].type"),
        ({"type": "thinking", "thinking": "hm", "signature": "s"}, None, "messages[0].content[0].type"),
        (
            {"type": "text", "text": "a", "citations": [{"type": "char_location"}]},
            None,
            "messages[0].content[0].citations",
        ),
        ({"type": "text", "text": 5}, None, "messages[0].content[0].text"),
        ({"text": "no type"}, None, "messages[0].content[0].type"),
        ("bare string", None, "messages[0].content[0]"),
    ],
)
def test_an_untranslatable_user_block_is_named(block, caps, param):
    assert untranslatable(user(block), caps).param == param


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "tool", "content": "x"}, "messages[0].role"),
        ({"role": "user"}, "messages[0].content"),
        ({"content": "x"}, "messages[0].role"),
        ({"role": "user", "content": "x", "name": "bob"}, "messages[0].name"),
        ({"role": "user", "content": 5}, "messages[0].content"),
        ("hello", "messages[0]"),
    ],
)
def test_a_malformed_message_is_named(message, param):
    assert untranslatable(body(messages=[message])).param == param


# --- assistant content -----------------------------------------------------------------


def assistant(*blocks):
    return chat_messages(
        body(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": list(blocks)}])
    )[1]


def test_an_assistant_string_is_kept_as_a_prefill():
    messages = [{"role": "user", "content": "Pick A or B"}, {"role": "assistant", "content": "The answer is ("}]
    assert chat_messages(body(messages=messages))[1] == {"role": "assistant", "content": "The answer is ("}


def test_assistant_text_blocks_are_joined():
    assert assistant({"type": "text", "text": "One."}, {"type": "text", "text": "Two."}) == {
        "role": "assistant",
        "content": "One.\n\nTwo.",
    }


def test_a_tool_use_becomes_a_tool_call_with_json_arguments():
    call = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Zürich", "days": [1, 2]}}
    message = assistant(call)
    assert message == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Zürich", "days": [1, 2]}'},
            }
        ],
    }
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == call["input"]


def test_text_around_tool_uses_becomes_the_content_before_the_calls():
    message = assistant(
        {"type": "text", "text": "Checking both."},
        {"type": "tool_use", "id": "a", "name": "f", "input": {}},
        {"type": "tool_use", "id": "b", "name": "g", "input": {"x": 1}},
        {"type": "text", "text": "Done."},
    )
    assert message["content"] == "Checking both.\n\nDone."
    assert [call["id"] for call in message["tool_calls"]] == ["a", "b"]


def test_thinking_blocks_in_assistant_history_are_dropped_as_documented():
    message = assistant(
        {"type": "thinking", "thinking": "Let me think.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "Answer."},
    )
    assert message == {"role": "assistant", "content": "Answer."}


def test_an_assistant_turn_with_nothing_left_is_empty_text():
    assert assistant({"type": "redacted_thinking", "data": "opaque"}) == {"role": "assistant", "content": ""}


def test_a_tool_use_replayed_from_anthropic_with_a_direct_caller_and_null_fields_translates():
    call = {
        "type": "tool_use",
        "id": "t",
        "name": "f",
        "input": {},
        "caller": {"type": "direct"},
        "cache_control": None,
    }
    assert assistant(call)["tool_calls"][0]["id"] == "t"


@pytest.mark.parametrize(
    ("block", "param"),
    [
        ({"type": "tool_use", "id": "t", "name": "f", "input": "{}"}, "messages[1].content[0].input"),
        ({"type": "tool_use", "id": "t", "name": "f"}, "messages[1].content[0].input"),
        ({"type": "tool_use", "name": "f", "input": {}}, "messages[1].content[0].id"),
        ({"type": "tool_use", "id": "t", "input": {}}, "messages[1].content[0].name"),
        (
            {"type": "tool_use", "id": "t", "name": "f", "input": {}, "caller": {"type": "code_execution_20250825"}},
            "messages[1].content[0].caller",
        ),
        ({"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}, "messages[1].content[0].type"),
        ({"type": "web_search_tool_result", "tool_use_id": "s", "content": []}, "messages[1].content[0].type"),
        (IMAGE_URL, "messages[1].content[0].type"),
        ({"type": "tool_result", "tool_use_id": "t", "content": "x"}, "messages[1].content[0].type"),
    ],
)
def test_an_untranslatable_assistant_block_is_named(block, param):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [block]}]
    assert untranslatable(body(messages=messages)).param == param


# --- tool results ------------------------------------------------------------------------


def test_a_tool_result_becomes_a_tool_message_before_the_rest_of_the_turn():
    turn = user(
        {"type": "text", "text": "Also, thanks."},
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "14°C"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "rain"}]},
    )
    assert chat_messages(turn) == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "14°C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "rain"},
        {"role": "user", "content": "Also, thanks."},
    ]


def test_tool_result_text_blocks_are_joined_and_missing_content_is_empty():
    turn = user(
        {
            "type": "tool_result",
            "tool_use_id": "a",
            "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}],
        },
        {"type": "tool_result", "tool_use_id": "b"},
        {"type": "tool_result", "tool_use_id": "c", "content": []},
    )
    assert [m["content"] for m in chat_messages(turn)] == ["x\n\ny", "", ""]


def test_an_error_tool_result_is_prefixed():
    turn = user({"type": "tool_result", "tool_use_id": "a", "content": "city not found", "is_error": True})
    assert chat_messages(turn) == [{"role": "tool", "tool_call_id": "a", "content": "Error: city not found"}]
    assert TOOL_ERROR_PREFIX == "Error: "


def test_a_tool_result_with_is_error_false_is_unchanged():
    turn = user({"type": "tool_result", "tool_use_id": "a", "content": "ok", "is_error": False})
    assert chat_messages(turn)[0]["content"] == "ok"


@pytest.mark.parametrize(
    ("block", "param"),
    [
        ({"type": "tool_result", "tool_use_id": "a", "content": [IMAGE_URL]}, "messages[0].content[0].content[0].type"),
        ({"type": "tool_result", "tool_use_id": "a", "content": [PDF_DOC]}, "messages[0].content[0].content[0].type"),
        ({"type": "tool_result", "content": "x"}, "messages[0].content[0].tool_use_id"),
        ({"type": "tool_result", "tool_use_id": 1, "content": "x"}, "messages[0].content[0].tool_use_id"),
        ({"type": "tool_result", "tool_use_id": "a", "is_error": "yes"}, "messages[0].content[0].is_error"),
        ({"type": "tool_result", "tool_use_id": "a", "content": 5}, "messages[0].content[0].content"),
        ({"type": "tool_result", "tool_use_id": "a", "toolset_name": "x"}, "messages[0].content[0].toolset_name"),
    ],
)
def test_an_untranslatable_tool_result_is_named(block, param):
    assert untranslatable(user(block)).param == param


def test_a_full_multi_turn_tool_conversation_translates_exactly():
    request = body(
        system="You are a weather bot.",
        tools=[{"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER_SCHEMA}],
        tool_choice={"type": "auto"},
        messages=[
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_p", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_o", "name": "get_weather", "input": {"city": "Oslo"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_p", "content": "18°C, sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_o", "content": "no data", "is_error": True},
                    {"type": "text", "text": "Retry Oslo please."},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_o2", "name": "get_weather", "input": {"city": "Oslo"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_o2", "content": "4°C"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Paris 18°C, Oslo 4°C."}]},
            {"role": "user", "content": "Thanks!"},
        ],
    )

    def call(call_id, city):
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
        }

    assert to_chat(request) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "tools": [
            {
                "type": "function",
                "function": {"name": "get_weather", "description": "Weather for a city", "parameters": WEATHER_SCHEMA},
            }
        ],
        "tool_choice": "auto",
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [call("toolu_p", "Paris"), call("toolu_o", "Oslo")],
            },
            {"role": "tool", "tool_call_id": "toolu_p", "content": "18°C, sunny"},
            {"role": "tool", "tool_call_id": "toolu_o", "content": "Error: no data"},
            {"role": "user", "content": "Retry Oslo please."},
            {"role": "assistant", "content": None, "tool_calls": [call("toolu_o2", "Oslo")]},
            {"role": "tool", "tool_call_id": "toolu_o2", "content": "4°C"},
            {"role": "assistant", "content": "Paris 18°C, Oslo 4°C."},
            {"role": "user", "content": "Thanks!"},
        ],
    }


# --- tools and tool_choice --------------------------------------------------------------


def test_a_tool_becomes_a_function_and_custom_type_and_strict_are_kept():
    tools = [
        {"name": "a", "input_schema": WEATHER_SCHEMA},
        {"type": "custom", "name": "b", "description": "B", "input_schema": {"type": "object"}, "strict": True},
    ]
    assert to_chat(body(tools=tools))["tools"] == [
        {"type": "function", "function": {"name": "a", "parameters": WEATHER_SCHEMA}},
        {
            "type": "function",
            "function": {"name": "b", "description": "B", "parameters": {"type": "object"}, "strict": True},
        },
    ]


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"type": "web_search_20250305", "name": "web_search", "max_uses": 3}, "tools[0].type"),
        ({"type": "bash_20250124", "name": "bash"}, "tools[0].type"),
        ({"type": 3, "name": "f", "input_schema": {}}, "tools[0].type"),
        ({"name": "f"}, "tools[0].input_schema"),
        ({"input_schema": {}}, "tools[0].name"),
        ({"name": "f", "input_schema": "{}"}, "tools[0].input_schema"),
        ({"name": "f", "input_schema": {}, "description": 1}, "tools[0].description"),
        ({"name": "f", "input_schema": {}, "input_examples": [{}]}, "tools[0].input_examples"),
        ({"name": "f", "input_schema": {}, "defer_loading": True}, "tools[0].defer_loading"),
        ("f", "tools[0]"),
    ],
)
def test_an_untranslatable_tool_is_named(tool, param):
    assert untranslatable(body(tools=[tool])).param == param


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        ({"type": "tool", "name": "f"}, {"tool_choice": {"type": "function", "function": {"name": "f"}}}),
        ({"type": "auto", "disable_parallel_tool_use": True}, {"tool_choice": "auto", "parallel_tool_calls": False}),
        ({"type": "any", "disable_parallel_tool_use": False}, {"tool_choice": "required"}),
        (
            {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
            {"tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False},
        ),
    ],
)
def test_tool_choice_maps_to_openai(choice, expected):
    chat = to_chat(body(tools=[{"name": "f", "input_schema": {}}], tool_choice=choice))
    assert {key: chat[key] for key in ("tool_choice", "parallel_tool_calls") if key in chat} == expected


@pytest.mark.parametrize(
    ("choice", "param"),
    [
        ({"type": "function"}, "tool_choice.type"),
        ({}, "tool_choice.type"),
        ({"type": ["auto"]}, "tool_choice.type"),
        ("auto", "tool_choice"),
        ({"type": "tool"}, "tool_choice.name"),
        ({"type": "auto", "name": "f"}, "tool_choice.name"),
        ({"type": "any", "disable_parallel_tool_use": "yes"}, "tool_choice.disable_parallel_tool_use"),
    ],
)
def test_an_untranslatable_tool_choice_is_named(choice, param):
    assert untranslatable(body(tool_choice=choice)).param == param


# --- properties ------------------------------------------------------------------------

TEXT = st.text()


@given(TEXT, TEXT, TEXT)
def test_any_text_round_trips_unchanged(system, question, answer):
    messages = [
        {"role": "user", "content": [{"type": "text", "text": question}]},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": question},
    ]
    chat = to_chat(body(system=[{"type": "text", "text": system}], messages=messages))
    expected = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    expected += [{"role": "user", "content": question}]
    assert chat["messages"] == ([{"role": "system", "content": system}] if system else []) + expected


@given(TEXT, st.dictionaries(st.text(), st.integers() | st.text() | st.booleans() | st.none()))
def test_any_tool_round_trip_keeps_its_input_and_result(result, arguments):
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": arguments}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": result}]},
    ]
    chat = chat_messages(body(messages=messages))
    assert json.loads(chat[1]["tool_calls"][0]["function"]["arguments"]) == arguments
    assert chat[2] == {"role": "tool", "tool_call_id": "t", "content": result}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
NAMES = st.sampled_from(
    [
        *("type", "text", "role", "content", "source", "tool_use_id", "input", "id", "name", "is_error", "media_type"),
        *("data", "url", "citations", "cache_control", "title", "input_schema", "user_id", "enabled", "caller"),
    ]
)
KINDS = st.sampled_from(
    [
        *("text", "image", "document", "tool_use", "tool_result", "thinking", "base64", "url", "auto", "any", "tool"),
        *("user", "assistant", "system", "custom", "direct", "application/pdf", "image/png"),
    ]
)
# Near-valid shapes, so the search reaches deep into the translation rather than failing at the top.
NEAR = st.recursive(
    JSON | KINDS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=4),
    max_leaves=20,
)
SOURCES = st.sampled_from(
    [
        {"type": "base64", "media_type": "image/png", "data": PNG},
        {"type": "url", "url": "https://x/y.png"},
        {"type": "base64", "media_type": "application/pdf", "data": PDF},
    ]
)
TEXT_BLOCK = st.builds(lambda text: {"type": "text", "text": text}, st.text(max_size=5))
VALID_BLOCKS = st.one_of(
    TEXT_BLOCK,
    st.builds(lambda source: {"type": "image", "source": source}, SOURCES),
    st.builds(lambda source: {"type": "document", "source": source}, SOURCES),
    st.builds(
        lambda args: {"type": "tool_use", "id": "t", "name": "f", "input": args}, st.dictionaries(st.text(), JSON)
    ),
    st.builds(
        lambda content, error: {"type": "tool_result", "tool_use_id": "t", "content": content, "is_error": error},
        st.text(max_size=5) | st.lists(TEXT_BLOCK, max_size=2),
        st.booleans(),
    ),
    st.just({"type": "thinking", "thinking": "hm", "signature": "s"}),
)
# A valid block with one field set to something else: the search then reaches every check, not just the first.
BLOCKS = (
    VALID_BLOCKS | VALID_BLOCKS | st.builds(lambda block, key, value: block | {key: value}, VALID_BLOCKS, NAMES, NEAR)
)
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system"]),
            "content": st.text(max_size=5) | st.lists(BLOCKS, max_size=4),
        }
    ),
    max_size=4,
)
# Valid top-level fields around near-valid messages ...
BODIES = st.fixed_dictionaries(
    {
        "model": st.just("m"),
        "max_tokens": st.just(16),
        "messages": MESSAGES,
    },
    optional={
        "system": st.text(max_size=5) | st.lists(TEXT_BLOCK, max_size=2),
        "tools": st.lists(st.just({"name": "f", "input_schema": {}}), max_size=2),
        "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "tool", "name": "f"}]),
        "metadata": st.just({"user_id": "u"}),
        "stream": st.booleans(),
        "stop_sequences": st.lists(st.text(max_size=3), max_size=2),
        "temperature": st.floats(0, 1),
    },
)


TOP_NAMES = st.sampled_from(
    ["model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "stream", "metadata", "tools"]
)
# ... and any top-level field replaced by anything, near-valid shapes included.
MUTATED_BODIES = st.builds(
    lambda body, key, value: body | {key: value}, BODIES, TOP_NAMES | st.just("tool_choice"), NEAR
)


def translate(request_body, caps):
    """The translation, or the `Untranslatable` raised instead; any other exception propagates and fails."""
    try:
        return to_chat(request_body, target_supports=caps), None
    except Untranslatable as error:
        return None, error


@given(BODIES | MUTATED_BODIES, st.booleans(), st.booleans())
def test_any_body_translates_or_is_untranslatable_never_another_error(request_body, documents, images):
    chat, error = translate(request_body, Capabilities(documents=documents, images=images))
    if error is not None:
        assert error.param
        assert str(error).startswith(error.param + ": ")
    else:
        json.dumps(chat)  # what the caller sends upstream must serialise
        assert all(message["role"] in {"system", "user", "assistant", "tool"} for message in chat["messages"])
