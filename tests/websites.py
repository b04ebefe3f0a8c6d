"""A real web server for scrape tests: an aiohttp app served from a thread of its own on loopback, so a
test can drive Chromium from its own loop while the site answers (and counts) in another."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web


class ThreadedSite:
    """Subclasses build the app (`app()`); `start()` serves it on 127.0.0.1 (and on `also`, same port)."""

    also: tuple[str, ...] = ()  # more loopback addresses to serve on

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.runner: web.AppRunner | None = None
        self.thread: threading.Thread | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        ready = threading.Event()

        async def serve() -> None:
            self.runner = web.AppRunner(self.app(), handler_cancellation=True, shutdown_timeout=1)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            for host in self.also:
                await web.TCPSite(self.runner, host, self.port).start()
            ready.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(serve()), self.loop.run_forever()),
                                       daemon=True)
        self.thread.start()
        assert ready.wait(10), "the test site did not start"

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(10)
