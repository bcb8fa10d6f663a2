"""Attempt: one try at one target, its response start held until it is known to be worth sending.

A strategy runs the inside once per target with a fresh Attempt as `send`. The
start is held until the first body byte (or the end of a body). At that point:
- a retriable status, or an SSE stream whose first event is an error, means the
  attempt failed and nothing reached the client: the strategy may try another
  target (what came is kept, bounded, in case it is the answer to relay);
- anything else commits: the held start and the body go out, and the rest
  streams straight through.

A fallback's attempt (`until="json_body"`) holds a JSON body until its end, so a
body cut halfway (the provider's connection dropped after its 200) is a failed
try the strategy can move on from, not a 502 to the client: nothing had reached
it. A racer's attempt (`until="content"`) holds longer, so that only a real
answer wins a race (SPEC §8): an SSE stream until its first chunk that is more
than comments (keep-alives), a plain body until its end; and it commits only if
`may_commit()` says it is the first to get there. Either holds at most
`HOLD_BYTES`, then commits (a longer body streams on as it comes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from middleware.headers import content_type_is
from middleware.types import Headers, Message, Send

# SPEC §8: fall back on these; 400/413/422 mean "your request is wrong" and are returned as sent.
RETRIABLE_STATUSES = frozenset({401, 403, 404, 408, 409, 429, *range(500, 600)})
_KEPT_BYTES = 64 * 1024
HOLD_BYTES = 4 * 1024 * 1024  # what an attempt holds before its commit point, at most


class LostRace(Exception):
    """Raised into a racer that reached its commit point after another racer had won."""


class Attempt:
    """Wraps `send` for one try; after the inner app returns, says whether it committed or failed."""

    def __init__(
        self,
        send: Send,
        retriable: frozenset[int] = RETRIABLE_STATUSES,
        *,
        until: Literal["first_byte", "json_body", "content"] = "first_byte",
        may_commit: Callable[[], bool] | None = None,
    ) -> None:
        self._send = send
        self._retriable = retriable
        self._until = until
        self._may_commit = may_commit
        self.start: Message | None = None
        self.committed = False
        self.failed = False
        self.ended = False  # the last body message went out
        self._kept: list[bytes] = []
        self._kept_size = 0
        self._early: list[bytes] = []  # held before the commit point
        self._early_size = 0
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
            self.ended = message["type"] == "http.response.body" and not message.get("more_body", False)
            await self._send(message)
            return
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self._send(message)
            return
        chunk: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self.failed or self._fails(b"".join((*self._early, chunk)) if self._early else chunk):
            self.failed = True
            self._keep(chunk, more=more)
            return
        if more and self._holds(chunk):
            self._early.append(chunk)
            self._early_size += len(chunk)
            return
        if self._may_commit is not None and not self._may_commit():
            raise LostRace
        self.committed = True
        await self._send(self.start)
        if self._early:
            chunk = b"".join((*self._early, chunk))
            self._early.clear()
        self.ended = not more
        await self._send({"type": "http.response.body", "body": chunk, "more_body": more})

    def _holds(self, chunk: bytes) -> bool:
        """Still short of the commit point (more of the body is coming, and less than `HOLD_BYTES` is held)."""
        if self._until == "first_byte" or self._early_size + len(chunk) > HOLD_BYTES:
            return False
        if self._is_sse():  # a racer waits for content; a fallback's stream goes out at its first byte
            lines = b"".join((*self._early, chunk)).splitlines()
            return self._until == "content" and all(not line or line.startswith(b":") for line in lines)
        return self._until == "content" or self._is_json()

    def _is_json(self) -> bool:
        return content_type_is(self.headers, b"application/json")

    def _is_sse(self) -> bool:
        return content_type_is(self.headers, b"text/event-stream")

    def _fails(self, first_chunk: bytes) -> bool:
        assert self.start is not None
        if self.start["status"] in self._retriable:
            return True
        if first_chunk.startswith(b":"):  # keep-alive comments before the first event
            first_chunk = b"\n".join(x for x in first_chunk.splitlines() if x and not x.startswith(b":"))
        # A 200 stream whose first event is an error: nothing useful was sent yet
        # (OpenAI's `data: {"error": ...}`, or Anthropic's `event: error`).
        if first_chunk.startswith(b"event:"):
            return first_chunk[6:].lstrip().startswith(b"error")
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
