"""Which providers receive the client's `stream_options` (SPEC §2, RELIABILITY.md 22).

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


def sent(data: dict[str, Any], target: Target, rejecting: Collection[str]) -> bool:
    """Whether the upstream body for `target` carries the client's `stream_options` (from its parsed `data`)."""
    return FIELD in data and not withheld(target, rejecting)


def refused(status: int, body: bytes) -> bool:
    """Whether an upstream error answer refuses `stream_options`: a 400 whose (scrubbed) body names it.

    Only a 400: a provider that fails for another reason (auth, rate limit, overload)
    would fail the same way without the field, so retrying would only add load.
    """
    return status == 400 and _NAME in body
