"""Run ASGI apps under real uvicorn on loopback, in a background thread with its own event loop.

`httpx.ASGITransport` buffers bodies and skips lifespan, so streaming, time to first byte,
stalls and disconnects are tested against a real server (STYLE.md, "Tests"):

    with serve(FakeProvider()) as url:
        httpx.post(url + "/v1/chat/completions", json=...)

    with serve_many(gateway, upstream) as (gateway_url, upstream_url):
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any, Literal

import uvicorn

STARTUP_TIMEOUT_S = 5.0
SHUTDOWN_GRACE_S = 1  # seconds; uvicorn wants an int

Lifespan = Literal["auto", "on", "off"]


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the test runner."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn >= 0.29 installs its handlers here (only from the main thread, but say so anyway).
        yield


class ServerThread:
    """Serve one or more ASGI apps, each on its own pre-bound 127.0.0.1 port, from one thread and loop."""

    def __init__(self, *apps: Any, lifespan: Lifespan = "on") -> None:
        self.sockets = [_bind() for _ in apps]
        self.urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in self.sockets]
        self.servers = [_server(app, lifespan) for app in apps]
        self._thread = threading.Thread(target=self._run, name="uvicorn-test-server", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Future[Any] | None = None

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> list[str]:
        """Start serving; return the base URLs once every server has started."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not all(server.started for server in self.servers):
            if not self._thread.is_alive():
                self._close_sockets()
                raise RuntimeError("the test server stopped during startup (see the uvicorn log)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the test server did not start within {timeout} s")
            time.sleep(0.005)
        return self.urls

    def stop(self) -> None:
        """Shut down gracefully; force it when connections are still busy after a short grace."""
        for server in self.servers:
            server.should_exit = True
        self._thread.join(SHUTDOWN_GRACE_S + 2.0)
        if self._thread.is_alive():
            for server in self.servers:
                server.force_exit = True
            self._thread.join(SHUTDOWN_GRACE_S)
        if self._thread.is_alive() and self._loop is not None and self._main is not None:
            self._loop.call_soon_threadsafe(self._main.cancel)
            self._thread.join(SHUTDOWN_GRACE_S)
        self._close_sockets()
        if self._thread.is_alive():
            raise RuntimeError("the test server thread did not stop")

    def __enter__(self) -> list[str]:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._main = asyncio.gather(
                *(s.serve(sockets=[sock]) for s, sock in zip(self.servers, self.sockets, strict=True))
            )
            with contextlib.suppress(asyncio.CancelledError):
                await self._main

        asyncio.run(main())

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()


def _bind() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _server(app: Any, lifespan: Lifespan) -> _Server:
    # ws="none": the tests need no websockets, and importing an implementation can warn.
    # timeout_graceful_shutdown: requests a test left hanging are cancelled after a short grace, and
    # the app's lifespan shutdown still runs (force_exit would skip it and leak the app's clients).
    config = uvicorn.Config(
        app,
        loop="asyncio",
        http="httptools",
        ws="none",
        lifespan=lifespan,
        log_level="warning",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    return _Server(config)


@contextlib.contextmanager
def serve(app: Any, *, lifespan: Lifespan = "on") -> Iterator[str]:
    """Serve `app` under real uvicorn; yield its base URL, `http://127.0.0.1:PORT`."""
    with ServerThread(app, lifespan=lifespan) as urls:
        yield urls[0]


@contextlib.contextmanager
def serve_many(*apps: Any, lifespan: Lifespan = "on") -> Iterator[list[str]]:
    """Serve several apps from one thread and loop; yield their base URLs in order."""
    with ServerThread(*apps, lifespan=lifespan) as urls:
        yield urls
