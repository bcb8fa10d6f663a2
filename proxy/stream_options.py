"""Which providers receive `stream_options`, and when the gateway adds it (SPEC §2, §10, RELIABILITY.md 22).

For cost accounting the gateway asks for usage on every stream whose client did
not (`include_usage`), where the provider accepts the field; `proxy.usage`
then removes the extra usage event so the client sees what it asked for.

A provider configured `stream_options = false` never receives the field. A custom
provider may reject it without being configured so: its 400 naming the field is held
back, the call gets one retry without it, and the forwarder remembers the provider
(see `Forwarder.rejects_stream_options`), so its later calls go without it at once.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from middleware.call import Target

FIELD = "stream_options"
_NAME = FIELD.encode()


def withheld(target: Target, rejecting: Collection[str]) -> bool:
    """Whether `target`'s provider must not receive `stream_options`: configured so, or learned to reject it."""
    return not target.stream_options or target.provider in rejecting


# Only these APIs take `stream_options`; another path's body is never given one.
USAGE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


def injected(
    data: dict[str, Any], target: Target, rejecting: Collection[str], path: str = "/v1/chat/completions"
) -> bool:
    """Whether the gateway adds `include_usage` for `target`: a stream whose client did not ask for usage."""
    if path not in USAGE_PATHS or data.get("stream") is not True or withheld(target, rejecting):
        return False
    options = data.get(FIELD)
    return not (isinstance(options, dict) and options.get("include_usage") is True)


def with_usage(data: dict[str, Any]) -> dict[str, Any]:
    """`data` asking for usage on its stream, keeping any other `stream_options` the client set."""
    options = data.get(FIELD)
    return {**data, FIELD: {**(options if isinstance(options, dict) else {}), "include_usage": True}}


def sent(data: dict[str, Any], target: Target, rejecting: Collection[str], path: str = "/v1/chat/completions") -> bool:
    """Whether the upstream body for `target` carries `stream_options` (the client's, or the gateway's)."""
    return (FIELD in data or injected(data, target, rejecting, path)) and not withheld(target, rejecting)


def refused(status: int, body: bytes) -> bool:
    """Whether an upstream error answer refuses `stream_options`: a 400 whose (scrubbed) body names it.

    Only a 400: a provider that fails for another reason (auth, rate limit, overload)
    would fail the same way without the field, so retrying would only add load.
    """
    return status == 400 and _NAME in body
