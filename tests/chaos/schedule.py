"""The chaos schedule: a pure function of a seed. The same seed, node count and duration give the same list
of faults, so a failing run is replayed by its seed alone.

Three faults, each on one node for `duration` seconds, starting `at` seconds after the run starts:

- `kill9`: kill -9 the node's process group; it is started again on the same home `duration` s later
- `stop`: SIGSTOP the node's process group, SIGCONT `duration` s later (a laptop that went to sleep)
- `drop`: cut the node's peer links (both ways, dialling too) for `duration` s; its API stays reachable

Any node may be hit, submitters included. Faults are capped so that jobs can still finish: at most
`max_concurrent` nodes are faulty at once (a fault counts from its start to its end plus `settle` seconds,
time for a restarted node to come up and be linked again), never every node, never two faults on one node.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

ACTIONS = ("kill9", "stop", "drop")
# seconds a fault lasts, drawn uniformly: a killed node's time down before its restart; a stopped node's
# sleep; a cut's length (a peer calls a linked node down after 20 s of silence: some cuts pass that)
DURATIONS = {"kill9": (1.0, 8.0), "stop": (3.0, 20.0), "drop": (4.0, 25.0)}


EPS = 1e-6  # times are whole milliseconds; sums of them are compared with this slack


def _ms_up(t: float) -> float:
    return math.ceil(round(t * 1000, 6)) / 1000


@dataclass(frozen=True)
class Event:
    at: float  # seconds from the run's start
    action: str  # one of ACTIONS
    node: int  # index into the mesh's nodes
    duration: float  # seconds until the node is restarted / continued / linked again

    @property
    def end(self) -> float:
        return self.at + self.duration

    def to_json(self) -> dict:
        return {"at": self.at, "action": self.action, "node": self.node, "duration": self.duration}


def schedule(seed: int, nodes: int, duration_s: float, *, max_concurrent: int = 1, gap: tuple[float, float] = (3.0, 9.0),
             warmup: float = 5.0, settle: float = 4.0, actions: tuple[str, ...] = ACTIONS,
             durations: dict[str, tuple[float, float]] | None = None) -> list[Event]:
    """Faults starting in [warmup, duration_s), sorted by start. The first len(actions) faults are the
    actions in a seeded order, so every kind of fault is exercised once the run is long enough for that
    many; later ones are drawn at random. Times are rounded to milliseconds (exact in JSON)."""
    if nodes < 2:
        raise ValueError("chaos needs at least 2 nodes: faults never take every node at once")
    if not 1 <= max_concurrent < nodes:
        raise ValueError(f"max_concurrent must be from 1 to nodes - 1, got {max_concurrent}")
    unknown = set(actions) - set(ACTIONS)
    if unknown or not actions:
        raise ValueError(f"actions must be a non-empty subset of {ACTIONS}, got {actions}")
    spans = {**DURATIONS, **(durations or {})}
    rng = random.Random(seed)
    first = list(actions)
    rng.shuffle(first)
    events: list[Event] = []
    busy: list[tuple[float, int]] = []  # (when it stops counting: end + settle, node) of faults under way
    t = _ms_up(warmup)
    while True:
        busy = [(until, n) for until, n in busy if until > t + EPS]
        if len(busy) >= max_concurrent:
            t = _ms_up(min(until for until, _ in busy))
            continue
        if t >= duration_s:
            return events
        action = first.pop(0) if first else rng.choice(actions)
        free = [n for n in range(nodes) if n not in {b for _, b in busy}]
        node = rng.choice(free)
        lo, hi = spans[action]
        ev = Event(t, action, node, round(rng.uniform(lo, hi), 3))
        events.append(ev)
        busy.append((ev.end + settle, node))
        t = _ms_up(t + rng.uniform(*gap))


def violations(events: list[Event], nodes: int, max_concurrent: int = 1, settle: float = 4.0) -> list[str]:
    """What in `events` breaks the schedule's rules (empty when none): at most `max_concurrent` faults (each
    counted until end + settle) at once, never all nodes, never two on one node, sorted by start."""
    out = []
    if [e.at for e in events] != sorted(e.at for e in events):
        out.append("events are not sorted by start")
    for i, e in enumerate(events):
        if e.action not in ACTIONS or not 0 <= e.node < nodes or e.duration <= 0 or e.at < 0:
            out.append(f"event {i} is malformed: {e}")
        under_way = [o for o in events[:i] if o.end + settle > e.at + EPS]
        if len(under_way) + 1 > max_concurrent:
            out.append(f"event {i} ({e}) starts while {len(under_way)} faults are under way")
        if len(under_way) + 1 >= nodes:
            out.append(f"event {i} ({e}) would leave no node unharmed")
        if any(o.node == e.node for o in under_way):
            out.append(f"event {i} ({e}) hits a node already faulty")
    return out
