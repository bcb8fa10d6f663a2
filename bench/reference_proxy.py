"""The calibration proxy: PERF-NOTES.md's "raw ASGI + one aiohttp.ClientSession + gc.freeze()" row, as one file.

bench/run.py measures it beside the gateway, in the same repeat and on the same
CPU, so a run on a slower (or busier) box can still be read against the
reference figures: PERF-NOTES measured this proxy at 13,432 req/s at c=32,
0.074 ms of CPU per request and +0.162 ms at c=1 p50. It forwards every POST to
`--upstream` + the request path, relaying the bytes as they arrive, with the
same uvicorn options as `sluice serve` (uvloop, httptools, no access log) and
nothing else: no auth, no routing, no JSON.

    python bench/reference_proxy.py --upstream http://127.0.0.1:PORT --port 9000
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

import aiohttp
import uvicorn

_DROP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server"})


class ReferenceProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        assert self.session is not None
        query = scope.get("query_string", b"")
        url = self.upstream + scope["path"] + ("?" + query.decode("latin-1") if query else "")
        headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
        async with self.session.post(url, data=b"".join(chunks), headers=headers) as response:
            out = [(name.lower(), value) for name, value in response.raw_headers if name.lower() not in _DROP]
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def lifespan(self, receive: Any, send: Any) -> None:
        await receive()
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await self.session.close()
        await send({"type": "lifespan.shutdown.complete"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="PERF-NOTES' minimal aiohttp proxy, for calibration.")
    parser.add_argument("--upstream", required=True, help="upstream base URL, e.g. http://127.0.0.1:9001")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        ReferenceProxy(args.upstream),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
