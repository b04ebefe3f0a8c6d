"""The discrete-event engine: a virtual clock and one heap of timed callbacks. Nothing here reads the
wall clock or a global RNG; ties in time run in the order they were scheduled, so a run is a pure
function of its seed."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any


class Engine:
    def __init__(self, seed: int):
        self.now = 0.0
        self.rng = random.Random(seed)  # the one RNG; components get their own, derived in a fixed order
        self.events = 0
        self._queue: list[tuple[float, int, Callable[..., Any], tuple]] = []
        self._seq = 0

    def fork_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))

    def at(self, when: float, fn: Callable[..., Any], *args: Any) -> None:
        heapq.heappush(self._queue, (max(when, self.now), self._seq, fn, args))
        self._seq += 1

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        self.at(self.now + delay, fn, *args)

    def run(self, done: Callable[[], bool], on_batch: Callable[[], None] | None = None, batch: int = 8192) -> None:
        """Run events until `done()` or nothing is left; `on_batch` is called every `batch` events
        (progress reporting: it must not schedule anything)."""
        queue, pop = self._queue, heapq.heappop
        while queue and not done():
            for _ in range(batch):
                if not queue:
                    break
                when, _, fn, args = pop(queue)
                self.now = when
                self.events += 1
                fn(*args)
            if on_batch is not None:
                on_batch()

    @property
    def pending(self) -> int:
        return len(self._queue)
