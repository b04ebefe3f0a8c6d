"""pyppeteer over the browser's DevTools pipe (mesh.steps.chromium.DevToolsPipe) instead of a websocket to a
port on 127.0.0.1, which any local user could connect to too. Its Connection keeps pyppeteer's sessions,
events and errors; only the transport differs."""

from __future__ import annotations

import asyncio
import json
import logging

from pyee import EventEmitter
from pyppeteer.browser import Browser
from pyppeteer.connection import Connection
from pyppeteer.errors import NetworkError

from mesh.steps.chromium import DevToolsPipe, PipeClosed

log = logging.getLogger("mesh.steps.devtools")
VIEWPORT = {"width": 800, "height": 600}  # pyppeteer's connect() default


class PipeConnection(Connection):
    """pyppeteer's Connection reading and writing a DevToolsPipe (its own __init__ would dial a websocket)."""

    def __init__(self, pipe: DevToolsPipe, loop: asyncio.AbstractEventLoop):
        EventEmitter.__init__(self)
        self._url = ""  # no endpoint: nothing else can connect
        self._lastId = 0
        self._callbacks: dict[int, asyncio.Future] = {}
        self._delay = 0
        self._loop = loop
        self._sessions = {}
        self._closeCallback = None
        self._pipe = pipe
        self._connected = True
        self.lost: asyncio.Future = loop.create_future()  # set when the connection goes: every step on it fails
        self._recv_fut = loop.create_task(self._recv_loop())  # cancelled by dispose (pyppeteer's _on_close)

    async def _recv_loop(self) -> None:
        """Every message to pyppeteer until the pipe closes; then whatever waits on a reply fails. However
        the loop ends (a message pyppeteer cannot take included), the connection says it is closed, so the
        next step starts a fresh browser: ended by an InvalidStateError with the connection still marked
        open, every later scrape on the node waited out its timeout on a reader that was gone."""
        try:
            while self._connected:
                await self._on_message(await self._pipe.recv())
        except PipeClosed as exc:
            log.info("DevTools connection lost: %s", exc)
        finally:
            if self._connected:
                await self.dispose()

    def _forget_abandoned(self) -> None:
        """Drop the calls whose callers gave up (a step cancelled, or past its timeout, mid-call): pyppeteer
        resolves an answer's future without asking whether it is still wanted, and set_result on a cancelled
        future raises InvalidStateError — on the connection's and on each page session's futures alike."""
        for callbacks in (self._callbacks, *(s._callbacks for s in self._sessions.values())):
            for key in [k for k, future in callbacks.items() if future.done()]:
                del callbacks[key]

    async def _on_message(self, message: str) -> None:
        """pyppeteer's, without its sleep(0) before the message is read: between the purge of abandoned
        calls and their answers nothing may run that could cancel another."""
        self._forget_abandoned()
        msg = json.loads(message)
        if msg.get("id") in self._callbacks:
            self._on_response(msg)
        else:
            self._on_query(msg)

    async def _on_close(self) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self._forget_abandoned()
        await super()._on_close()

    def send(self, method: str, params: dict | None = None) -> asyncio.Future:
        """pyppeteer's send, written at once: its own leaves a task behind for every message."""
        if not self._connected:
            raise PipeClosed("the DevTools connection is closed")
        self._lastId += 1
        self._pipe.send(json.dumps({"id": self._lastId, "method": method, "params": params or {}}))
        callback = self._loop.create_future()
        callback.error = NetworkError()  # (what pyppeteer's errors are made from)
        callback.method = method
        self._callbacks[self._lastId] = callback
        return callback


async def connect(pipe: DevToolsPipe) -> Browser:
    """pyppeteer's connect(), over the pipe."""
    connection = PipeConnection(pipe, asyncio.get_running_loop())
    contexts = (await connection.send("Target.getBrowserContexts")).get("browserContextIds", [])
    return await Browser.create(connection, contexts, False, VIEWPORT, None, lambda: connection.send("Browser.close"))
