"""Attempt: one try at one target, its response start held until it is known to be worth sending.

A strategy runs the inside once per target with a fresh Attempt as `send`. The
start is held until the first body byte (or the end of a body). At that point:
- a retriable status, or an SSE stream whose first event is an error, means the
  attempt failed and nothing reached the client: the strategy may try another
  target (what came is kept, bounded, in case it is the answer to relay);
- anything else commits: the held start and the body go out, and the rest
  streams straight through.
"""

from __future__ import annotations

from middleware.types import Headers, Message, Send

# SPEC §8: fall back on these; 400/413/422 mean "your request is wrong" and are returned as sent.
RETRIABLE_STATUSES = frozenset({401, 403, 404, 408, 409, 429, *range(500, 600)})
_KEPT_BYTES = 64 * 1024


class Attempt:
    """Wraps `send` for one try; after the inner app returns, says whether it committed or failed."""

    def __init__(self, send: Send, retriable: frozenset[int] = RETRIABLE_STATUSES) -> None:
        self._send = send
        self._retriable = retriable
        self.start: Message | None = None
        self.committed = False
        self.failed = False
        self._kept: list[bytes] = []
        self._kept_size = 0
        self.complete = False

    @property
    def status(self) -> int | None:
        """The status the target answered with, if it answered."""
        return self.start["status"] if self.start is not None else None

    @property
    def headers(self) -> Headers:
        """The held response headers (empty when there was no answer)."""
        return list(self.start.get("headers", ())) if self.start is not None else []

    @property
    def body(self) -> bytes | None:
        """The failed answer's body, if it was complete and small enough to relay."""
        return b"".join(self._kept) if self.complete and self._kept_size <= _KEPT_BYTES else None

    async def send(self, message: Message) -> None:
        """The `send` the inner app is given."""
        if self.committed:
            await self._send(message)
            return
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self._send(message)
            return
        chunk: bytes = message.get("body", b"")
        if not self.failed and not self._fails(chunk):
            self.committed = True
            await self._send(self.start)
            await self._send(message)
            return
        self.failed = True
        self._keep(chunk, more=message.get("more_body", False))

    def _fails(self, first_chunk: bytes) -> bool:
        assert self.start is not None
        if self.start["status"] in self._retriable:
            return True
        # A 200 stream whose first event is an error: nothing useful was sent yet.
        return first_chunk.startswith(b"data:") and first_chunk[5:].lstrip().startswith(b'{"error"')

    def _keep(self, chunk: bytes, *, more: bool) -> None:
        self._kept_size += len(chunk)
        if self._kept_size <= _KEPT_BYTES:
            self._kept.append(chunk)
        if not more:
            self.complete = True

    async def relay(self) -> None:
        """Send the held failed answer as it came (when nothing better is left to try)."""
        body = self.body
        assert self.start is not None
        assert body is not None
        await self._send(self.start)
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
