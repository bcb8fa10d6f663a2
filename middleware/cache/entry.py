"""A stored response: encoded to bytes for any store, decoded defensively (a bad entry is a miss)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

_MAGIC = b"SLC1"


@dataclass(frozen=True, slots=True)
class Entry:
    """What a hit needs to answer: who it belongs to, who produced it, and the exact bytes."""

    tenant: str
    provider: str
    model: str
    content_type: str
    stored_at: float  # wall clock (time.time()), so Age is right across replicas
    body: bytes
    # The answer's token usage, for the cost a hit saves; kept apart from the body because a
    # stream's usage event may have been removed before the client (and the store) saw it.
    usage: dict[str, Any] | None = None


def encode(entry: Entry) -> bytes:
    """MAGIC, a 4-byte header length, the header as JSON, then the body bytes untouched."""
    header = json.dumps(
        {
            "tenant": entry.tenant,
            "provider": entry.provider,
            "model": entry.model,
            "content_type": entry.content_type,
            "stored_at": entry.stored_at,
            "usage": entry.usage,
        },
        separators=(",", ":"),
    ).encode()
    return _MAGIC + len(header).to_bytes(4, "big") + header + entry.body


# Small entries are decoded once: Entry is frozen, so a hit can share it (-10% CPU per hit).
_REMEMBERED_ENTRY_BYTES = 16 * 1024


def decode(data: bytes) -> Entry | None:
    """The entry, or None when the bytes are not one this version wrote."""
    if len(data) <= _REMEMBERED_ENTRY_BYTES:
        return _decode_remembered(data)
    return _decode(data)


@functools.lru_cache(maxsize=256)
def _decode_remembered(data: bytes) -> Entry | None:
    return _decode(data)


def _decode(data: bytes) -> Entry | None:
    if not data.startswith(_MAGIC) or len(data) < 8:
        return None
    size = int.from_bytes(data[4:8], "big")
    try:
        header = json.loads(data[8 : 8 + size])
        return Entry(
            tenant=str(header["tenant"]),
            provider=str(header["provider"]),
            model=str(header["model"]),
            content_type=str(header["content_type"]),
            stored_at=float(header["stored_at"]),
            body=data[8 + size :],
            usage=usage if isinstance(usage := header.get("usage"), dict) else None,
        )
    except (ValueError, KeyError, TypeError):
        return None
