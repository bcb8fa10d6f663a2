"""Every error path a client can meet, on a live gateway: status, shape, and nothing leaked."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import httpx
import pytest

from proxy.demo import Step
from tests.servers import _bind

from .conftest import CANARY_KEY, wait_until

MESSAGES = [{"role": "user", "content": "Hello"}]
CHAT = "/v1/chat/completions"


def assert_error_shape(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert "Traceback" not in response.text
    assert CANARY_KEY not in response.text
    assert all(CANARY_KEY not in value for value in response.headers.values())
    return error


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"model": 42, "messages": []}', "model"),
        (b'{"messages": []}', "model"),
        (b'{"model": "fake/echo", "temperature": NaN}', "NaN"),
        (b'{"model": "fake/echo", "x": "\\ud800"}', "surrogate"),
        (b'{"model": "fake/echo", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested too deeply"),
        (b"", "empty"),
    ],
)
def test_hostile_bodies_get_a_400_never_a_500(live, body, needle):
    response = httpx.post(live.url + CHAT, content=body, headers={"content-type": "application/json"})
    error = assert_error_shape(response, 400)
    assert needle in error["message"]
    assert live.fake.count() == 0


def test_huge_request_id_is_a_400(live):
    response = httpx.post(live.url + CHAT, json={"model": "fake/echo"}, headers={"x-request-id": "a" * 5000})
    assert_error_shape(response, 400)


def test_body_over_the_limit_with_content_length_is_413_without_reading_it(gateway_factory):
    live = gateway_factory("[server]\nmax_body_bytes = 1000\n")
    port = int(live.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 50000000\r\n\r\n" + b"{" * 100
        )
        sock.settimeout(5)
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_too_large"
    assert live.fake.count() == 0


def read_response(sock: socket.socket) -> bytes:
    """Read one whole Content-Length response from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_chunked_body_over_the_limit_is_413(gateway_factory):
    live = gateway_factory("[server]\nmax_body_bytes = 1000\n")

    def chunks():
        for _ in range(100):
            yield b"x" * 100

    response = httpx.post(live.url + CHAT, content=chunks())
    error = assert_error_shape(response, 413)
    assert "limit" in error["message"]
    assert live.fake.count() == 0


def test_unknown_path_outside_v1_is_404_in_shape(live):
    assert_error_shape(httpx.get(live.url + "/nope"), 404)


def test_dot_segments_cannot_climb_out_of_the_api_prefix(live):
    with socket.create_connection(("127.0.0.1", int(live.url.rsplit(":", 1)[1]))) as sock:
        body = b'{"model": "fake/echo"}'
        sock.sendall(
            b"POST /v1/../admin HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        sock.settimeout(5)
        head = sock.recv(65536)
    assert head.split(b"\r\n")[0] in (b"HTTP/1.1 404 Not Found", b"HTTP/1.1 400 Bad Request")
    assert live.fake.count() == 0


def test_first_byte_timeout_is_a_504_before_anything_is_sent(gateway_factory):
    live = gateway_factory(timeouts="first_byte_s = 0.3")
    started = time.monotonic()
    response = httpx.post(live.url + CHAT, json={"model": "fake/slow-ttft-5", "messages": MESSAGES})
    assert time.monotonic() - started < 2
    error = assert_error_shape(response, 504)
    assert "fake/slow-ttft-5" in error["message"]


def test_headers_then_silence_is_still_a_504_because_the_start_is_held(gateway_factory):
    live = gateway_factory(timeouts="first_byte_s = 0.3")
    response = httpx.post(live.url + CHAT, json={"model": "fake/headers-then-silent", "messages": MESSAGES})
    assert_error_shape(response, 504)


def test_total_deadline_bounds_a_slow_drip(gateway_factory):
    live = gateway_factory(timeouts="total_s = 0.6\nidle_s = 5")
    live.fake.script.steps.append(Step(chunks=50, chunk_gap_s=0.05))
    body = {"model": "fake/echo", "messages": MESSAGES, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", live.url + CHAT, json=body) as response:
        text = b"".join(response.iter_bytes()).decode()
    assert time.monotonic() - started < 2
    assert response.status_code == 200
    assert "[DONE]" not in text
    last = [line for line in text.splitlines() if line.startswith("data: ")][-1]
    assert json.loads(last[6:])["error"]["code"] == "upstream_timeout"


def test_stream_that_stalls_mid_way_ends_with_an_sse_error_not_done(gateway_factory):
    live = gateway_factory(timeouts="idle_s = 0.3")
    body = {"model": "fake/stall-after-2", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", live.url + CHAT, json=body) as response:
        text = b"".join(response.iter_bytes()).decode()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["type"] == "timeout_error"
    assert CANARY_KEY not in text
    # The idle deadline closed the upstream connection: the provider sees it go.
    assert wait_until(lambda: live.fake.requests[0].disconnected_at is not None)


def test_stream_cut_by_the_provider_ends_with_an_sse_error(live):
    body = {"model": "fake/cut-after-2", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", live.url + CHAT, json=body) as response:
        text = b"".join(response.iter_bytes()).decode()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "upstream_connect_error"
    # A normal call straight afterwards is fine.
    assert httpx.post(live.url + CHAT, json={"model": "fake/echo", "messages": MESSAGES}).status_code == 200


def test_connection_refused_is_a_502_without_the_key(gateway_factory):
    closed = _bind()
    port = closed.getsockname()[1]
    closed.close()
    live = gateway_factory(f'[providers.down]\nbase_url = "http://127.0.0.1:{port}/v1"\napi_key = "{CANARY_KEY}"\n')
    response = httpx.post(live.url + CHAT, json={"model": "down/x", "messages": MESSAGES})
    error = assert_error_shape(response, 502)
    assert "down/x" in error["message"]


def test_redirects_are_not_followed(live):
    response = httpx.post(live.url + CHAT, json={"model": "fake/redirect", "messages": MESSAGES})
    error = assert_error_shape(response, 502)
    assert "redirect" in error["message"]
    assert live.fake.count() == 1


@pytest.mark.parametrize("when", ["before-first-byte", "mid-stream"])
def test_client_disconnect_closes_the_upstream_connection_promptly(gateway_factory, when):
    live = gateway_factory()
    model = "fake/slow-ttft-30" if when == "before-first-byte" else "fake/stall-after-2"
    body = json.dumps({"model": model, "messages": MESSAGES, "stream": True}).encode()
    port = int(live.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    assert wait_until(lambda: live.fake.count() == 1, timeout=5)
    if when == "mid-stream":
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    closed_at = time.monotonic()
    sock.close()
    seen = live.fake.requests[0]
    assert wait_until(lambda: seen.disconnected_at is not None)
    assert seen.disconnected_at - closed_at < 0.1
    assert httpx.get(live.url + "/healthz").status_code == 200


def test_a_provider_echoing_the_key_in_its_error_gets_it_scrubbed(live):
    echo = {"error": {"message": f"Incorrect API key provided: {CANARY_KEY}", "type": "invalid_request_error"}}
    live.fake.script.steps.append(Step(status=401, error_body=echo))
    response = httpx.post(live.url + CHAT, json={"model": "fake/echo", "messages": MESSAGES})
    assert response.status_code == 401
    assert CANARY_KEY not in response.text
    assert "[redacted]" in response.json()["error"]["message"]
    assert int(response.headers["content-length"]) == len(response.content)


def test_no_error_path_puts_the_key_in_a_log_line(gateway_factory, caplog):
    closed = _bind()
    port = closed.getsockname()[1]
    closed.close()
    live = gateway_factory(
        f'[providers.down]\nbase_url = "http://127.0.0.1:{port}/v1"\napi_key = "{CANARY_KEY}"\n',
        timeouts="first_byte_s = 0.3\nidle_s = 0.3",
    )
    with caplog.at_level("DEBUG"):
        for model in (
            "down/x",
            "fake/slow-ttft-2",
            "fake/cut-after-1",
            "fake/stall-after-1",
            "fake/bad-json",
            "fake/401",
        ):
            for stream in (False, True):
                body = {"model": model, "messages": MESSAGES, "stream": stream}
                received = []
                # A non-stream answer cut mid-body: the gateway drops the connection.
                with (
                    httpx.stream("POST", live.url + CHAT, json=body) as response,
                    contextlib.suppress(httpx.RemoteProtocolError),
                ):
                    received.extend(response.iter_bytes())
                assert CANARY_KEY.encode() not in b"".join(received)
    assert caplog.records
    assert CANARY_KEY not in caplog.text


def test_connect_deadline_is_a_504(gateway_factory):
    # A listener whose accept queue is full drops new SYNs, so connecting hangs.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        live = gateway_factory(
            f'[providers.slow]\nbase_url = "http://127.0.0.1:{port}/v1"\napi_key = "{CANARY_KEY}"\n',
            timeouts="connect_s = 0.3",
        )
        started = time.monotonic()
        response = httpx.post(live.url + CHAT, json={"model": "slow/x", "messages": MESSAGES}, timeout=10)
        elapsed = time.monotonic() - started
    finally:
        for sock in (*fillers, full):
            sock.close()
    error = assert_error_shape(response, 504)
    assert "slow/x" in error["message"]
    assert elapsed < 2
