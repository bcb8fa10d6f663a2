import pytest

from middleware.cache.key import cache_key
from middleware.call import Call

BASE = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}


def key_of(body: bytes, tenant="team-a", method="POST", path="/v1/chat/completions"):
    call = Call(tenant=tenant, body=body)
    return cache_key(call, method, path)


def test_key_order_and_whitespace_do_not_change_the_key():
    a = key_of(b'{"model":"fast","messages":[{"role":"user","content":"hi"}],"temperature":0.2}')
    b = key_of(b'{ "temperature": 0.2,\n "messages": [ {"content": "hi", "role": "user"} ], "model": "fast" }')
    assert a == b


@pytest.mark.parametrize(
    "change",
    [
        {"tool_choice": "auto"},
        {"response_format": {"type": "json_object"}},
        {"n": 2},
        {"seed": 1},
        {"stream": True},
        {"stream_options": {"include_usage": True}},
        {"max_tokens": 10},
        {"some_provider_extra": [1]},
        {"temperature": 0},
        {"model": "other"},
        {"messages": [{"role": "user", "content": "hi!"}]},
    ],
)
def test_any_field_that_can_change_the_answer_changes_the_key(change):
    import json

    assert key_of(json.dumps({**BASE, **change}).encode()) != key_of(json.dumps(BASE).encode())


def test_omitted_temperature_is_not_temperature_zero():
    import json

    without = {k: v for k, v in BASE.items() if k != "temperature"}
    assert key_of(json.dumps(without).encode()) != key_of(json.dumps({**without, "temperature": 0}).encode())


def test_tenant_is_the_clear_prefix_and_separates_keys():
    body = b'{"model":"fast"}'
    a, b = key_of(body, tenant="team-a"), key_of(body, tenant="team-b")
    assert a.startswith(b"team-a:")
    assert b.startswith(b"team-b:")
    assert a.split(b":", 1)[1] == b.split(b":", 1)[1]
    assert a != b


def test_method_and_path_are_in_the_key():
    body = b'{"model":"fast"}'
    assert key_of(body) != key_of(body, path="/v1/completions")
    assert key_of(body) != key_of(body, method="PUT")
