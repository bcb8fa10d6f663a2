"""A Chat Completions SSE stream as an Anthropic Messages event stream (SPEC §4; issue 7).

`StreamTranslator` is pure: fed upstream bytes as they arrive, it returns the
Anthropic SSE bytes to send at once, holding back at most one incomplete upstream
event. The output is the sequence the `anthropic` SDK accumulates
(`lib/streaming/_messages.py`):

    message_start, ping,
    (content_block_start, content_block_delta*, content_block_stop)*,
    message_delta, message_stop

Decisions:

- `message_start` goes out with the first upstream chunk (its `id` names the
  message); its `input_tokens` is the caller's estimate (0 by default), since OpenAI
  reports usage only in its last chunk. `message_delta` therefore waits for the end
  of the stream (`[DONE]` or `finish()`) and carries the final counts, including
  `input_tokens`, which the SDK lets overwrite the first value.
- A block is closed when the next one opens or at `finish_reason`, so blocks are
  sequential as Anthropic's are. OpenAI sends tool calls one after another by
  `tool_calls[].index`; a provider that interleaves them has each delta sent to its
  own block's index, which is where the SDK accumulates it.
- Tool arguments are relayed as `input_json_delta` exactly as they come; the SDK
  parses them as they grow. Nothing is buffered to validate them.
- Errors: an upstream `{"error": ...}` event (or `finish_reason: "error"`), an
  event that is not JSON, an event over `MAX_EVENT` bytes, or an upstream end
  with neither `finish_reason` nor `[DONE]` (the answer was cut) end the stream
  with one Anthropic `error` event.
  The open block is not closed first: Anthropic itself sends a bare `error`
  mid-stream, and the SDK raises on it whatever came before, whereas a
  `content_block_stop` would present a cut block as complete.
- Framing: LF or CRLF line ends, `:` comment lines, `event:`/`id:` fields
  (an `event: error` marks its data as an error). Lone-CR line ends are not read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from proxy.anthropic.response import message_id_of, new_tool_use_id, stop_of, usage_of

MAX_EVENT = 1 << 22  # bytes held for one upstream event before the stream is failed
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # built once: json.dumps with options builds one per call
# The per-chunk hot path (a text delta) is a template around the one encoded string.
_TEXT_DELTA = (
    'event: content_block_delta\ndata: {{"type":"content_block_delta","index":{},'
    '"delta":{{"type":"text_delta","text":{}}}}}\n\n'
)
_DONE = b"[DONE]"
_TEXT = "text"  # the open block's key when it is a text block; tool blocks use ("tool", key)
_Key = tuple[str, object]


def sse(event: str, payload: Mapping[str, Any]) -> bytes:
    """One Anthropic SSE event: `event: <type>` and compact JSON `data:`."""
    return f"event: {event}\ndata: {_ENCODER.encode(payload)}\n\n".encode()


class StreamTranslator:
    """Translates one Chat Completions SSE stream into Anthropic events, chunk by chunk.

    `model` is the name the client asked for, `message_id` overrides the id derived
    from the upstream's, `stop_sequences` are the request's (see
    `proxy.anthropic.response.stop_of`), `input_tokens` is the estimate sent in
    `message_start`. After the stream, `usage` is the OpenAI usage object seen
    (None when the upstream sent none), for cost accounting.
    """

    def __init__(
        self,
        *,
        model: str,
        message_id: str | None = None,
        stop_sequences: Sequence[str] | None = None,
        input_tokens: int = 0,
    ) -> None:
        self.model = model
        self.message_id = message_id
        self.stop_sequences = list(stop_sequences or ())
        self.input_tokens = input_tokens
        self.usage: dict[str, Any] | None = None
        self.done = False  # message_stop or error sent: nothing more goes out
        self._line: list[bytes] = []  # the upstream line in progress, in the pieces it came in
        self._line_size = 0
        self._data: list[bytes] = []  # data lines of the upstream event in progress
        self._held = 0  # bytes in _data
        self._error_event = False  # the event in progress was named `error`
        self._started = False
        self._index = -1  # index of the last block opened
        self._open: str | _Key | None = None
        self._tools: dict[object, int] = {}  # tool call key -> its block index
        self._last_tool: object = None
        self._finish: object = None
        self._finish_choice: Mapping[str, Any] = {}
        self._refused = False
        # Enough of the text's end to see a stop sequence the provider kept (stop_of rule 2).
        self._tail_length = max((len(s) for s in self.stop_sequences), default=0)
        self._tail = ""

    def feed(self, chunk: bytes) -> bytes:
        """Read one chunk of upstream bytes; returns the Anthropic bytes to send now."""
        if self.done:
            return b""
        out: list[bytes] = []
        if b"\n" in chunk:
            lines = (b"".join(self._line) + chunk).split(b"\n")
            last = lines.pop()
            self._line, self._line_size = [last], len(last)
            for line in lines:
                self._read_line(line[:-1] if line.endswith(b"\r") else line, out)
                if self.done:
                    return b"".join(out)
        else:  # the line goes on; its pieces are joined once it ends, as joining on each is quadratic
            self._line.append(chunk)
            self._line_size += len(chunk)
        if self._line_size + self._held > MAX_EVENT:
            out.append(self.fail("upstream event too large"))
        return b"".join(out)

    def finish(self) -> bytes:
        """The upstream ended: the bytes that end the Anthropic stream (nothing when it has ended)."""
        if self.done:
            return b""
        out: list[bytes] = []
        line = b"".join(self._line)
        self._line, self._line_size = [], 0
        if line:  # a last line with no line end
            self._read_line(line.removesuffix(b"\r"), out)
        if self._data and not self.done:  # a last event with no blank line after it
            self._read_line(b"", out)
        if not self.done:
            out.append(self._end() if self._finish is not None else self.fail("upstream ended mid-answer"))
        return b"".join(out)

    def fail(self, message: str, error_type: str = "api_error") -> bytes:
        """An Anthropic `error` event that ends the stream (nothing when it has ended)."""
        if self.done:
            return b""
        self.done = True
        self._line, self._data = [], []
        return sse("error", {"type": "error", "error": {"type": error_type, "message": message}})

    def _read_line(self, line: bytes, out: list[bytes]) -> None:
        if not line:
            if self._data:
                payload, is_error = b"\n".join(self._data), self._error_event
                self._data, self._held, self._error_event = [], 0, False
                self._read_event(payload, is_error, out)
            return
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"data":
            self._data.append(value)
            self._held += len(value)
        elif name == b"event":
            self._error_event = value == b"error"
        # Anything else: a comment (empty name, e.g. `: keep-alive`), `id:` or `retry:`, unused.

    def _read_event(self, payload: bytes, is_error: bool, out: list[bytes]) -> None:
        if payload.strip() == _DONE:
            out.append(self._end())
            return
        try:
            chunk = json.loads(payload.decode())  # faster than loads(bytes), which sniffs the encoding
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            out.append(self.fail("upstream sent an event that is not JSON"))
            return
        if not isinstance(chunk, dict):
            out.append(self.fail("upstream sent an event that is not a JSON object"))
        elif is_error or chunk.get("error"):  # OpenRouter sends its mid-stream errors with `choices` too
            out.append(self.fail(_error_message(chunk.get("error", chunk))))
        else:
            self._read_chunk(chunk, out)

    def _read_chunk(self, chunk: Mapping[str, Any], out: list[bytes]) -> None:
        usage = chunk.get("usage")
        if not isinstance(usage, dict):
            groq = chunk.get("x_groq")  # Groq's usage when include_usage was not asked
            usage = groq.get("usage") if isinstance(groq, Mapping) else None
        if isinstance(usage, dict):
            self.usage = usage
        if not self._started:
            out.append(self._start(chunk.get("id")))
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
                self._read_choice(choice, out)
                break

    def _read_choice(self, choice: Mapping[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta")
        delta = delta if isinstance(delta, Mapping) else {}
        if isinstance(content := delta.get("content"), str) and content:
            self._text(content, out)
        if isinstance(refusal := delta.get("refusal"), str) and refusal:
            self._refused = True
            self._text(refusal, out)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, Mapping):
                self._tool_call(call, out)
        if isinstance(legacy := delta.get("function_call"), Mapping):
            self._tool_call({"index": "function_call", "function": legacy}, out)
        if choice.get("finish_reason") == "error":  # OpenRouter: the provider failed mid-answer
            out.append(self.fail("upstream failed mid-answer"))
        elif choice.get("finish_reason") is not None:
            self._finish, self._finish_choice = choice["finish_reason"], choice
            self._close_block(out)

    def _text(self, text: str, out: list[bytes]) -> None:
        if self._open != _TEXT:
            self._open_block(_TEXT, {"type": "text", "text": ""}, out)
        out.append(_TEXT_DELTA.format(self._index, _ENCODER.encode(text)).encode())
        if self._tail_length:
            self._tail = (self._tail + text)[-self._tail_length :]

    def _tool_call(self, call: Mapping[str, Any], out: list[bytes]) -> None:
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        call_id = call.get("id")
        key = call.get("index")
        if not isinstance(key, int | str) or isinstance(key, bool):
            # No index (some providers): a new id is a new call, else it continues the last one.
            key = call_id if isinstance(call_id, str) and call_id else self._last_tool
        if key not in self._tools:
            name = function.get("name")
            block = {
                "type": "tool_use",
                "id": call_id if isinstance(call_id, str) and call_id else new_tool_use_id(),
                "name": name if isinstance(name, str) else "",
                "input": {},
            }
            self._open_block(("tool", key), block, out)
            self._tools[key], self._last_tool = self._index, key
        arguments = function.get("arguments")
        if isinstance(arguments, Mapping):  # a provider that sends the object itself
            arguments = json.dumps(arguments)
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            event = {"type": "content_block_delta", "index": self._tools[key], "delta": delta}
            out.append(sse("content_block_delta", event))

    def _open_block(self, key: str | _Key, block: Mapping[str, Any], out: list[bytes]) -> None:
        self._close_block(out)
        self._index += 1
        self._open = key
        out.append(
            sse("content_block_start", {"type": "content_block_start", "index": self._index, "content_block": block})
        )

    def _close_block(self, out: list[bytes]) -> None:
        if self._open is not None:
            self._open = None
            out.append(sse("content_block_stop", {"type": "content_block_stop", "index": self._index}))

    def _start(self, chat_id: object) -> bytes:
        self._started = True
        usage = usage_of(self.usage) if self.usage else {"input_tokens": self.input_tokens, "output_tokens": 0}
        message: dict[str, Any] = {
            "id": self.message_id or message_id_of(chat_id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return sse("message_start", {"type": "message_start", "message": message}) + sse("ping", {"type": "ping"})

    def _end(self) -> bytes:
        out = [] if self._started else [self._start(None)]
        self._close_block(out)
        stop_reason, stop_sequence = stop_of(
            "content_filter" if self._refused else self._finish,
            tool_use=bool(self._tools),
            text=self._tail,
            stop_sequences=self.stop_sequences,
            choice=self._finish_choice,
        )
        # Without an upstream usage object only output_tokens (required) is sent, so the SDK
        # keeps message_start's input_tokens rather than being told a made-up 0.
        usage: dict[str, int] = usage_of(self.usage) if self.usage else {"output_tokens": 0}
        delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        out.append(sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(sse("message_stop", {"type": "message_stop"}))
        self.done = True
        return b"".join(out)


def _error_message(error: object) -> str:
    # The upstream's own words when it gave any; OpenAI's shape is {"error": {"message": ...}}.
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return str(error["message"])
    return error if isinstance(error, str) and error else "upstream error"
