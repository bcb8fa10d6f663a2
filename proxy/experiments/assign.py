"""Which variant of an A/B route serves a subject: a stable hash, so the same subject always gets the same one.

The subject is `X-Sluice-Subject`, else the body's `user` (Chat Completions) or
`metadata.user_id` (Anthropic Messages), else the gateway key id. The hash is
xxh64 of the route name and the subject: the same on every replica and after
every restart, and independent between routes (a subject's arm in one test says
nothing of its arm in another). Weights split the hash space in proportion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import xxhash

from middleware.call import Variant

_SPACE = float(2**64)


def subject_of(header: bytes | None, body: Mapping[str, Any], key_id: str | None) -> str:
    """Who is being assigned: the header, else the body's user, else the key id ("anonymous" when none)."""
    if header:
        return header.decode("latin-1")
    user = body.get("user")
    if isinstance(user, str) and user:
        return user
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(user_id, str) and user_id:
        return user_id
    return key_id or "anonymous"


def pick(route: str, subject: str, variants: Sequence[Variant]) -> Variant:
    """The subject's variant: a stable point in [0, total weight) falls in one variant's share."""
    total = sum(max(v.weight, 0.0) for v in variants)
    point = xxhash.xxh64_intdigest(f"{route}\x00{subject}".encode()) / _SPACE * total
    for variant in variants:
        share = max(variant.weight, 0.0)
        if point < share:
            return variant
        point -= share
    return next(v for v in reversed(variants) if v.weight > 0)  # float rounding at the very end
