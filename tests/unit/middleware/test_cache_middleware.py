"""CacheMiddleware on its own, in front of a plain Starlette endpoint (no Sluice stack)."""

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from middleware.cache import CacheMiddleware, CacheOptions
from middleware.stores import MemoryCacheStore


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def app_with_cache(clock, *, cookie=False, status=200):
    calls = []

    async def answer(request):
        body = await request.json()
        calls.append(body)
        response = JSONResponse({"echo": body, "n": len(calls)}, status_code=status)
        if cookie:
            response.set_cookie("session", "1")
        return response

    app = Starlette(routes=[Route("/answer", answer, methods=["POST"])])
    store = MemoryCacheStore(clock=clock)
    app.add_middleware(CacheMiddleware, store=store, options=CacheOptions(default_ttl_s=60, clock=clock))
    return app, calls


async def post(app, headers=None, body=None):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.post("/answer", json=body or {"model": "m", "q": 1}, headers=headers or {})


ON = {"x-sluice-cache": "on"}


@pytest.mark.anyio
async def test_plain_endpoint_gets_miss_then_hit_with_age():
    clock = Clock()
    app, calls = app_with_cache(clock)
    first = await post(app, ON)
    clock.now += 7
    second = await post(app, ON)
    assert (first.headers["x-sluice-cache"], second.headers["x-sluice-cache"]) == ("MISS", "HIT")
    assert second.headers["age"] == "7"
    assert second.json() == first.json()
    assert len(calls) == 1


@pytest.mark.anyio
async def test_entry_expires_after_its_ttl_without_sleeping():
    clock = Clock()
    app, calls = app_with_cache(clock)
    await post(app, {**ON, "x-sluice-cache-ttl": "10"})
    clock.now += 9
    assert (await post(app, ON)).headers["x-sluice-cache"] == "HIT"
    clock.now += 2
    assert (await post(app, ON)).headers["x-sluice-cache"] == "MISS"
    assert len(calls) == 2


@pytest.mark.anyio
async def test_calls_that_do_not_ask_pass_straight_through():
    app, calls = app_with_cache(Clock())
    first, second = await post(app), await post(app)
    # Used alone, the header is set only on calls that asked for the cache;
    # in the gateway, ErrorMiddleware stamps BYPASS on the others.
    assert "x-sluice-cache" not in first.headers
    assert first.json()["n"] == 1
    assert second.json()["n"] == 2
    assert len(calls) == 2


@pytest.mark.anyio
async def test_responses_with_set_cookie_or_errors_are_not_stored():
    for kwargs in ({"cookie": True}, {"status": 500}, {"status": 429}):
        app, calls = app_with_cache(Clock(), **kwargs)
        await post(app, ON)
        assert (await post(app, ON)).headers["x-sluice-cache"] == "MISS"
        assert len(calls) == 2


@pytest.mark.anyio
async def test_the_endpoint_still_reads_the_body_the_cache_consumed():
    app, _ = app_with_cache(Clock())
    response = await post(app, ON, {"model": "m", "payload": "x" * 10_000})
    assert response.json()["echo"]["payload"] == "x" * 10_000


@pytest.mark.anyio
async def test_non_post_requests_pass_through():
    async def hello(request):
        return Response("hi")

    app = Starlette(routes=[Route("/hello", hello)])
    app.add_middleware(CacheMiddleware)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/hello", headers=ON)
    assert response.text == "hi"
