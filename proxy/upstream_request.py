"""What goes upstream for one target: the URL (only the config picks the host) and the body (SPEC §8)."""

from __future__ import annotations

import json
from collections.abc import Collection

from yarl import URL

from middleware.call import Call, Target
from middleware.errors import InvalidRequest, NotFound
from middleware.types import Scope
from proxy import stream_options


def upstream_url(scope: Scope, target: Target) -> URL:
    """The provider URL: the configured base URL plus the client's path after /v1, and its query.

    Only the config chooses the host; `.`/`..` segments are refused so a path
    cannot climb out of the provider's API prefix.
    """
    path: str = scope["path"]
    if "/." in path:
        segments = path.split("/")
        if "." in segments or ".." in segments:
            raise NotFound(f"path '{path}' is not a valid API path")
    raw_path: bytes = scope.get("raw_path") or path.encode()
    tail = raw_path[3:] if raw_path.startswith(b"/v1/") else raw_path
    query: bytes = scope.get("query_string", b"")
    text = target.base_url + tail.decode("latin-1")
    if query:
        text += "?" + query.decode("latin-1")
    return URL(text, encoded=True)


# Built once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def upstream_body(
    call: Call,
    target: Target,
    body: bytes,
    rejecting: Collection[str] = frozenset(),
    path: str = "/v1/chat/completions",
) -> bytes:
    """The body for `target`: its own model id, `stream_options` only where the provider takes it.

    `rejecting` names the providers learned to refuse the field (see `proxy.stream_options`).
    A stream whose client did not ask for usage asks for it (SPEC §10). When nothing
    changes, the client's bytes are returned as they are.
    """
    data = call.json()
    drop = stream_options.FIELD in data and stream_options.withheld(target, rejecting)
    inject = stream_options.injected(data, target, rejecting, path)
    if data.get("model") == target.model and not drop and not inject:
        return body
    data = {**data, "model": target.model}
    if drop:
        del data[stream_options.FIELD]
    if inject:
        data = stream_options.with_usage(data)
    try:
        return _ENCODER.encode(data).encode()
    except RecursionError:
        raise InvalidRequest("the JSON body is nested too deeply") from None
