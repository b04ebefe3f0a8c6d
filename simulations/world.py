"""The simulated population: nodes with their speed, network prefix and behaviour, the workers online
now (sampled in O(k) by submitters), each worker's one-slot queue (it answers busy to a step it could not
start before the step's deadline), and churn (leave, crash, return)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.wire.canonical import digest

from .adversaries import Request, Strategy
from .engine import Engine
from .network import Network
from .scoring import TOKENS, token_ids
from .trace import Trace

BUSY = "busy: too many steps in flight"


@dataclass(eq=False)
class SimNode:
    id: str
    prefix: str
    speed: float
    strategy: Strategy
    online: bool = True
    epoch: int = 0  # bumped when it goes down: work in hand from before is lost
    busy_until: float = 0.0
    earned: float = 0.0
    served: int = 0

    @property
    def cls(self) -> str:
        return self.strategy.name


@dataclass(frozen=True)
class StepMsg:
    job: str
    step: str
    truth: Any  # what an honest worker computes
    cost_s: float  # CPU-seconds on a speed-1 node
    params: Mapping[str, Any] = field(default_factory=dict)  # as the request carries them (a strategy may look)
    kind: str = "python"  # as the request says: a step kind, or "score" (verify params["claim"])
    deadline: float = 0.0  # when the submitter stops waiting (the request's timeout, as a real one carries it)


class Roster:
    """Node ids that can be sampled in O(k) and changed in O(1): a list, and each id's index in it (a
    removed id's place goes to the last one). The workers online; a submitter's known peers."""

    def __init__(self) -> None:
        self.members: list[str] = []
        self._at: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.members)

    def add(self, nid: str) -> None:
        if nid not in self._at:
            self._at[nid] = len(self.members)
            self.members.append(nid)

    def drop(self, nid: str) -> None:
        i = self._at.pop(nid, None)
        if i is None:
            return
        last = self.members.pop()
        if last != nid:
            self.members[i], self._at[last] = last, i


@dataclass
class World:
    engine: Engine
    net: Network
    trace: Trace
    rng: random.Random
    nodes: dict[str, SimNode] = field(default_factory=dict)
    online: Roster = field(default_factory=Roster)  # online workers, for sampling
    on_leave: list[Callable[[str], None]] = field(default_factory=list)  # told of goodbyes
    prefixes: dict[str, str] = field(default_factory=dict)  # node → its network prefix
    joins: int = 0
    leaves: int = 0
    crashes: int = 0

    def add(self, node: SimNode, worker: bool) -> None:
        self.nodes[node.id] = node
        self.prefixes[node.id] = node.prefix
        if worker:
            self.online.add(node.id)

    def sample(self, k: int) -> list[str]:
        return self.rng.sample(self.online.members, min(k, len(self.online)))

    # -- work ---------------------------------------------------------------------------------------
    def receive(self, nid: str, reply: Callable[..., None], src: str, msg: StepMsg) -> None:
        """A step arrives at worker nid: queue it on its one slot; answer when done, if still up. A worker
        whose queue reaches past the step's deadline answers busy at once (a real node takes a bounded
        number of steps and refuses the rest): queued, it would run a step its submitter gave up on."""
        node = self.nodes[nid]
        if not node.online:
            return
        now = self.engine.now
        if msg.deadline and node.busy_until >= msg.deadline:
            self.net.send(node.id, src, 128, reply, msg.job, msg.step, node.id, None, "", {}, BUSY)
            return
        req = Request(src, msg.job, msg.step, msg.kind, msg.params, msg.deadline, now)
        node.strategy.arrived(req)
        start = max(now, node.busy_until)
        node.busy_until = start + msg.cost_s / node.speed
        self.engine.at(node.busy_until, self._finish, node, node.epoch, reply, req, msg)

    def _finish(self, node: SimNode, epoch: int, reply: Callable[..., None], req: Request, msg: StepMsg) -> None:
        if node.epoch != epoch:
            return  # it went down meanwhile
        node.served += 1
        work: dict[str, Any] = {"cpu_s": round(msg.cost_s / node.speed, 6)}
        if msg.kind == "score":
            output: Any = node.strategy.verify(req, msg.truth, self.engine.now)
            work["tokens"] = TOKENS
        else:
            output = node.strategy.respond(req, msg.truth, self.engine.now)
            if msg.kind == "llm":  # what verifiers are handed to score, under compare 'score'
                work["tokens"], work["token_ids"] = TOKENS, token_ids(output)
        self.net.send(node.id, req.src, 512, reply, msg.job, msg.step, node.id, output, digest(output), work)

    # -- churn --------------------------------------------------------------------------------------
    def start_churn(self, mean_up: float, mean_down: float, crash_fraction: float, join_fraction: float,
                    join_window_s: float) -> None:
        """Late joiners are taken offline now and join at random times; with mean_up > 0, every worker
        then alternates exponential up and down times."""
        self._churn = (mean_up, mean_down, crash_fraction)
        late = self.rng.sample(self.online.members, round(join_fraction * len(self.online))) if join_fraction else []
        for nid in late:
            self.nodes[nid].online = False
            self.online.drop(nid)
            self.engine.after(self.rng.uniform(0, join_window_s), self._return, nid)
        if mean_up > 0:
            for nid in list(self.online.members):
                self.engine.after(self.rng.expovariate(1 / mean_up), self._leave, nid)

    def _leave(self, nid: str) -> None:
        mean_up, mean_down, crash_fraction = self._churn
        node = self.nodes[nid]
        node.online, node.epoch, node.busy_until = False, node.epoch + 1, 0.0
        self.online.drop(nid)
        crashed = self.rng.random() < crash_fraction
        self.leaves += 1
        self.crashes += crashed
        self.trace.add("leave", nid, crashed)
        if not crashed:  # a goodbye: its submitters hear at once instead of waiting for deadlines
            for tell in self.on_leave:
                tell(nid)
        self.engine.after(self.rng.expovariate(1 / mean_down), self._return, nid)

    def _return(self, nid: str) -> None:
        mean_up = self._churn[0]
        self.nodes[nid].online = True
        self.online.add(nid)
        self.trace.add("join", nid)
        self.joins += 1
        if mean_up > 0:
            self.engine.after(self.rng.expovariate(1 / mean_up), self._leave, nid)
