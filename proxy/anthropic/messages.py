"""MessagesMiddleware: `/v1/messages` to every provider, per try (SPEC §4, issue 7).

It sits inside the strategy, so each try decides for its own target:
- Anthropic: the call goes to Anthropic's Messages API as sent (the forwarder
  sends `x-api-key` and `anthropic-*` headers there, see `proxy.upstream_headers`).
- any other provider: the body is translated to Chat Completions
  (`request.to_chat`; what cannot be translated is a 400 naming the field), sent
  to `/chat/completions`, and the answer translated back — a JSON answer whole
  (`response.to_message`), a stream event by event as it arrives
  (`stream.StreamTranslator`), an error into Anthropic's shape.

`/v1/messages/count_tokens` goes to Anthropic natively; for other targets the
gateway answers an estimate itself (`token_estimate.estimate_prompt_tokens`, marked by
`X-Sluice-Estimate: true`), since Chat Completions has no such endpoint.
"""

from __future__ import annotations

import json

from middleware.call import Call
from middleware.errors import InvalidRequest, NotFound
from middleware.headers import content_type_is, with_header
from middleware.types import ASGIApp, Message, Receive, Scope, Send
from proxy.anthropic.errors import from_openai_error
from proxy.anthropic.request import Capabilities, to_chat
from proxy.anthropic.request_fields import Untranslatable
from proxy.anthropic.response import to_message
from proxy.anthropic.stream import StreamTranslator
from proxy.token_estimate import estimate_prompt_tokens
from proxy.upstream_headers import ANTHROPIC

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
CHAT = "/v1/chat/completions"
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class MessagesMiddleware:
    """Translates `/v1/messages` tries for non-Anthropic targets; everything else passes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"] if scope["type"] == "http" else ""
        call = Call.of(scope) if path.startswith(MESSAGES) else None
        target = call.target if call is not None else None
        if call is None or target is None or target.provider == ANTHROPIC:
            await self.app(scope, receive, send)
            return
        if path == COUNT_TOKENS:
            await _estimate(call, send)
            return
        if path != MESSAGES:
            raise NotFound(f"{path} is served by Anthropic only; {target.name} has no such API")
        asked = call.json()
        try:
            chat = to_chat(asked, target_supports=Capabilities())
        except Untranslatable as exc:
            message = f"{exc.param}: {exc.reason} (when translating for {target.name})"
            raise InvalidRequest(message, param=exc.param) from None
        model = str(asked.get("model"))
        stops = asked.get("stop_sequences")
        answer = _Answer(send, model, stops if isinstance(stops, list) else None, estimate_prompt_tokens(asked))
        child = {**scope, "path": CHAT, "raw_path": CHAT.encode()}
        with call.sending(_ENCODER.encode(chat).encode(), chat):
            await self.app(child, receive, answer.send)
            call.usage = answer.usage or call.usage


class _Answer:
    """Wraps `send`: a Chat Completions answer goes out as an Anthropic one."""

    def __init__(self, send: Send, model: str, stop_sequences: list[str] | None, input_tokens: int) -> None:
        self._send = send
        self._model = model
        self._stops = stop_sequences
        self._input_tokens = input_tokens
        self._start: Message | None = None
        self._held: list[bytes] = []
        self._stream: StreamTranslator | None = None
        self.usage: dict[str, object] | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._start = message
            if message["status"] < 300 and _is_sse(message):
                self._stream = StreamTranslator(
                    model=self._model, stop_sequences=self._stops, input_tokens=self._input_tokens
                )
                await self._send({**message, "headers": _without_length(message)})
            return
        if message["type"] != "http.response.body":
            await self._send(message)
            return
        chunk: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self._stream is not None:
            await self._relay_stream(chunk, more)
            return
        self._held.append(chunk)
        if not more:
            await self._answer_whole(b"".join(self._held))

    async def _relay_stream(self, chunk: bytes, more: bool) -> None:
        stream = self._stream
        assert stream is not None
        out = stream.feed(chunk)
        if not more:
            out += stream.finish()
            self.usage = stream.usage
        if out or not more:  # an empty chunk in a chunked response would end it
            await self._send({"type": "http.response.body", "body": out, "more_body": more})

    async def _answer_whole(self, body: bytes) -> None:
        start = self._start
        assert start is not None
        status: int = start["status"]
        translated = from_openai_error(status, body) if status >= 400 else self._message(body)
        headers = with_header(start.get("headers", []), b"content-length", str(len(translated)).encode())
        await self._send({**start, "headers": headers})
        await self._send({"type": "http.response.body", "body": translated, "more_body": False})

    def _message(self, body: bytes) -> bytes:
        try:
            chat = json.loads(body)
        except ValueError:
            chat = None
        if not isinstance(chat, dict):
            return from_openai_error(502, b"the provider's answer was not a JSON object")
        usage = chat.get("usage")
        self.usage = usage if isinstance(usage, dict) else None
        return _ENCODER.encode(to_message(chat, model=self._model, stop_sequences=self._stops)).encode()


def _is_sse(start: Message) -> bool:
    return content_type_is(start.get("headers", ()), b"text/event-stream")


def _without_length(start: Message) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in start.get("headers", ()) if k != b"content-length"]


async def _estimate(call: Call, send: Send) -> None:
    body = _ENCODER.encode({"input_tokens": estimate_prompt_tokens(call.json())}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-sluice-estimate", b"true"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
