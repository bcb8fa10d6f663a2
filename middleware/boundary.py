"""ErrorMiddleware: the outermost layer; every call gets a request id and every failure the contract's shape."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

from middleware.call import Call
from middleware.errors import SluiceError, anthropic_error_body, send_error
from middleware.headers import REQUEST_ID, SLUICE_ATTEMPTS, SLUICE_CACHE, new_request_id, request_id
from middleware.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("sluice")


def _no_scrub(text: str) -> str:
    return text


MESSAGES_PATH = "/v1/messages"  # the Anthropic-shaped API: its errors are Anthropic-shaped too


class ErrorMiddleware:
    """Makes the Call, stamps X-Request-Id and X-Sluice-Cache on every response, and answers errors.

    A SluiceError raised before the response started becomes its status and
    OpenAI-shaped body; anything else becomes a bare 500 with no stack trace
    (the trace goes to the log, through `scrub`, so no secret reaches it).
    After the response started the status can no longer change, so the
    exception is re-raised and the server drops the connection: a client
    then sees a broken response, never a clean-looking truncated one.
    """

    def __init__(self, app: ASGIApp, scrub: Callable[[str], str] = _no_scrub) -> None:
        self.app = app
        self.scrub = scrub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        call = Call.of(scope)
        started = False

        async def send_with_call_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                call.status = message["status"]
                headers = [*message.get("headers", ()), (REQUEST_ID, call.request_id.encode())]
                if not call.cache_header_sent:
                    headers.append((SLUICE_CACHE, call.cache_status.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            call.request_id = request_id(scope)
            await self.app(scope, receive, send_with_call_headers)
        except SluiceError as exc:
            if not call.request_id:
                call.request_id = new_request_id()  # its own X-Request-Id was refused
            call.error = exc.message
            if started:
                raise
            if call.route is not None:  # a routed call says how many upstream tries it made, even 0
                exc.headers = [*exc.headers, (SLUICE_ATTEMPTS, str(call.attempts).encode())]
            # The Anthropic Messages API gets errors in its own shape (SPEC §6).
            anthropic = scope["path"].startswith(MESSAGES_PATH)
            await send_error(send_with_call_headers, exc, body=anthropic_error_body(exc) if anthropic else None)
        except Exception:
            logger.error("unhandled error in request %s: %s", call.request_id, self.scrub(traceback.format_exc()))
            if started:
                raise
            call.error = "internal error"
            error = SluiceError("internal error in the gateway")
            anthropic = scope["path"].startswith(MESSAGES_PATH)
            await send_error(send_with_call_headers, error, body=anthropic_error_body(error) if anthropic else None)
