"""The simulated wire: per-link latency (each node's access latency, lognormal, plus jitter), bandwidth,
loss and timed partitions. Like trio's fake net it is a drop-in transport with a routing hook: a test
can drop or delay any message by (src, dst, time)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .engine import Engine


@dataclass(frozen=True)
class Partition:
    start_s: float
    end_s: float
    cut: frozenset[str]  # nodes on the far side: no message crosses between them and the rest


class Network:
    def __init__(self, engine: Engine, rng: random.Random, loss: float, jitter: float = 0.1):
        self.engine = engine
        self.rng = rng
        self.loss = loss
        self.jitter = jitter
        self.access_s: dict[str, float] = {}
        self.bandwidth_bps: dict[str, float] = {}
        self.partitions: list[Partition] = []
        self.route: Callable[[str, str, float], bool] | None = None  # hook: False drops the message
        self.sent = 0
        self.dropped = 0

    def attach(self, node: str, access_s: float, bandwidth_bps: float) -> None:
        self.access_s[node] = access_s
        self.bandwidth_bps[node] = bandwidth_bps

    def cut(self, a: str, b: str, now: float) -> bool:
        return any(p.start_s <= now < p.end_s and ((a in p.cut) != (b in p.cut)) for p in self.partitions)

    def send(self, src: str, dst: str, size: int, fn: Callable[..., Any], *args: Any) -> bool:
        """Deliver `fn(*args)` at dst after the link's delay; False when the message is lost (the sender
        cannot tell: it finds out by a timeout, as on a real network)."""
        now = self.engine.now
        self.sent += 1
        if (self.loss and self.rng.random() < self.loss) or self.cut(src, dst, now) or (
                self.route is not None and not self.route(src, dst, now)):
            self.dropped += 1
            return False
        latency = (self.access_s[src] + self.access_s[dst]) * self.rng.lognormvariate(0.0, self.jitter)
        transfer = size * 8 / min(self.bandwidth_bps[src], self.bandwidth_bps[dst])
        self.engine.after(latency + transfer, fn, *args)
        return True
