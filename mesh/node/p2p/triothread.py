"""py-libp2p runs on trio; the node runs on asyncio. `TrioThread` owns one thread running trio and lets
asyncio code run trio coroutines there (`call`) and trio callbacks (`post`), so neither loop blocks the
other. A call whose asyncio caller is cancelled is cancelled in trio too; a call still running when
the thread stops fails with `TransportClosed` instead of hanging its caller."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any, Awaitable, Callable

import trio

from mesh.errors import MeshError


class TransportClosed(MeshError, ConnectionError):
    """The libp2p thread has stopped (or failed to start): nothing more can be sent or dialled."""


class _Call:
    __slots__ = ("scope", "cancelled")

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None
        self.cancelled = False


def _settle(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class TrioThread:
    def __init__(self, name: str = "libp2p") -> None:
        self.name = name
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._token is None:
            raise TransportClosed(f"the {self.name} thread did not start: {self.error!r}")

    def _main(self) -> None:
        try:
            trio.run(self._root)
        except BaseException as exc:  # kept for `start` and status; the thread must not die silently
            self.error = exc
        finally:
            self._token = None
            self._ready.set()

    async def _root(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await trio.sleep_forever()

    def run_blocking(self, fn: Callable[..., Awaitable[Any]], *args: object) -> Any:
        """Run `fn(*args)` in trio and wait for it here: for plain (non-async) callers such as tests."""
        token = self._token
        if token is None:
            raise TransportClosed(f"the {self.name} thread is not running")
        return trio.from_thread.run(fn, *args, trio_token=token)

    @property
    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise TransportClosed(f"the {self.name} thread is not running")
        return self._nursery

    @property
    def running(self) -> bool:
        return self._token is not None

    def post(self, fn: Callable[..., object], *args: object) -> bool:
        """Run a plain function in the trio thread soon; False when the thread is gone."""
        token = self._token
        if token is None:
            return False
        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> bool:
        """Start a trio task owned by the thread's nursery (it ends when the thread stops)."""
        return self.post(lambda: self._nursery.start_soon(fn, *args) if self._nursery else None)

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: object) -> Any:
        """Await `fn(*args)` run in trio; its exception is raised here."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        call = _Call()

        def deliver(result: Any, error: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(_settle, fut, result, error)
            except RuntimeError:  # the asyncio loop is closed: nobody is waiting any more
                pass

        async def run() -> None:
            if call.cancelled:
                deliver(None, asyncio.CancelledError())
                return
            try:
                with trio.CancelScope() as scope:
                    call.scope = scope
                    result = await fn(*args)
            except Exception as exc:  # handed to the asyncio caller, which owns the error
                deliver(None, exc)
                return
            except BaseException:  # trio.Cancelled: the thread is stopping
                deliver(None, TransportClosed(f"the {self.name} thread stopped"))
                raise
            if scope.cancelled_caught:
                deliver(None, asyncio.CancelledError())
            else:
                deliver(result, None)

        if not self.spawn(run):
            raise TransportClosed(f"the {self.name} thread is not running")
        try:
            return await fut
        except asyncio.CancelledError:
            call.cancelled = True
            if call.scope is not None:
                self.post(call.scope.cancel)
            raise

    def stop(self, timeout: float = 10.0) -> None:
        nursery = self._nursery
        if nursery is not None:
            self.post(nursery.cancel_scope.cancel)
        if self._thread is not None:
            self._thread.join(timeout)


class Mailbox:
    """Items handed from one thread to a handler run in the other, with one wake-up per batch rather
    than one per item: a hello to 31 peers, or a burst of frames, costs one cross-thread switch (the
    per-item hops were what kept a 32-node mesh on 2 cores from forming: measured). `wake(fn)` must run
    `fn` soon in the handler's thread; deque appends and pops are atomic, and the flag is cleared before
    draining, so an item put during a drain schedules another one."""

    def __init__(self, wake: Callable[[Callable[[], None]], object], handle: Callable[[Any], None]):
        self._items: deque = deque()
        self._scheduled = False
        self._wake, self._handle = wake, handle

    def put(self, item: Any) -> None:
        self._items.append(item)
        if not self._scheduled:
            self._scheduled = True
            self._wake(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        while self._items:
            self._handle(self._items.popleft())
