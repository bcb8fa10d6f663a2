"""ABMiddleware: an `ab` route serves each call from the subject's variant (SPEC §9, issue 8).

The variant's chain (one `provider/model`, or the targets of the route it
names) is then tried in fallback order like any route; the response says which
variant served in `X-Sluice-Variant`, and the ledger records it.

With a judge (`proxy.experiments.judge`), a sampled call's answer is also
copied as it goes out (only a sampled call pays for that), and once the
caller has all of it, handed to the judge's queue. A call the judge makes
itself names the variant it wants, which is then used whatever the subject.
"""

from __future__ import annotations

import dataclasses
import json

from middleware.cache.policy import CACHE_CONTROL
from middleware.call import Call, Variant
from middleware.errors import SluiceError
from middleware.headers import (
    SLUICE_CACHE,
    SLUICE_CACHE_TTL,
    SLUICE_SUBJECT,
    SLUICE_VARIANT,
    content_type_is,
    header,
)
from middleware.types import ASGIApp, Message, Receive, Scope, Send
from proxy.experiments.answer_text import answer_text
from proxy.experiments.assign import pick, subject_of
from proxy.experiments.judge import JUDGED_PATHS, MAX_SAMPLE_BYTES, Judge, JudgeCall, JudgeSample

_CACHE_HEADERS = (SLUICE_CACHE, SLUICE_CACHE_TTL, CACHE_CONTROL)  # what the other variant's ask copies


class ABMiddleware:
    """Narrows an `ab` route to the subject's variant; stamps `X-Sluice-Variant`; feeds the judge its samples."""

    def __init__(self, app: ASGIApp, judge: Judge | None = None) -> None:
        self.app = app
        self.judge = judge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = Call.of(scope) if scope["type"] == "http" else None
        route = call.route if call is not None else None
        if call is None or route is None or route.strategy != "ab" or not route.variants:
            await self.app(scope, receive, send)
            return
        variant = _pinned(call, route.name, route.variants)
        if variant is None:
            subject = subject_of(header(scope, SLUICE_SUBJECT), call.json(), call.tenant)
            variant = pick(route.name, subject, route.variants)
        call.route = dataclasses.replace(
            route, targets=variant.targets, strategy="fallback", variants=(), home=variant.targets[0].provider
        )
        call.target = variant.targets[0]
        stamp = (SLUICE_VARIANT, variant.name.encode())
        judge = self.judge
        copy = (
            _AnswerCopy()
            if judge is not None
            and call.internal is None
            and scope["path"] in JUDGED_PATHS
            and len(call.body or b"") <= MAX_SAMPLE_BYTES  # a queue of 64 samples must stay small
            and judge.samples(route.name)
            else None
        )

        async def send_with_variant(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), stamp]}
            if copy is not None:
                copy.add(message)
            await send(message)

        try:
            await self.app(scope, receive, send_with_variant)
        except SluiceError as exc:  # answered by the error boundary: it still says which variant failed
            exc.headers = [*exc.headers, stamp]
            raise
        if copy is None or judge is None or not copy.complete:
            return
        other = judge.other_variant(route.variants, variant.name)
        text = copy.text()
        if other is None or text is None:
            return
        # The caller has its whole answer by now: the judge's work starts after this point.
        judge.submit(
            JudgeSample(
                route=route.name,
                served=variant.name,
                other=other,
                path=scope["path"],
                request=json.loads(call.body or b"{}"),  # the client's bytes, untouched by any layer
                answer=text,
                request_id=call.request_id,
                cache_headers=tuple((k, v) for k, v in scope["headers"] if k in _CACHE_HEADERS),
            )
        )


def _pinned(call: Call, route: str, variants: tuple[Variant, ...]) -> Variant | None:
    """The variant a judge's call asks for by name (None for every other call)."""
    internal = call.internal
    if not isinstance(internal, JudgeCall) or internal.route != route or internal.variant is None:
        return None
    return next((v for v in variants if v.name == internal.variant), None)


class _AnswerCopy:
    """The bytes of a successful answer as they go to the caller, up to `MAX_SAMPLE_BYTES`."""

    def __init__(self) -> None:
        self.ok = False
        self.sse = False
        self.complete = False
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.ok = message["status"] == 200
            self.sse = content_type_is(message.get("headers", ()), b"text/event-stream")
        elif message["type"] == "http.response.body" and self.ok:
            chunk: bytes = message.get("body", b"")
            self._size += len(chunk)
            if self._size > MAX_SAMPLE_BYTES:
                self.ok = False
                self._chunks.clear()
                return
            self._chunks.append(chunk)
            self.complete = not message.get("more_body", False)

    def text(self) -> str | None:
        """The answer's text; None when it failed, was cut, or was too long to keep."""
        if not (self.ok and self.complete):
            return None
        return answer_text(b"".join(self._chunks), sse=self.sse)
