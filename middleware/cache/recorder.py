"""Recorder: passes a response through untouched while keeping a bounded copy to store."""

from __future__ import annotations

from middleware.cache.completeness import messages_stream_is_complete, stream_is_complete
from middleware.call import Call
from middleware.types import Message, Send

EVENT_STREAM = "text/event-stream"


class Recorder:
    """Wraps `send`; after the call, says whether what went out may be stored and yields its bytes."""

    def __init__(self, send: Send, max_bytes: int) -> None:
        self._send = send
        self._max_bytes = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0
        self.status = 0
        self.content_type = ""
        self._cookie = False
        self.complete = False

    async def send(self, message: Message) -> None:
        """Record, then pass on."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
            for name, value in message.get("headers", ()):
                if name == b"content-type":
                    self.content_type = value.decode("latin-1")
                elif name == b"set-cookie":
                    self._cookie = True
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            self._size += len(chunk)
            if self._size <= self._max_bytes:
                self._chunks.append(chunk)
            if not message.get("more_body", False):
                self.complete = True
        await self._send(message)

    @property
    def body(self) -> bytes:
        """Every byte sent, when it fit the bound."""
        return b"".join(self._chunks)

    def storable(self, call: Call, *, usage_expected: bool, messages: bool = False) -> bool:
        """A complete 200, no cookie, within the bound, nothing failed, the client still there."""
        if not self.complete or self.status != 200 or self._cookie or self._size > self._max_bytes:
            return False
        if call.error is not None or call.client_gone:
            return False
        if self.content_type.split(";")[0].strip() == EVENT_STREAM:
            if messages:  # an Anthropic Messages stream (/v1/messages)
                return messages_stream_is_complete(self.body)
            return stream_is_complete(self.body, usage_expected=usage_expected)
        return True
