"""Which headers cross the gateway, in each direction (SPEC §5, RELIABILITY #23, #25, #26)."""

from __future__ import annotations

from middleware.call import Call, Target
from middleware.headers import HOP_BY_HOP, REQUEST_ID, SLUICE_ATTEMPTS, SLUICE_MODEL, SLUICE_PROVIDER
from middleware.types import Headers, Scope

# Never sent upstream: hop-by-hop, what the client used to reach *us* (its
# gateway key, Host, proxy hints), and what aiohttp sets itself.
_NOT_FORWARDED = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"authorization",
    b"x-api-key",
    b"cookie",
    b"accept-encoding",
    b"forwarded",
    b"x-real-ip",
    REQUEST_ID,
}
_NOT_FORWARDED_PREFIXES = (b"x-forwarded-", b"x-sluice-")

# Never relayed back: hop-by-hop, and what the gateway sets itself. An
# upstream's Set-Cookie is meant for the gateway's connection, not for one
# tenant's client, so it is dropped too.
_NOT_RELAYED = HOP_BY_HOP | {b"date", b"server", b"set-cookie"}


ANTHROPIC = "anthropic"
ANTHROPIC_VERSION = "2023-06-01"  # sent when the client did not say which version it speaks


def native_messages(scope: Scope, target: Target) -> bool:
    """A `/v1/messages` call going to Anthropic itself, as sent (not translated) (SPEC §4)."""
    return target.provider == ANTHROPIC and scope["path"].startswith("/v1/messages")


def upstream_headers(scope: Scope, call: Call, target: Target) -> list[tuple[str, str]]:
    """The headers to send to `target`: the client's, filtered, plus auth, identity encoding and the request id.

    `anthropic-*` headers (version, beta flags) go only to Anthropic's own Messages API.
    """
    native = native_messages(scope, target)
    headers = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in scope["headers"]
        if name not in _NOT_FORWARDED
        and not name.startswith(_NOT_FORWARDED_PREFIXES)
        and (native or not name.startswith(b"anthropic-"))
    ]
    if native and not any(name == "anthropic-version" for name, _ in headers):
        headers.append(("anthropic-version", ANTHROPIC_VERSION))
    key = provider_key(call, target)
    if key is not None:
        if target.auth_style == "x-api-key" or native:
            headers.append(("x-api-key", key))
        else:
            headers.append(("authorization", f"Bearer {key}"))
    # Identity, so the bytes relayed are the bytes later layers can read
    # (usage, cache); LLM answers are small or streamed, so little is lost.
    headers.append(("accept-encoding", "identity"))
    headers.append(("x-request-id", call.request_id))
    return headers


def provider_key(call: Call, target: Target) -> str | None:
    """The key to present to `target`: its configured key, else the client's own.

    The client's key (pass-through mode) goes only to the provider the call
    first resolved to, never to a fallback or race target of another one.
    """
    if target.api_key is not None:
        return target.api_key
    return call.client_key_for(target)


def response_headers(raw: tuple[tuple[bytes, bytes], ...], call: Call, target: Target) -> Headers:
    """The upstream's response headers, filtered, plus who served the call.

    The provider's own X-Request-Id is kept as X-Upstream-Request-Id, so the
    client's id stays unique and the provider's is still there for support.
    """
    headers: Headers = []
    for name, value in raw:
        lower = name.lower()
        if lower in _NOT_RELAYED or lower.startswith(b"x-sluice-"):
            continue
        if lower == REQUEST_ID:
            headers.append((b"x-upstream-request-id", value))
            continue
        headers.append((lower, value))
    headers.append((SLUICE_PROVIDER, target.provider.encode()))
    headers.append((SLUICE_MODEL, target.model.encode()))
    headers.append((SLUICE_ATTEMPTS, str(call.attempts).encode()))
    return headers
