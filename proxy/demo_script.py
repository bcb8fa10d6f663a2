"""The fake provider's script: what it does and says for one request.

A `Step` describes one response (status, extra headers, delays, stream faults). A `Script` is a
FIFO of steps consumed one per API request, then a `default` step for every later request.
`answer_json` and `stream_events` write the lines of a successful answer from a step.

When no step is queued, the request's `model` picks the behaviour, as in failoverbench, so a
route or fallback chain written in plain config can aim at a fault (RELIABILITY.md (c) 1).
A `provider/` prefix is ignored. Directives:

- `echo`, or any name not listed here: the script's default step (a normal, fast 200).
- `<status>` (e.g. `400`, `429`, `500`, `503`): that status with an OpenAI-shaped error body.
- `<status>-then-200:<k>`: fail with `<status>` k times for this model name, then succeed.
- `429-ra-<s>`: 429 with `Retry-After: <s>`.
- `429-ms-<ms>`: 429 with `retry-after-ms: <ms>`.
- `429-reset-<dur>`: 429 with `x-ratelimit-reset-requests: <dur>` (e.g. `6m0s`, `1.5s`).
- `quota-429`: 429 with the `insufficient_quota` error, which retrying will not fix.
- `slow-ttft-<s>`: wait `<s>` seconds (float) before the response start.
- `silent`: accept the request and never answer, until the client goes away.
- `headers-then-silent`: send the response headers, then nothing until the client goes away.
- `stall-after-<k>`: send k content chunks, then nothing until the client goes away.
- `cut-after-<k>`: send k content chunks, then drop the connection (no `[DONE]`).
- `bad-json`: 200 whose body (or first SSE data line) is not JSON.
- `redirect`: 307 to the cloud metadata address, which a gateway must not follow.
- `rejects-stream-options`: 400 naming `stream_options` when the body has that field, as some
  OpenAI-compatible servers answer; without it, as `echo` (RELIABILITY.md 22).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

CREATED = 1_700_000_000
"""The `created` of every answer: a constant, so answers are deterministic."""
METADATA_URL = "http://169.254.169.254/latest/meta-data/"

# (message, type, code) per status, after OpenAI's own error bodies.
_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}

STREAM_OPTIONS_ERROR: dict[str, Any] = {
    "error": {
        "message": "Unrecognized request argument supplied: stream_options",
        "type": "invalid_request_error",
        "param": "stream_options",
        "code": None,
    }
}

QUOTA_ERROR: dict[str, Any] = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """The OpenAI-shaped error JSON a provider sends with `status`."""
    default_message, kind, code = _ERRORS.get(status, (f"Upstream error {status}.", "server_error", None))
    return {"error": {"message": message or default_message, "type": kind, "param": None, "code": code}}


@dataclass
class Step:
    """How to answer one request; the defaults are a normal, fast 200."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (Retry-After, retry-after-ms, x-ratelimit-*, set-cookie, ...)."""
    error_body: dict[str, Any] | None = None
    """Body for a non-2xx answer; `None` derives it from the status."""
    first_byte_delay_s: float = 0.0
    """Wait this long before the response start (before the headers). `math.inf` never answers."""
    headers_then_delay_s: float = 0.0
    """After the headers, wait this long before the first body byte. `math.inf` never sends one."""
    chunks: int = 3
    """Content chunks of a stream; a JSON body is sent in as many writes."""
    chunk_gap_s: float = 0.0
    stall_after: int | None = None
    """After this many content chunks, send nothing more until the client goes away."""
    cut_after: int | None = None
    """After this many content chunks, drop the connection without ending the body."""
    invalid_json: bool = False
    content: str = "Hello from the fake provider."
    usage: bool = True
    """Report token usage (in the body, or in the usage chunk when the client asked for one)."""
    location: str | None = None
    """Location of a 3xx answer; `None` means the cloud metadata address."""

    def error_json(self) -> dict[str, Any]:
        """The error body to send for this step's non-2xx status."""
        return self.error_body if self.error_body is not None else error_body(self.status)


@dataclass
class Script:
    """Steps consumed one per API request (FIFO), then `default` for every later request."""

    steps: list[Step] = field(default_factory=list)
    default: Step = field(default_factory=Step)

    def next_step(self) -> Step | None:
        """Pop the next queued step, or `None` when the queue is empty."""
        return self.steps.pop(0) if self.steps else None


_STATUS = re.compile(r"[1-5]\d\d")
_THEN_200 = re.compile(r"([1-5]\d\d)-then-200:(\d+)")
_NUMBER = r"(\d+(?:\.\d+)?)"


def _fault(name: str) -> Step | None:
    """The step for a directive that does not depend on earlier requests."""
    status_429 = {
        f"429-ra-{_NUMBER}": "retry-after",
        f"429-ms-{_NUMBER}": "retry-after-ms",
        r"429-reset-([0-9hms.]+)": "x-ratelimit-reset-requests",
    }
    for pattern, header in status_429.items():
        if match := re.fullmatch(pattern, name):
            return Step(status=429, headers={header: match.group(1), "x-ratelimit-remaining-requests": "0"})
    if match := re.fullmatch(f"slow-ttft-{_NUMBER}", name):
        return Step(first_byte_delay_s=float(match.group(1)))
    if match := re.fullmatch(r"(stall|cut)-after-(\d+)", name):
        k = int(match.group(2))
        return Step(stall_after=k) if match.group(1) == "stall" else Step(cut_after=k)
    fixed = {
        "quota-429": Step(status=429, error_body=QUOTA_ERROR),
        "silent": Step(first_byte_delay_s=math.inf),
        "headers-then-silent": Step(headers_then_delay_s=math.inf),
        "bad-json": Step(invalid_json=True),
        "redirect": Step(status=307, location=METADATA_URL),
    }
    if name in fixed:
        return fixed[name]
    return Step(status=int(name)) if _STATUS.fullmatch(name) else None


def directive_step(model: str, seen: dict[str, int], req: dict[str, Any] | None = None) -> Step | None:
    """The step the model name asks for, or `None` for a plain model (use the default step).

    `seen` counts earlier requests per model name, for `<status>-then-200:<k>`; it is updated here.
    `req` is the request's JSON body, for `rejects-stream-options`.
    """
    name = model.rsplit("/", 1)[-1]
    if name == "terse":
        return Step(content="Hi.")
    if name == "judge":
        return Step(content=toy_verdict(req or {}))
    if name == "rejects-stream-options":
        has_field = req is not None and "stream_options" in req
        return Step(status=400, error_body=STREAM_OPTIONS_ERROR) if has_field else None
    if match := _THEN_200.fullmatch(name):
        count = seen.get(model, 0)
        seen[model] = count + 1
        return Step(status=int(match.group(1))) if count < int(match.group(2)) else Step()
    return _fault(name)


def toy_verdict(req: dict[str, Any]) -> str:
    """The demo's judge (`judge`): of the two answers in an A/B judge's prompt, the longer wins.

    A toy, so `sluice demo` can show an A/B test being judged with no model
    behind it; the prompt's tags are those of `proxy.experiments.judge_prompt`.
    """
    messages = req.get("messages") or [{}]
    prompt = _text(messages[-1].get("content", "")) if isinstance(messages[-1], dict) else ""
    a = re.search(r"<answer_a>(.*?)</answer_a>", prompt, re.S)
    b = re.search(r"<answer_b>(.*?)</answer_b>", prompt, re.S)
    if a is None or b is None:
        return "TIE"
    longer = len(a.group(1).strip()) - len(b.group(1).strip())
    return "A" if longer > 0 else "B" if longer < 0 else "TIE"


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _split(text: str, n: int) -> list[str]:
    size, extra = divmod(len(text), n) if n > 0 else (0, 0)
    bounds = [i * size + min(i, extra) for i in range(n + 1)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _text(value: Any) -> str:
    """The prompt text of messages, a prompt or an input, for a rough token estimate."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return " ".join(_text(value[k]) for k in ("content", "text") if k in value)
    return ""


def _usage(req: dict[str, Any], completion: str) -> dict[str, int]:
    prompt = _text(req.get("messages", req.get("prompt", req.get("input", ""))))
    p, c = max(1, len(prompt) // 4), max(1, len(completion) // 4)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def answer_json(path: str, req: dict[str, Any], step: Step, n: int) -> dict[str, Any]:
    """The 200 JSON body for a non-streamed API request."""
    model, usage = req.get("model", ""), _usage(req, step.content)
    if path == "/v1/embeddings":
        return _embeddings(req, model, usage["prompt_tokens"])
    if path == "/v1/responses":
        text = {"type": "output_text", "text": step.content, "annotations": []}
        output = [{"type": "message", "id": f"msg_{n}", "status": "completed", "role": "assistant", "content": [text]}]
        tokens = {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]}
        answer = {"id": f"resp_{n}", "object": "response", "created_at": CREATED, "status": "completed"}
        return answer | {"model": model, "output": output, "usage": tokens | {"total_tokens": usage["total_tokens"]}}
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": "stop"}
    if path == "/v1/completions":
        answer = {"id": f"cmpl-{n}", "object": "text_completion", "choices": [choice | {"text": step.content}]}
    else:
        message = {"role": "assistant", "content": step.content}
        answer = {"id": f"chatcmpl-{n}", "object": "chat.completion", "choices": [choice | {"message": message}]}
    answer |= {"created": CREATED, "model": model}
    return answer | {"usage": usage} if step.usage else answer


def _embeddings(req: dict[str, Any], model: str, tokens: int) -> dict[str, Any]:
    inputs = req.get("input", "")
    inputs = inputs if isinstance(inputs, list) and not all(isinstance(i, int) for i in inputs) else [inputs]
    dims = req.get("dimensions")
    dims = max(1, min(dims, 32)) if isinstance(dims, int) else 8
    data = []
    for i, item in enumerate(inputs):
        vector = [round(b / 127.5 - 1, 4) for b in hashlib.sha256(json.dumps(item).encode()).digest()[:dims]]
        encoded: Any = vector
        if req.get("encoding_format") == "base64":
            encoded = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def stream_events(path: str, req: dict[str, Any], step: Step, n: int) -> tuple[list[bytes], int]:
    """SSE events for a streamed answer, and how many come before the first content chunk."""
    chat = path == "/v1/chat/completions"
    options = req.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    base: dict[str, Any] = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{n}", "created": CREATED}
    base |= {"object": "chat.completion.chunk" if chat else "text_completion", "model": req.get("model", "")}
    if include_usage:
        base["usage"] = None  # as OpenAI does: every chunk carries usage, null until the last

    def event(text: str | None, finish: str | None = None, role: bool = False) -> bytes:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    head = [event(None, role=True)] if chat else []
    content = [event(piece) for piece in _split(step.content, step.chunks)]
    if step.invalid_json:
        bad = (content or [event("")])[0]
        content[:1] = [bad[: len(bad) // 2] + b"\n\n"]
    tail = [event(None, finish="stop")]
    if include_usage and step.usage:
        tail.append(_sse({**base, "choices": [], "usage": _usage(req, step.content)}))
    return [*head, *content, *tail, b"data: [DONE]\n\n"], len(head)
