"""Nothing lost: every call through a live gateway is a ledger row, and SIGTERM flushes what is queued."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys

import httpx

from tests.integration.conftest import wait_until
from tests.redis_server import free_port

MESSAGES = [{"role": "user", "content": "Hello"}]


async def _burst(url: str, calls: int, concurrency: int = 32) -> list[int]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(i: int) -> int:
            async with gate:
                body = {"model": "fake/echo", "messages": MESSAGES}
                response = await client.post(
                    url + "/v1/chat/completions", json=body, headers={"x-request-id": f"b-{i}"}
                )
                return response.status_code

        return await asyncio.gather(*(one(i) for i in range(calls)))


def rows(path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])


def test_a_burst_of_calls_leaves_exactly_one_row_per_call(gateway_factory, tmp_path):
    db = tmp_path / "burst.db"
    live = gateway_factory(f'[ledger]\npath = "{db}"\n')
    statuses = asyncio.run(_burst(live.url, 1000))
    assert statuses == [200] * 1000
    assert wait_until(lambda: rows(db) == 1000, timeout=5)
    with sqlite3.connect(db) as conn:
        ids = {r[0] for r in conn.execute("SELECT request_id FROM calls")}
        tries = conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
    assert ids == {f"b-{i}" for i in range(1000)}
    assert tries == 1000


def test_sigterm_flushes_the_ledger_before_exit(fake_server, tmp_path):
    _, fake_url = fake_server
    db = tmp_path / "sluice.db"
    config = tmp_path / "sluice.toml"
    config.write_text(f'[providers.fake]\nbase_url = "{fake_url}/v1"\napi_key = "sk-x"\n[ledger]\npath = "{db}"\n')
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _healthy(url), timeout=15)
        assert asyncio.run(_burst(url, 300)) == [200] * 300
        process.send_signal(signal.SIGTERM)  # at once: most records are still queued
        # uvicorn re-raises the SIGTERM it handled once its shutdown is done (exit 0 on SIGTERM is issue 9)
        assert process.wait(15) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
    assert rows(db) == 300


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=0.5).status_code == 200
    except httpx.TransportError:
        return False
