import pytest

from middleware.attempt import Attempt


class Sent(list):
    async def __call__(self, message):
        self.append(message)


def start(status, *headers):
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def body(data, more=False):
    return {"type": "http.response.body", "body": data, "more_body": more}


@pytest.mark.anyio
async def test_a_good_answer_commits_at_its_first_body_byte_and_streams_through():
    sent = Sent()
    attempt = Attempt(sent)
    await attempt.send(start(200))
    assert sent == []
    await attempt.send(body(b"data: {}\n\n", more=True))
    await attempt.send(body(b"", more=False))
    assert attempt.committed
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]


@pytest.mark.anyio
@pytest.mark.parametrize("status", [401, 403, 404, 408, 409, 429, 500, 503, 529])
async def test_a_retriable_status_fails_and_sends_nothing(status):
    sent = Sent()
    attempt = Attempt(sent)
    await attempt.send(start(status))
    await attempt.send(body(b'{"error": {}}'))
    assert attempt.failed
    assert not attempt.committed
    assert sent == []
    assert attempt.body == b'{"error": {}}'
    await attempt.relay()
    assert sent[0]["status"] == status
    assert sent[1]["body"] == b'{"error": {}}'


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 413, 422])
async def test_request_errors_commit(status):
    sent = Sent()
    attempt = Attempt(sent)
    await attempt.send(start(status))
    await attempt.send(body(b"{}"))
    assert attempt.committed
    assert sent[0]["status"] == status


@pytest.mark.anyio
async def test_a_stream_whose_first_event_is_an_error_fails():
    sent = Sent()
    attempt = Attempt(sent)
    await attempt.send(start(200, (b"content-type", b"text/event-stream")))
    await attempt.send(body(b'data: {"error": {"message": "overloaded"}}\n\n'))
    assert attempt.failed
    assert sent == []


@pytest.mark.anyio
async def test_a_huge_failed_body_is_not_kept_for_relay():
    attempt = Attempt(Sent())
    await attempt.send(start(503))
    await attempt.send(body(b"x" * 100_000))
    assert attempt.failed
    assert attempt.body is None
