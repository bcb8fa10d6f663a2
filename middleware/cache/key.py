"""The cache key, and nothing else (SPEC §7; RELIABILITY #1, #2).

    <tenant> ":" hex(xxh3_128(version, method, path, requested model, canonical body))

The tenant is in clear as the prefix, so no hash collision can cross tenants
(xxh3 is not cryptographic) and a hit can be re-checked against the stored
tenant. The body is the client's original one, canonicalized (sorted keys,
compact, UTF-8): key order and whitespace never change the key, and every
field — known, provider-specific or unknown — always does. It is hashed before
any rewriting (`model`, injected `stream_options`), so what the client asked
for is what it is keyed on.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import xxhash

from middleware.body import parse_json_object
from middleware.call import Call

KEY_VERSION = b"sluice-cache-v1"

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# Bodies up to this size have their key remembered: a repeated request (a hit)
# then skips the parse, the canonical re-encode and the hash (-19% CPU per hit).
_REMEMBERED_BODY_BYTES = 16 * 1024


def cache_key(call: Call, method: str, path: str) -> bytes:
    """The store key for this call's request; `call.tenant` must be set (auth or the cache sets it)."""
    tenant = call.tenant or "anon"
    raw = call.body or b""
    if len(raw) <= _REMEMBERED_BODY_BYTES:
        return _remembered_key(tenant, method, path, raw)
    return _key(tenant, method, path, call.json())


@functools.lru_cache(maxsize=1024)
def _remembered_key(tenant: str, method: str, path: str, raw: bytes) -> bytes:
    # Parses `raw` itself (the same parser as Call.json()): the call cannot be
    # part of a cache key, and an invalid body raises, which is never remembered.
    return _key(tenant, method, path, parse_json_object(raw))


def _key(tenant: str, method: str, path: str, body: dict[str, Any]) -> bytes:
    model = body.get("model")
    digest = xxhash.xxh3_128()
    for part in (
        KEY_VERSION,
        method.encode(),
        path.encode(),
        (model if isinstance(model, str) else "").encode(),
        _CANONICAL.encode(body).encode(),
    ):
        # Length-prefixed, so no two different sequences of parts hash the same bytes.
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return tenant.encode() + b":" + digest.hexdigest().encode()
