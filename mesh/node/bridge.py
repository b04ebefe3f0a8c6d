"""The asyncio side's door into the actor system: each ask runs in an executor thread with its own
private Thespian endpoint (handles are not thread-safe), and a missing answer is an error, never None."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mesh.errors import NoAnswer  # (raised here; defined with the other errors)


class ActorBridge:
    def __init__(self, asys, node_actor, threads: int = 32):
        self.asys = asys
        self.node_actor = node_actor
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="actor-bridge")

    async def ask(self, msg: object, timeout: float, on_progress: Callable[[object], None] | None = None) -> object:
        """The answer to `msg`. Progress messages that come before it (StepProgress) go to `on_progress`,
        called in the event loop."""
        loop = asyncio.get_running_loop()
        relay = None if on_progress is None else lambda m: loop.call_soon_threadsafe(on_progress, m)
        return await loop.run_in_executor(self.pool, self._ask, msg, timeout, relay)

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
        self.pool.shutdown(wait=False, cancel_futures=True)
