"""Token usage from an upstream answer, found by a cheap scan, never by parsing every chunk (SPEC §10).

- A JSON answer: the last `"usage":` key whose value is an object, decoded from
  there (`usage_in_json`).
- An SSE stream: `StreamUsage` looks only at complete events that contain the
  bytes `"usage"` (a C-speed substring test per chunk) and decodes those. When
  the gateway itself asked for usage (`stream_options.include_usage`, injected
  because the client did not), it also removes the extra usage event (the one
  whose `choices` is empty), so the client gets the events it asked for.
  In that mode only complete events are passed on (an event split across
  reads is held until its end), which is what makes removing one possible.
"""

from __future__ import annotations

import json
import re
from typing import Any

_USAGE = b'"usage"'
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_DECODER = json.JSONDecoder()
MAX_PARTIAL_EVENT = 1 << 20  # longer events are passed on as they come and not scanned


def usage_in_json(body: bytes) -> dict[str, Any] | None:
    """The `usage` object in a JSON answer (or one SSE event), or None when it has none."""
    end = len(body)
    while (at := body.rfind(_USAGE, 0, end)) != -1:
        end = at
        rest = body[at + len(_USAGE) :].lstrip()
        if not rest.startswith(b":"):
            continue
        rest = rest[1:].lstrip()
        if not rest.startswith(b"{"):
            continue  # "usage": null (every chunk of an include_usage stream but the last)
        try:
            value, _ = _DECODER.raw_decode(rest.decode("utf-8", "replace"))
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


class StreamUsage:
    """Watches a stream's bytes for its usage; with `strip`, also removes the extra usage event."""

    def __init__(self, *, strip: bool = False) -> None:
        self.strip = strip
        self.usage: dict[str, Any] | None = None
        self._partial = b""  # the event in progress after the last complete one

    def feed(self, chunk: bytes) -> bytes:
        """Look at one chunk; returns the bytes to pass on (the chunk itself unless stripping)."""
        data = self._partial + chunk if self._partial else chunk
        end = _last_event_end(data)
        complete, rest = data[:end], data[end:]
        if _USAGE in complete:
            complete = self._take(complete)
        if self.strip:
            self._partial = rest
            return complete
        self._partial = rest if len(rest) <= MAX_PARTIAL_EVENT else b""
        return chunk

    def finish(self) -> bytes:
        """The stream ended: what is still held (an event with no blank line after it), looked at too."""
        rest, self._partial = self._partial, b""
        if _USAGE in rest:
            rest = self._take(rest)
        return rest if self.strip else b""

    def _take(self, events: bytes) -> bytes:
        parts = _EVENT_END.split(events)
        separators = _EVENT_END.findall(events)
        kept: list[bytes] = []
        for index, event in enumerate(parts):
            separator = separators[index] if index < len(separators) else b""
            if _USAGE in event and (usage := usage_in_json(event)) is not None:
                # Merged, not replaced: Anthropic reports input tokens in message_start
                # and output tokens in message_delta; OpenAI sends one usage object.
                self.usage = usage if self.usage is None else {**self.usage, **usage}
                if self.strip and _EMPTY_CHOICES.search(event):
                    continue  # the event the gateway asked for, not the client
            kept.append(event + separator)
        return b"".join(kept)


def _last_event_end(data: bytes) -> int:
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf != -1 else 0, crlf + 4 if crlf != -1 else 0)
