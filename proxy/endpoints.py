"""The gateway's own small endpoints: /healthz, /readyz, /v1/models, and the 404 for anything else."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from middleware.errors import NotFound, send_error
from middleware.types import ASGIApp, Receive, Scope, Send
from proxy.routing import Router


async def _send_json(send: Send, payload: Any, status: int = 200) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def healthz(scope: Scope, receive: Receive, send: Send) -> None:
    """Alive: the process answers."""
    await _send_json(send, {"status": "ok"})


def readyz(redis_state: Callable[[], str]) -> ASGIApp:
    """Ready once the config is loaded (it is, if this runs); Redis is reported, never required."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await _send_json(send, {"status": "ready", "redis": redis_state()})

    return endpoint


def models(router: Router) -> ASGIApp:
    """GET /v1/models: every routable name in the OpenAI list shape, computed once."""
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": name.partition("/")[0] if "/" in name else "sluice"}
        for name in router.routable_names()
    ]
    payload = {"object": "list", "data": data}

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await _send_json(send, payload)

    return endpoint


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    """Any path the gateway does not serve: a 404 in the OpenAI error shape."""
    if scope["type"] != "http":
        return
    await send_error(send, NotFound(f"no such endpoint: {scope['method']} {scope['path']}", param=None))
