"""When may a rate-limited target be tried again? Parsing a 429's headers and body (SPEC §8).

Pure functions, no I/O. Sources, best first:
- `retry-after-ms`: milliseconds, possibly fractional (OpenAI, Azure);
- `retry-after`: delta-seconds (possibly fractional) or an HTTP-date (RFC 9110 §10.2.3);
- the longest of `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens`: Go-style
  durations (`1s`, `6m0s`, `20ms`, `1h2m3.5s`) or bare seconds (`30`, `1.5`).
A value that does not parse (malformed, negative, non-finite, absurdly long) is ignored and the
next source is tried; nothing here raises on what an upstream sends.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC
from email.utils import parsedate_to_datetime

# An upper bound on any wait: a provider saying "come back next week" still gets probed hourly,
# so a wrong or stale reset (or a quota topped up early) never parks a target for longer.
MAX_RESET_S = 3600.0

RETRY_AFTER_MS = b"retry-after-ms"
RETRY_AFTER = b"retry-after"
RESET_REQUESTS = b"x-ratelimit-reset-requests"
RESET_TOKENS = b"x-ratelimit-reset-tokens"
_SOURCES = frozenset({RETRY_AFTER_MS, RETRY_AFTER, RESET_REQUESTS, RESET_TOKENS})

# No real number or duration is this long; longer values are treated as absurd and ignored.
_MAX_VALUE_CHARS = 64
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
# Go's time.ParseDuration units ("ms" before "m", both micro signs), as seconds.
_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_COMPONENT = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)"
_DURATION = re.compile(f"(?:{_COMPONENT})+")
_COMPONENTS = re.compile(_COMPONENT)

QUOTA_EXHAUSTED = "insufficient_quota"


def reset_after(headers: Iterable[tuple[bytes, bytes]], now: float | None = None) -> float | None:
    """Seconds until the target that sent these 429 headers may be tried again, or None.

    `now` is the current wall-clock time (default `time.time()`), used only for an
    HTTP-date `Retry-After`. The result is within [0, MAX_RESET_S]; a past date gives 0.
    """
    values: dict[bytes, list[str]] = {}
    for name, value in headers:
        if (lowered := name.lower()) in _SOURCES:
            values.setdefault(lowered, []).append(_text(value))
    wait = _first(_milliseconds, values.get(RETRY_AFTER_MS, []))
    if wait is None:
        wait = _first(lambda text: _delay_or_date(text, now), values.get(RETRY_AFTER, []))
    if wait is None:
        resets = [_duration(text) for name in (RESET_REQUESTS, RESET_TOKENS) for text in values.get(name, [])]
        usable = [r for r in resets if r is not None]
        wait = max(usable) if usable else None
    return None if wait is None else min(max(wait, 0.0), MAX_RESET_S)


def quota_exhausted(body: bytes) -> bool:
    """Whether a 429 body is an OpenAI-style `insufficient_quota` error (it will not reset soon).

    Anything that is not such a JSON object (not JSON, another shape, another code) is False.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return False
    return QUOTA_EXHAUSTED in (error.get("code"), error.get("type"))


def _text(value: bytes) -> str:
    """A header value as text, without surrounding optional whitespace; bad UTF-8 never matches."""
    return value.decode("utf-8", errors="replace").strip(" \t")


def _first(parse: Callable[[str], float | None], texts: list[str]) -> float | None:
    """The first value that `parse` accepts, when a header was sent more than once."""
    for text in texts:
        if (parsed := parse(text)) is not None:
            return parsed
    return None


def _seconds(text: str) -> float | None:
    """A bare non-negative decimal number of seconds (no sign, exponent, `nan` or `inf`)."""
    if len(text) > _MAX_VALUE_CHARS or not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _milliseconds(text: str) -> float | None:
    """A bare non-negative decimal number of milliseconds, as seconds."""
    value = _seconds(text)
    return None if value is None else value / 1000.0


def _delay_or_date(text: str, now: float | None) -> float | None:
    """A `Retry-After` value: delta-seconds, else an HTTP-date."""
    seconds = _seconds(text)
    return seconds if seconds is not None else _until_date(text, now)


def _until_date(text: str, now: float | None) -> float | None:
    """Seconds from `now` until an HTTP-date (negative when it is past), or None if not a date."""
    if len(text) > _MAX_VALUE_CHARS:
        return None
    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:  # "-0000": RFC 5322's "UTC, but the zone is unknown"
            when = when.replace(tzinfo=UTC)
        wait = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return wait if math.isfinite(wait) else None


def _duration(text: str) -> float | None:
    """A Go duration (`6m0s`, `20ms`, `1h2m3.5s`) or bare seconds (`30`, `1.5`), as seconds."""
    if len(text) > _MAX_VALUE_CHARS:
        return None
    if _DURATION.fullmatch(text):
        total = sum(float(number) * _UNITS[unit] for number, unit in _COMPONENTS.findall(text))
        return total if math.isfinite(total) else None
    return _seconds(text)
