"""The A/B judge (SPEC §9, issue 8): a sampled share of A/B calls compared with the other variant, in the background.

After the caller has its whole answer, `ABMiddleware` hands a `JudgeSample`
(the request, the served variant's answer text) to `Judge.submit`, which
never waits: the sample goes on a bounded queue, or is dropped and counted
when the queue is full. A few worker tasks then, for each sample:

1. ask the other variant the same request (without `stream`), through the
   gateway's own app: routing, cache (with the caller's cache headers),
   fallback inside the variant's chain, cost, the ledger;
2. ask the route's `judge` model to compare the two answers, twice, with
   the answers swapped the second time (`proxy.experiments.judge_prompt`
   has the prompt and how two replies make one verdict); these two asks
   use the cache, so the same pair is never paid for twice;
3. leave the verdict on the ledger record of the last ask (its `variant`,
   `opponent`, `verdict`), where `/sluice/experiments` counts it.

Every call the judge makes is recorded with `judge = True`, `route` = the
A/B route and key id `judge:<route>`: it is the experiment's spend, shown as
`judge_usd`, and never counted against the caller's key budget. The calls
go in-process (no socket, no gateway key): `Call.internal` marks them, so
no client can pose as one. They use the operator's provider keys only; in
pass-through mode a provider with no key of its own cannot be judged.

A judge failure (the other variant or the judge model failing, an answer it
cannot parse) is logged and counted, and touches nothing of the caller's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from middleware.body import replay
from middleware.call import CALL_KEY, Call, Variant
from middleware.headers import SLUICE_CACHE
from middleware.types import ASGIApp, Message
from proxy.experiments.answer_text import answer_text
from proxy.experiments.judge_prompt import conversation_text, judge_body, parse_choice, verdict

QUEUE_SIZE = 64  # samples waiting; more are dropped (and counted) rather than delaying anyone
WORKERS = 2  # samples judged at once, each 3 upstream calls in a row
MAX_SAMPLE_BYTES = 1024 * 1024  # a request or answer longer than this is not judged (the queue holds both)
JUDGED_PATHS = ("/v1/chat/completions", "/v1/messages")
CHAT_PATH = "/v1/chat/completions"

logger = logging.getLogger("sluice.judge")
NO_JUDGE_STATS = {"sampled": 0, "dropped": 0, "judged": 0, "failed": 0, "queued": 0}  # `stats()` with no judge


@dataclass(frozen=True, slots=True)
class JudgeSettings:
    """One A/B route's judge: the `provider/model` that compares, and the share of calls sampled."""

    model: str
    sample_rate: float


@dataclass(slots=True)
class JudgeSample:
    """One served A/B call, as the judge needs it once the caller is done."""

    route: str
    served: str  # the variant that answered the caller
    other: str  # the variant it is compared with
    path: str
    request: dict[str, Any] = field(repr=False)
    answer: str = field(repr=False)
    request_id: str = ""
    cache_headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(slots=True)
class JudgeCall:
    """`Call.internal` of a call the judge makes: whose experiment it is spend of, and what it carries."""

    route: str
    variant: str | None = None  # the variant asked (the other variant's answer); None: the judge model
    verdict: tuple[str, str, str] | None = None  # (variant, opponent, outcome), on the pair's last ask


class Judge:
    """The bounded queue of samples and the workers that judge them; one per gateway process."""

    def __init__(
        self,
        settings: Mapping[str, JudgeSettings],
        *,
        queue_size: int = QUEUE_SIZE,
        workers: int = WORKERS,
        chance: Callable[[], float] = random.random,
    ) -> None:
        self.settings = dict(settings)
        self.app: ASGIApp | None = None  # the whole gateway, set by build_app once it is built
        self._queue: asyncio.Queue[JudgeSample] = asyncio.Queue(maxsize=queue_size)
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self._chance = chance
        self.counts = {k: 0 for k in NO_JUDGE_STATS if k != "queued"}

    def samples(self, route: str) -> bool:
        """Whether this call of `route` is to be judged (a coin with the route's `judge_sample_rate`)."""
        settings = self.settings.get(route)
        return settings is not None and self._chance() < settings.sample_rate

    def other_variant(self, variants: tuple[Variant, ...], served: str) -> str | None:
        """The variant to compare `served` with: one of the others, by their weights; None when there is none."""
        others = [v for v in variants if v.name != served and v.weight > 0]
        if not others:
            return None
        return random.choices(others, weights=[v.weight for v in others])[0].name

    def submit(self, sample: JudgeSample) -> None:
        """Queue `sample` and return at once; when the queue is full it is dropped and counted."""
        try:
            self._queue.put_nowait(sample)
        except asyncio.QueueFull:
            self.counts["dropped"] += 1
            return
        self.counts["sampled"] += 1

    def stats(self) -> dict[str, int]:
        """This process's counters, and how many samples wait."""
        return {**self.counts, "queued": self._queue.qsize()}

    async def start(self) -> None:
        """Start the workers (at the gateway's start-up)."""
        self._tasks = [asyncio.create_task(self._work(), name=f"sluice-judge-{n}") for n in range(self._workers)]

    async def aclose(self) -> None:
        """Stop the workers; samples still queued are dropped and counted (they are not worth a slow shutdown)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while not self._queue.empty():
            self._queue.get_nowait()
            self.counts["dropped"] += 1

    async def _work(self) -> None:
        while True:
            sample = await self._queue.get()
            try:
                failure = await self.judge(sample)
            except Exception as exc:  # a bug here must not stop the worker
                failure = f"{type(exc).__name__} while judging"
            if failure is None:
                self.counts["judged"] += 1
            else:
                self.counts["failed"] += 1
                logger.warning("judge: request %s on route %s not judged: %s", sample.request_id, sample.route, failure)

    async def judge(self, sample: JudgeSample) -> str | None:
        """Judge one sample (the three calls, the verdict in the ledger); None when judged, else why not."""
        settings = self.settings[sample.route]
        asked = {k: v for k, v in sample.request.items() if k not in ("stream", "stream_options")}
        asked["model"] = sample.route
        status, body = await self._ask(
            sample.path, asked, JudgeCall(sample.route, variant=sample.other), sample, 1, sample.cache_headers
        )
        other = answer_text(body, sse=False) if status == 200 else None
        if other is None:
            return f"variant {sample.other} answered {status} with no answer text"
        conversation = conversation_text(sample.request)
        cache_on = ((SLUICE_CACHE, b"on"),)
        first_ask = judge_body(settings.model, conversation, sample.answer, other)
        status, body = await self._ask(CHAT_PATH, first_ask, JudgeCall(sample.route), sample, 2, cache_on)
        first = parse_choice(answer_text(body, sse=False)) if status == 200 else None
        if first is None:
            return f"the judge answered {status} without A, B or TIE"
        last = JudgeCall(sample.route)

        def settle(status: int, body: bytes) -> None:
            # Runs as the last ask's answer arrives, before the ledger writes its record down.
            second = parse_choice(answer_text(body, sse=False)) if status == 200 else None
            if second is not None:
                last.verdict = (sample.served, sample.other, verdict(first, second))

        second_ask = judge_body(settings.model, conversation, other, sample.answer)
        status, _ = await self._ask(CHAT_PATH, second_ask, last, sample, 3, cache_on, settle)
        return None if last.verdict is not None else f"the judge answered {status} without A, B or TIE"

    async def _ask(
        self,
        path: str,
        payload: dict[str, Any],
        internal: JudgeCall,
        sample: JudgeSample,
        n: int,
        headers: tuple[tuple[bytes, bytes], ...],
        settle: Callable[[int, bytes], None] | None = None,
    ) -> tuple[int, bytes]:
        """POST `payload` to the gateway's own app in-process; its status and whole body."""
        if self.app is None:
            raise RuntimeError("the judge has no gateway app to call")
        raw = json.dumps(payload).encode()
        scope = _scope(path, raw, f"{sample.request_id}:judge-{n}", headers)
        scope[CALL_KEY] = Call(tenant=f"judge:{sample.route}", internal=internal)
        status = 0
        chunks: list[bytes] = []
        complete = asyncio.Event()

        async def after_the_answer() -> Message:
            await complete.wait()  # as uvicorn does: a disconnect only once the answer is complete
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    complete.set()
                    if settle is not None:
                        settle(status, b"".join(chunks))

        try:
            await self.app(scope, replay(raw, after_the_answer), send)
        finally:
            complete.set()
        return status, b"".join(chunks)


def _scope(path: str, body: bytes, request_id: str, headers: tuple[tuple[bytes, bytes], ...]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id[-128:].encode()),
            *headers,
        ],
        "client": None,
        "server": None,
    }
