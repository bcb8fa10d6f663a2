"""Usage found by a cheap scan; the extra usage event removed only when the gateway asked for it (SPEC §10)."""

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from proxy.usage import StreamUsage, usage_in_json

USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


def event(payload) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def chunk(text, usage=None):
    return event({"id": "c", "choices": [{"index": 0, "delta": {"content": text}}], "usage": usage})


CONTENT = [b": OPENROUTER PROCESSING\n\n", chunk("Hel"), chunk("lo"), chunk("!")]
USAGE_EVENT = event({"id": "c", "choices": [], "usage": USAGE})
DONE = b"data: [DONE]\n\n"
STREAM = b"".join([*CONTENT, USAGE_EVENT, DONE])
WITHOUT_USAGE = b"".join([*CONTENT, DONE])


def run(tap: StreamUsage, pieces) -> bytes:
    return b"".join(tap.feed(p) for p in pieces) + tap.finish()


def test_usage_of_a_json_answer_is_its_last_usage_object():
    body = json.dumps({"id": "x", "choices": [{"message": {"content": '"usage": {"fake": 1}'}}], "usage": USAGE})
    assert usage_in_json(body.encode()) == USAGE


def test_usage_null_or_absent_is_none():
    assert usage_in_json(b'{"usage": null}') is None
    assert usage_in_json(b'{"id": "x"}') is None
    assert usage_in_json(b'{"usage": {"prompt_tokens": 1') is None  # cut short


def test_a_clients_own_usage_event_is_read_and_kept():
    tap = StreamUsage()
    assert run(tap, [STREAM]) == STREAM
    assert tap.usage == USAGE


def test_the_gateways_usage_event_is_removed_and_read():
    tap = StreamUsage(strip=True)
    assert run(tap, [STREAM]) == WITHOUT_USAGE
    assert tap.usage == USAGE


def test_usage_in_a_content_chunk_is_read_but_never_removed():
    stream = chunk("Hi", usage=USAGE) + DONE
    tap = StreamUsage(strip=True)
    assert run(tap, [stream]) == stream
    assert tap.usage == USAGE


def test_crlf_framing_and_a_missing_final_blank_line():
    stream = STREAM.replace(b"\n\n", b"\r\n\r\n")[: -len(b"\r\n\r\n")]
    tap = StreamUsage(strip=True)
    out = run(tap, [stream])
    assert b'"choices":[]' not in out
    assert out.endswith(b"data: [DONE]")
    assert tap.usage == USAGE


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), unique=True, max_size=30))
def test_any_split_of_the_stream_gives_the_same_bytes_and_usage(cuts):
    bounds = [0, *sorted(cuts), len(STREAM)]
    pieces = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    kept = StreamUsage()
    assert run(kept, pieces) == STREAM
    assert kept.usage == USAGE
    stripped = StreamUsage(strip=True)
    assert run(stripped, pieces) == WITHOUT_USAGE
    assert stripped.usage == USAGE
