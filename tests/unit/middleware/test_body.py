import pytest

from middleware.body import parse_json_object, read_body, replay
from middleware.errors import BodyTooLarge, InvalidRequest


def scope_with(headers=()):
    return {"type": "http", "headers": list(headers)}


def receiver(*chunks, disconnect_after=False):
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    if disconnect_after:
        messages.append({"type": "http.disconnect"})
    calls = []

    async def receive():
        calls.append(1)
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    receive.calls = calls
    return receive


@pytest.mark.anyio
async def test_read_body_joins_chunks():
    assert await read_body(scope_with(), receiver(b"ab", b"cd", b""), 100) == b"abcd"


@pytest.mark.anyio
async def test_declared_length_over_limit_is_refused_before_reading():
    receive = receiver(b"x" * 10)
    with pytest.raises(BodyTooLarge):
        await read_body(scope_with([(b"content-length", b"1000")]), receive, 100)
    assert receive.calls == []


@pytest.mark.anyio
async def test_chunked_body_is_refused_at_the_chunk_that_crosses_the_limit():
    receive = receiver(b"x" * 60, b"x" * 60, b"x" * 60)
    with pytest.raises(BodyTooLarge):
        await read_body(scope_with(), receive, 100)
    assert len(receive.calls) == 2


@pytest.mark.anyio
async def test_replay_yields_the_body_once_then_the_real_receive():
    replayed = replay(b"hello", receiver(disconnect_after=True))
    first = await replayed()
    second = await replayed()
    assert first == {"type": "http.request", "body": b"hello", "more_body": False}
    assert second["type"] == "http.disconnect"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"model"', "JSON object"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b'{"a": -Infinity}', "Infinity"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'{"a": "\\uDFFF x"}', "surrogate"),
        (b"\xff\xfe\xfa", "not valid JSON"),
        (b'{"a": "\xed\xa0\x80"}', "not valid JSON"),
    ],
)
def test_hostile_bodies_become_invalid_request(body, needle):
    with pytest.raises(InvalidRequest) as caught:
        parse_json_object(body)
    assert needle in caught.value.message
    assert caught.value.status == 400


def test_valid_pairs_of_surrogates_are_accepted():
    assert parse_json_object(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
