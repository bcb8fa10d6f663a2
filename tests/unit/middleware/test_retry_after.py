import json
import math
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.retry_after import MAX_RESET_S, quota_exhausted, reset_after

NOW = 1_750_000_000.0
NAMES = [b"retry-after", b"retry-after-ms", b"x-ratelimit-reset-requests", b"x-ratelimit-reset-tokens"]


def wait(*headers, now=NOW):
    return reset_after([(name.encode(), value.encode()) for name, value in headers], now=now)


def test_retry_after_delta_seconds():
    assert wait(("retry-after", "2")) == 2.0


def test_retry_after_fractional_seconds():
    assert wait(("retry-after", "1.5")) == 1.5


def test_retry_after_http_date_in_the_future():
    assert wait(("retry-after", formatdate(NOW + 30, usegmt=True))) == pytest.approx(30.0)


def test_retry_after_http_date_in_the_past_is_zero():
    assert wait(("retry-after", formatdate(NOW - 300, usegmt=True))) == 0.0


def test_retry_after_http_date_without_zone_is_utc():
    assert wait(("retry-after", formatdate(NOW + 10).replace("+0000", "-0000"))) == pytest.approx(10.0)


def test_retry_after_ms():
    assert wait(("retry-after-ms", "1500")) == 1.5


def test_retry_after_ms_fractional():
    assert wait(("retry-after-ms", "12.5")) == pytest.approx(0.0125)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3600.0),  # 3723.5 s, clamped to an hour
        ("2m3.5s", 123.5),
        ("0.5s", 0.5),
        ("250us", 0.00025),
        ("250\u00b5s", 0.00025),
        ("1s500ms", 1.5),
        ("30", 30.0),
        ("1.5", 1.5),
        ("0s", 0.0),
    ],
)
def test_ratelimit_reset_durations(value, seconds):
    assert wait(("x-ratelimit-reset-requests", value)) == pytest.approx(seconds)


def test_the_longest_ratelimit_reset_wins():
    assert wait(("x-ratelimit-reset-requests", "1s"), ("x-ratelimit-reset-tokens", "6m0s")) == 360.0
    assert wait(("x-ratelimit-reset-requests", "7s"), ("x-ratelimit-reset-tokens", "20ms")) == 7.0


def test_a_malformed_reset_does_not_hide_the_other():
    assert wait(("x-ratelimit-reset-requests", "soon"), ("x-ratelimit-reset-tokens", "3s")) == 3.0


def test_preference_order():
    everything = [
        ("x-ratelimit-reset-tokens", "9s"),
        ("retry-after", "5"),
        ("retry-after-ms", "2500"),
    ]
    assert wait(*everything) == 2.5
    assert wait(*everything[:2]) == 5.0
    assert wait(*everything[:1]) == 9.0


def test_a_malformed_source_falls_through_to_the_next():
    assert wait(("retry-after-ms", "abc"), ("retry-after", "4")) == 4.0
    assert wait(("retry-after", "later"), ("x-ratelimit-reset-requests", "2s")) == 2.0


def test_header_names_are_case_insensitive():
    assert reset_after([(b"Retry-After", b"2")]) == 2.0
    assert reset_after([(b"RETRY-AFTER-MS", b"100")]) == pytest.approx(0.1)
    assert reset_after([(b"X-RateLimit-Reset-Tokens", b"1m")]) == 60.0


def test_surrounding_whitespace_is_ignored():
    assert wait(("retry-after", " 3\t")) == 3.0


@pytest.mark.parametrize(
    "value",
    [
        "",
        "-1",
        "-0.5",
        "nan",
        "NaN",
        "inf",
        "Infinity",
        "1e3",
        "0x10",
        "1_000",
        "abc",
        "2 s",
        "+5",
        "\u0663",
        "9" * 400,
    ],
)
def test_malformed_or_negative_values_are_ignored(value):
    assert wait(("retry-after", value)) is None
    assert wait(("retry-after-ms", value)) is None
    assert wait(("x-ratelimit-reset-requests", value)) is None


@pytest.mark.parametrize("value", ["-1s", "1x", "s", "1.2.3s", "1h-2m", "5 m", "1e9h", "ms"])
def test_malformed_durations_are_ignored(value):
    assert wait(("x-ratelimit-reset-requests", value)) is None


def test_huge_values_are_clamped_to_an_hour():
    assert wait(("retry-after", "604800")) == MAX_RESET_S
    assert wait(("retry-after-ms", "99999999999")) == MAX_RESET_S
    assert wait(("x-ratelimit-reset-requests", "168h")) == MAX_RESET_S
    assert wait(("retry-after", formatdate(NOW + 7 * 86400, usegmt=True))) == MAX_RESET_S


def test_non_utf8_values_are_ignored():
    assert reset_after([(b"retry-after", b"\xff\xfe")]) is None


def test_nothing_usable_is_none():
    assert reset_after([]) is None
    assert wait(("content-type", "application/json"), ("x-ratelimit-remaining-requests", "0")) is None


def test_now_defaults_to_the_wall_clock():
    assert reset_after([(b"retry-after", b"Sat, 01 Jan 2000 00:00:00 GMT")]) == 0.0


def error_body(**error):
    return json.dumps({"error": {"message": "m", **error}}).encode()


def test_quota_exhausted_by_code_or_type():
    assert quota_exhausted(error_body(type="insufficient_quota", code="insufficient_quota"))
    assert quota_exhausted(error_body(code="insufficient_quota"))
    assert quota_exhausted(error_body(type="insufficient_quota", code=None))


@pytest.mark.parametrize(
    "body",
    [
        error_body(type="requests", code="rate_limit_exceeded"),
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b'"insufficient_quota"',
        b'{"error": "insufficient_quota"}',
        b'{"error": {"code": ["insufficient_quota"]}}',
        b"[" * 100_000,
    ],
)
def test_other_bodies_are_not_quota_exhausted(body):
    assert not quota_exhausted(body)


def in_range(result):
    return result is None or (isinstance(result, float) and 0.0 <= result <= MAX_RESET_S and not math.isnan(result))


@settings(deadline=None, max_examples=200)
@given(st.lists(st.tuples(st.binary(), st.binary())), st.floats(allow_nan=False, allow_infinity=False) | st.none())
def test_reset_after_never_raises_on_arbitrary_bytes(headers, now):
    assert in_range(reset_after(headers, now=now))


header_values = st.text() | st.from_regex(r"\A[0-9.hmsuµ -]{0,20}\Z") | st.floats().map(str)


@settings(deadline=None, max_examples=200)
@given(
    st.lists(st.tuples(st.sampled_from(NAMES), header_values)),
    st.floats(min_value=-1e12, max_value=1e12) | st.none(),
)
def test_reset_after_never_raises_on_the_real_names(headers, now):
    encoded = [(name, value.encode("utf-8", errors="surrogatepass")) for name, value in headers]
    assert in_range(reset_after(encoded, now=now))


@settings(deadline=None, max_examples=200)
@given(st.datetimes(), st.sampled_from(["GMT", "+0000", "-0000", "+1400", "-1200", "EST", ""]))
def test_reset_after_never_raises_on_dates(when, zone):
    date = when.strftime("%a, %d %b %Y %H:%M:%S ") + zone
    assert in_range(reset_after([(b"retry-after", date.encode())], now=NOW))


@settings(deadline=None, max_examples=200)
@given(st.binary())
def test_quota_exhausted_never_raises(body):
    assert quota_exhausted(body) in (True, False)
