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
    __slots__ = ("now", "rng", "events", "_queue", "_seq", "after")

    def __init__(self, seed: int):
        self.now = 0.0
        self.rng = random.Random(seed)  # the one RNG; components get their own, derived in a fixed order
        self.events = 0
        self._queue: list[tuple[float, int, Callable[..., Any], tuple]] = []
        self._seq = itertools.count()
        self.after = self._scheduler()  # the hot path: a closure, no attribute lookups but `now`

    def fork_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))

    def at(self, when: float, fn: Callable[..., Any], *args: Any) -> None:
        heapq.heappush(self._queue, (when if when > self.now else self.now, next(self._seq), fn, args))

    def _scheduler(self) -> Callable[..., None]:
        queue, push, seq, engine = self._queue, heapq.heappush, self._seq, self

        def after(delay: float, fn: Callable[..., Any], *args: Any) -> None:
            """Run fn(*args) `delay` virtual seconds from now (a negative delay counts as 0)."""
            now = engine.now
            push(queue, (now + delay if delay > 0 else now, next(seq), fn, args))

        return after

    def run(self, done: Callable[[], bool], on_batch: Callable[[], None] | None = None, batch: int = 8192) -> None:
        """Run events until `done()` or nothing is left; `on_batch` is called every `batch` events
        (progress reporting: it must not schedule anything). The hot loop keeps everything local."""
        queue, pop = self._queue, heapq.heappop
        while queue and not done():
            ran = 0
            for ran, _ in enumerate(itertools.repeat(None, batch), 1):  # noqa: B007 (read after the loop)
                when, _, fn, args = pop(queue)
                self.now = when
                fn(*args)
                if not queue:
                    break
            self.events += ran
            if on_batch is not None:
                on_batch()

    @property
    def pending(self) -> int:
        return len(self._queue)
