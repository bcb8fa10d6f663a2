import pytest

from middleware.cache.completeness import stream_is_complete
from middleware.cache.entry import Entry, decode, encode
from middleware.cache.policy import OFF, ON, REFRESH, CacheRequest, cache_request
from middleware.errors import InvalidRequest


def asked(*headers):
    return cache_request({"headers": list(headers)}, default_ttl_s=3600, max_ttl_s=86400)


def test_cache_is_off_unless_asked():
    assert asked() == CacheRequest(OFF, 0.0)
    assert asked((b"x-sluice-cache", b"off")).mode == OFF


def test_on_and_refresh_use_the_default_ttl():
    assert asked((b"x-sluice-cache", b"ON")) == CacheRequest(ON, 3600)
    assert asked((b"x-sluice-cache", b"refresh")) == CacheRequest(REFRESH, 3600)


def test_ttl_header_wins_over_max_age_and_fractions_are_kept():
    on = (b"x-sluice-cache", b"on")
    assert asked(on, (b"cache-control", b"max-age=60")).ttl_s == 60
    assert asked(on, (b"x-sluice-cache-ttl", b"2.5"), (b"cache-control", b"max-age=60")).ttl_s == 2.5


def test_huge_ttl_is_clamped():
    assert asked((b"x-sluice-cache", b"on"), (b"x-sluice-cache-ttl", b"99999999999")).ttl_s == 86400


def test_no_store_forces_off():
    assert asked((b"x-sluice-cache", b"on"), (b"cache-control", b"no-cache, no-store")).mode == OFF


@pytest.mark.parametrize("ttl", [b"0", b"-5", b"abc", b"nan", b"inf", b"", b"1e400"])
def test_bad_ttls_are_a_400_naming_the_header(ttl):
    with pytest.raises(InvalidRequest) as caught:
        asked((b"x-sluice-cache", b"on"), (b"x-sluice-cache-ttl", ttl))
    assert caught.value.param == "X-Sluice-Cache-TTL"


def test_bad_ttl_is_ignored_when_the_cache_is_off():
    assert asked((b"x-sluice-cache-ttl", b"abc")).mode == OFF


def test_unknown_mode_is_a_400():
    with pytest.raises(InvalidRequest):
        asked((b"x-sluice-cache", b"yes"))


def test_entry_round_trips_and_garbage_is_a_miss():
    entry = Entry("team-a", "cerebras", "llama", "text/event-stream", 1.5, b"data: x\n\n")
    assert decode(encode(entry)) == entry
    assert decode(b"nonsense") is None
    assert decode(b"SLC1\x00\x00\x00\x05{bad}") is None


def sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


CHUNK = '{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}'
END = '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
USAGE = '{"choices":[],"usage":{"total_tokens":3}}'


def test_complete_stream():
    assert stream_is_complete(sse(CHUNK, END, "[DONE]"), usage_expected=False)
    assert stream_is_complete(sse(CHUNK, END, USAGE, "[DONE]").replace(b"\n", b"\r\n"), usage_expected=True)
    assert stream_is_complete(b": keep-alive\n\n" + sse(CHUNK, END, "[DONE]"), usage_expected=False)


@pytest.mark.parametrize(
    ("body", "usage"),
    [
        (sse(CHUNK, END), False),  # no [DONE]
        (sse(CHUNK, "[DONE]"), False),  # [DONE] without finish_reason
        (sse(CHUNK, END, "[DONE]"), True),  # usage asked for, none came
        (sse(CHUNK, '{"error":{"message":"x"}}'), False),
        (sse(CHUNK, "not json", END, "[DONE]"), False),
        (sse("[DONE]"), False),  # no choices at all
        (sse(CHUNK.replace('"index":0', '"index":1'), END, "[DONE]"), False),  # choice 1 never finished
    ],
)
def test_incomplete_streams_are_not_stored(body, usage):
    assert not stream_is_complete(body, usage_expected=usage)
