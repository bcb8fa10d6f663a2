"""The fake provider under real uvicorn: disconnects, cut connections, and the official SDK."""

import json
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from proxy.demo import FakeProvider
from tests.servers import serve

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hello"}]


def raw_chat_request(url: str, payload: dict[str, object]) -> bytes:
    body = json.dumps(payload).encode()
    head = f"POST {CHAT} HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\nContent-Type: application/json\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def open_socket(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=5)


def test_client_closing_a_stalled_stream_is_recorded_promptly():
    fake = FakeProvider()
    with serve(fake) as url:
        with open_socket(url) as sock:
            sock.sendall(raw_chat_request(url, {"model": "stall-after-1", "messages": MESSAGES, "stream": True}))
            received = b""
            while received.count(b"data: ") < 2:  # the role chunk and one content chunk
                received += sock.recv(65536)
        closed_at = time.monotonic()

        wait_until(lambda: fake.requests[0].disconnected_at is not None, timeout=0.5)

    record = fake.requests[0]
    assert record.disconnected_at is not None
    assert record.disconnected_at - closed_at < 0.5
    assert not record.completed
    assert b"[DONE]" not in received


def test_client_closing_before_the_first_byte_is_recorded_promptly():
    fake = FakeProvider()
    with serve(fake) as url:
        with open_socket(url) as sock:
            sock.sendall(raw_chat_request(url, {"model": "silent", "messages": MESSAGES}))
            wait_until(lambda: fake.count() == 1, timeout=2)
        closed_at = time.monotonic()

        wait_until(lambda: fake.requests[0].disconnected_at is not None, timeout=0.5)

    disconnected_at = fake.requests[0].disconnected_at
    assert disconnected_at is not None
    assert disconnected_at - closed_at < 0.5


def test_cut_after_ends_the_connection_without_done():
    fake = FakeProvider()
    received: list[bytes] = []

    def read_stream(client: httpx.Client) -> None:
        payload = {"model": "cut-after-2", "messages": MESSAGES, "stream": True}
        with client.stream("POST", CHAT, json=payload) as response:
            assert response.status_code == 200
            received.extend(response.iter_bytes())

    with (
        serve(fake) as url,
        httpx.Client(base_url=url, timeout=5) as client,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        read_stream(client)

    body = b"".join(received)
    assert body.count(b"data: ") == 3  # the role chunk and two content chunks
    assert b"[DONE]" not in body
    assert not fake.requests[0].completed


def test_slow_ttft_delays_the_response_start():
    fake = FakeProvider()
    with serve(fake) as url, httpx.Client(base_url=url, timeout=5) as client:
        started = time.monotonic()
        response = client.post(CHAT, json={"model": "slow-ttft-0.2", "messages": MESSAGES})
        elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert elapsed >= 0.2


def test_openai_sdk_can_call_it_streaming_and_not():
    fake = FakeProvider()
    with serve(fake) as url, openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        completion = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
        stream = client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        with stream:
            chunks = list(stream)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="429-ra-1", messages=[{"role": "user", "content": "hi"}])

    assert completion.choices[0].message.content == "Hello from the fake provider."
    assert completion.usage is not None
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake provider."
    assert chunks[-1].usage is not None
    assert fake.count(CHAT) == 3
    assert fake.requests[0].headers["authorization"] == "Bearer x"
