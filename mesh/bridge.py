"""The asyncio side's door into the actor system: each ask runs in an executor thread with its own
private Thespian endpoint (handles are not thread-safe), and a missing answer is an error, never None."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from .errors import MeshError


class NoAnswer(MeshError):
    """The actor did not answer in time (it may be dead or overloaded)."""


class ActorBridge:
    def __init__(self, asys, node_actor, threads: int = 32):
        self.asys = asys
        self.node_actor = node_actor
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="actor-bridge")

    async def ask(self, msg: object, timeout: float) -> object:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._ask, msg, timeout)

    def _ask(self, msg: object, timeout: float) -> object:
        with self.asys.private() as handle:
            reply = handle.ask(self.node_actor, msg, timeout)
        if reply is None:
            raise NoAnswer(f"no answer to {type(msg).__name__} within {timeout:g} s")
        return reply

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
