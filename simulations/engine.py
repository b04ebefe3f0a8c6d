"""The discrete-event engine: a virtual clock and one heap of timed callbacks. Nothing here reads the
wall clock or a global RNG; ties in time run in the order they were scheduled, so a run is a pure
function of its seed."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any


class Engine:
    def __init__(self, seed: int):
        self.now = 0.0
        self.rng = random.Random(seed)  # the one RNG; components get their own, derived in a fixed order
        self.events = 0
        self._queue: list[tuple[float, int, Callable[..., Any], tuple]] = []
        self._seq = itertools.count()

    def fork_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))

    def at(self, when: float, fn: Callable[..., Any], *args: Any) -> None:
        heapq.heappush(self._queue, (when if when > self.now else self.now, next(self._seq), fn, args))

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        heapq.heappush(self._queue, (self.now + delay if delay > 0 else self.now, next(self._seq), fn, args))

    def run(self, done: Callable[[], bool], on_batch: Callable[[], None] | None = None, batch: int = 8192) -> None:
        """Run events until `done()` or nothing is left; `on_batch` is called every `batch` events
        (progress reporting: it must not schedule anything). The hot loop keeps everything local."""
        queue, pop = self._queue, heapq.heappop
        while queue and not done():
            ran = 0
            while ran < batch and queue:
                when, _, fn, args = pop(queue)
                self.now = when
                ran += 1
                fn(*args)
            self.events += ran
            if on_batch is not None:
                on_batch()

    @property
    def pending(self) -> int:
        return len(self._queue)
