"""`sluice serve` under SIGTERM, as a real process (RELIABILITY.md 29): drain, cut at the deadline, exit 0."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from proxy.demo import FakeProvider
from proxy.demo_script import Script, Step
from proxy.shutdown import SHUTTING_DOWN
from tests.integration.conftest import wait_until
from tests.redis_server import free_port
from tests.servers import serve

DRAIN_S = 1.5
MESSAGES = [{"role": "user", "content": "Hello there"}]


@dataclass
class Reader:
    """One streamed call read in a thread: its status and (arrival time, line) pairs."""

    path: str
    body: dict[str, object]
    status: int | None = None
    lines: list[tuple[float, str]] = field(default_factory=list)
    first_line: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self, url: str) -> threading.Thread:
        def read() -> None:
            try:
                with httpx.Client(timeout=10) as client, client.stream("POST", url + self.path, json=self.body) as r:
                    self.status = r.status_code
                    for line in r.iter_lines():
                        if line:
                            self.lines.append((time.monotonic(), line))
                            self.first_line.set()
            except BaseException as exc:  # seen by the test, not lost in the thread
                self.error = exc
                self.first_line.set()

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    def text(self) -> list[str]:
        return [line for _, line in self.lines]


@dataclass
class Gateway:
    """A `sluice serve` process and what the tests look at: its port, the fake behind it, its ledger file."""

    url: str
    port: int
    fake: FakeProvider
    process: subprocess.Popen[str]
    ledger: Path


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """`sluice serve` (drain_s = 1.5) in front of a scripted fake: slow streams, then a first byte that never comes."""
    fake = FakeProvider(
        Script(
            steps=[
                Step(chunks=3, chunk_gap_s=0.1),  # about 0.6 s in all: ends inside the drain
                Step(chunks=20, chunk_gap_s=0.3),  # about 7 s: outlasts the drain
                Step(chunks=20, chunk_gap_s=0.3),  # the same, for /v1/messages
                Step(first_byte_delay_s=30),  # never answered before the deadline
            ]
        )
    )
    ledger = tmp_path / "ledger.db"
    with serve(fake) as fake_url:
        config = tmp_path / "sluice.toml"
        config.write_text(
            f'[server]\ndrain_s = {DRAIN_S}\n[providers.fake]\nbase_url = "{fake_url}/v1"\nmodels = ["echo"]\n'
            f'api_key = "sk-fake"\n[ledger]\npath = "{ledger}"\n'
        )
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            healthy = wait_until(lambda: _healthy(url), timeout=15)
            assert healthy, "sluice serve did not become healthy"
            yield Gateway(url, port, fake, process, ledger)
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=0.5).status_code == 200
    except httpx.TransportError:
        return False


def _post(url: str, answers: list[httpx.Response]) -> None:
    """A non-stream call, in a thread; its answer is appended to `answers`."""
    body = {"model": "fake/echo", "messages": MESSAGES}
    answers.append(httpx.post(url + "/v1/chat/completions", json=body, timeout=10))


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True


def test_sigterm_drains_streams_cuts_the_rest_at_the_deadline_and_exits_0(gateway):
    url, port, fake, process = gateway.url, gateway.port, gateway.fake, gateway.process
    chat = {"model": "fake/echo", "messages": MESSAGES, "stream": True}
    short, long = Reader("/v1/chat/completions", chat), Reader("/v1/chat/completions", chat)
    messages = Reader("/v1/messages", {"model": "fake/echo", "max_tokens": 64, "messages": MESSAGES, "stream": True})
    threads = []
    for reader in (short, long, messages):  # one at a time: each takes the next scripted step
        threads.append(reader.run(url))
        assert reader.first_line.wait(5)
    answers: list[httpx.Response] = []
    unanswered = threading.Thread(target=_post, args=(url, answers), daemon=True)
    unanswered.start()
    assert wait_until(lambda: fake.count() == 4, timeout=5)

    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert wait_until(lambda: _refuses_connections(port), timeout=1.0)  # at once, well before the deadline
    refused_after = time.monotonic() - signalled

    for thread in [*threads, unanswered]:
        thread.join(DRAIN_S + 5)
    output, _ = process.communicate(timeout=DRAIN_S + 10)
    assert process.returncode == 0, output

    # No reader saw a reset or a broken chunked body: every stream ended cleanly.
    assert all(reader.error is None for reader in (short, long, messages)), output
    # Finished within the deadline: every chunk, then [DONE].
    assert short.status == 200
    assert short.text()[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in short.text()[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == Step().content
    # Still streaming at the deadline: a last error event in the OpenAI shape, then a clean end.
    assert long.status == 200
    assert "data: [DONE]" not in long.text()
    last_time, last = long.lines[-1]
    error = json.loads(last.removeprefix("data: "))["error"]
    assert (error["message"], error["code"]) == (SHUTTING_DOWN, "shutting_down")
    assert DRAIN_S - 0.1 <= last_time - signalled <= DRAIN_S + 1.5
    assert refused_after < DRAIN_S
    # /v1/messages: Anthropic's error event.
    assert messages.status == 200
    assert messages.text()[-2] == "event: error"
    assert json.loads(messages.text()[-1].removeprefix("data: ")) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": SHUTTING_DOWN},
    }
    # Not answered by the deadline: a 503 in the OpenAI shape.
    [answer] = answers
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "shutting_down"

    # The ledger was flushed before the exit, with a row per call.
    with contextlib.closing(sqlite3.connect(gateway.ledger)) as db:
        rows = db.execute("SELECT status, error, stream FROM calls ORDER BY ts").fetchall()
    assert rows == [(200, None, 1), (200, SHUTTING_DOWN, 1), (200, SHUTTING_DOWN, 1), (503, SHUTTING_DOWN, 0)]


def test_sigint_with_nothing_in_flight_exits_0_at_once(gateway):
    process = gateway.process
    signalled = time.monotonic()
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=10)
    assert process.returncode == 0, output
    assert time.monotonic() - signalled < DRAIN_S  # no call to wait for: the drain does not hold the exit
    assert "Traceback" not in output
