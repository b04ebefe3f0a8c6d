"""The asyncio side's door into the actor system: each ask runs in a thread of its own pool with its own
private Thespian endpoint (handles are not thread-safe), and a missing answer is an error, never None.

The pool's threads are daemons. A Thespian ask cannot be interrupted, and Ctrl-C (or SIGTERM to the
process group) stops the actors with the node: with ThreadPoolExecutor's threads, which the interpreter
joins at exit, a node asked to stop mid-step waited out the step's whole timeout (up to an hour)."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from mesh.errors import NoAnswer  # (raised here; defined with the other errors)


class DaemonPool:
    """Up to `threads` daemon threads running what is submitted, in order; nothing joins them at exit."""

    def __init__(self, threads: int, name: str):
        self.size, self.name = threads, name
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.idle = 0
        self.lock = threading.Lock()
        self.closed = False

    def submit(self, fn: Callable[..., object], *args: object) -> Future:
        future: Future = Future()
        with self.lock:
            if self.closed:
                raise RuntimeError("the actor bridge is closed")
            if self.idle:  # a thread that finished its last job takes this one
                self.idle -= 1
            elif len(self.threads) < self.size:  # else a new one, up to the limit (then it waits its turn)
                t = threading.Thread(target=self._work, name=f"{self.name}-{len(self.threads)}", daemon=True)
                self.threads.append(t)
                t.start()
        self.jobs.put((future, fn, args))
        return future

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the asking coroutine, which raises it
                    future.set_exception(exc)
            with self.lock:
                self.idle += 1

    def close(self) -> None:
        """Stop taking work; idle threads end, busy ones are left to the interpreter's exit."""
        with self.lock:
            self.closed = True
        for _ in self.threads:
            self.jobs.put(None)


class ActorBridge:
    def __init__(self, asys, node_actor, threads: int = 32):
        self.asys = asys
        self.node_actor = node_actor
        self.pool = DaemonPool(threads, "actor-bridge")

    async def ask(self, msg: object, timeout: float, on_progress: Callable[[object], None] | None = None) -> object:
        """The answer to `msg`. Progress messages that come before it (StepProgress) go to `on_progress`,
        called in the event loop."""
        loop = asyncio.get_running_loop()
        relay = None if on_progress is None else lambda m: loop.call_soon_threadsafe(on_progress, m)
        return await asyncio.wrap_future(self.pool.submit(self._ask, msg, timeout, relay))

    def _ask(self, msg: object, timeout: float, relay: Callable[[object], None] | None) -> object:
        from actors.messages import StepProgress

        deadline = time.monotonic() + timeout
        with self.asys.private() as handle:
            reply = handle.ask(self.node_actor, msg, timeout)
            while isinstance(reply, StepProgress):
                if relay is not None:
                    relay(reply)
                reply = handle.listen(max(0.01, deadline - time.monotonic()))
        if reply is None:
            raise NoAnswer(f"no answer to {type(msg).__name__} within {timeout:g} s")
        return reply

    def close(self) -> None:
        self.pool.close()
