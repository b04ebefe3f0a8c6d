"""Simulator engine speed: events per second of simulations.engine.Engine against SimPy 4 running the same
scenario model in the same process, plus an engine-only microbenchmark (self-rescheduling callbacks with
random delays) that isolates the event queue from the protocol code, which takes most of a full run.

`SimPyEngine` below is Engine's interface on top of `simpy.Environment`: every `at`/`after` is a
`simpy.Timeout` whose one callback calls fn(*args). SimPy breaks ties in time by its own insertion
counter, which follows our scheduling order; `at` lands on exactly the time asked for (see there), and
`run` asks `done()` once per batch as Engine does, so both engines run the same events in the same order:
the trace hashes must match, and the run reports whether they do.

    python -m bench.sim_engine [--scenario baseline] [--steps 5000] [--seed 1] [--pairs 5] [--cpus 0]
                               [--callbacks 1000] [--micro-events 500000] [--json]
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import time
from collections.abc import Callable
from heapq import heappush
from typing import Any

import simpy
from simpy.core import EmptySchedule
from simpy.events import NORMAL

from bench.abab import abab, pin
from bench.report import emit
from simulations.engine import Engine
from simulations.run import Simulation
from simulations.scenario import load


class SimPyEngine:
    """Engine's interface (now, rng, events, fork_rng, at, after, run, pending) over simpy.Environment."""

    def __init__(self, seed: int):
        self.env = simpy.Environment()
        self.rng = random.Random(seed)  # the same seeding as Engine, so fork_rng yields the same streams
        self.events = 0
        self.absolute = 0  # `at` calls whose time no delay reaches (see `at`)

    @property
    def now(self) -> float:
        return self.env.now

    def fork_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))

    def _fire(self, event: simpy.Timeout) -> None:
        fn, args = event.value
        fn(*args)

    def at(self, when: float, fn: Callable[..., Any], *args: Any) -> None:
        env = self.env
        delay = when - env.now
        if delay <= 0:
            delay = 0.0
        elif env.now + delay != when:
            # SimPy stores now + delay, and when - now can round so that no delay at all lands on `when` (a
            # tie rounded to even skips every odd last bit). Engine stores `when` itself, and one ulp off can
            # reorder events, so put this one on SimPy's heap at `when` just as Environment.schedule would.
            self.absolute += 1
            event = simpy.Event(env)
            event._ok, event._value = True, (fn, args)
            event.callbacks.append(self._fire)
            heappush(env._queue, (when, NORMAL, next(env._eid), event))
            return
        env.timeout(delay, (fn, args)).callbacks.append(self._fire)

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        # SimPy stores now + delay, the very sum Engine.after passes to Engine.at: exact by construction
        self.env.timeout(delay if delay > 0 else 0.0, (fn, args)).callbacks.append(self._fire)

    def run(self, done: Callable[[], bool], on_batch: Callable[[], None] | None = None, batch: int = 8192) -> None:
        """Engine.run's contract exactly: `done()` is asked once per batch of `batch` events, not per event,
        so both engines stop after the same event."""
        env, step = self.env, self.env.step
        while env.peek() != math.inf and not done():
            for _ in range(batch):
                self.events += 1
                try:
                    step()
                except EmptySchedule:
                    self.events -= 1
                    break
            if on_batch is not None:
                on_batch()

    @property
    def pending(self) -> int:
        return len(self.env._queue)  # SimPy has no public count of scheduled events


def tie_order(make: Callable[[int], Any]) -> list:
    """Events at equal times, scheduled out of time order, some from inside callbacks: the order they run."""
    eng, seen = make(7), []

    def note(tag: str, more: int = 0) -> None:
        seen.append((eng.now, tag))
        for k in range(more):
            eng.after(0.0, note, f"{tag}.{k}")
            eng.at(eng.now + 0.5, note, f"{tag}+{k}")

    for i in range(20):
        eng.at(float(i % 3), note, f"a{i}", i % 2)
        eng.after(0.1 * (i % 4), note, f"b{i}")
    eng.run(lambda: False, batch=5)
    return seen


def micro(make: Callable[[int], Any], seed: int, callbacks: int, events: int) -> dict:
    """`callbacks` self-rescheduling callbacks with exponential delays from a forked RNG until `events` ran."""
    eng = make(seed)
    rng = eng.fork_rng()
    expo, after = rng.expovariate, eng.after
    mix = [0]

    def tick(i: int) -> None:
        mix[0] = (mix[0] * 31 + i) & 0xFFFFFFFF  # order-sensitive checksum of which callback ran when
        after(expo(1.0), tick, i)

    for i in range(callbacks):
        after(expo(1.0), tick, i)
    gc.collect()
    t0 = time.perf_counter()
    eng.run(lambda: eng.events >= events)
    wall = time.perf_counter() - t0
    return {"events": eng.events, "wall_s": wall, "events_per_s": eng.events / wall,
            "check": f"{mix[0]:08x}@{eng.now:.6f}"}


def full(make: Callable[[int], Any], scenario, seed: int) -> dict:
    eng = make(seed)
    sim = Simulation(scenario, seed, engine=eng)
    gc.collect()
    r = sim.run()
    r["absolute"] = getattr(eng, "absolute", 0)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="baseline", help="built-in name or path (default baseline)")
    ap.add_argument("--steps", type=int, default=5000, help="steps to run (default 5000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=5, help="SimPy/engine runs, alternating (at least 5)")
    ap.add_argument("--cpus", default="0", help="CPU set both engines run on (default 0)")
    ap.add_argument("--callbacks", type=int, default=1000, help="engine-only: live self-rescheduling callbacks")
    ap.add_argument("--micro-events", type=int, default=500_000, help="engine-only: events per run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cpus = pin(args.cpus)
    ties_same = tie_order(Engine) == tie_order(SimPyEngine)
    s, _ = load(args.scenario)
    s = s.replace(steps=args.steps)
    hashes: dict[str, set] = {"engine": set(), "simpy": set()}
    checks: dict[str, set] = {"engine": set(), "simpy": set()}
    runs: dict[str, list[dict]] = {"engine": [], "simpy": [], "micro_engine": [], "micro_simpy": []}

    def whole(name: str, make: Callable[[int], Any]) -> Callable[[], float]:
        def one() -> float:
            r = full(make, s, args.seed)
            hashes[name].add(r["trace_hash"])
            runs[name].append(r)
            return r["events_per_s"]
        return one

    def queue_only(name: str, make: Callable[[int], Any]) -> Callable[[], float]:
        def one() -> float:
            m = micro(make, args.seed, args.callbacks, args.micro_events)
            checks[name].add(m["check"])
            runs[f"micro_{name}"].append(m)
            return m["events_per_s"]
        return one

    ratio = abab("engine_vs_simpy", whole("simpy", SimPyEngine), whole("engine", Engine), args.pairs)
    queue = abab("engine_only_vs_simpy", queue_only("simpy", SimPyEngine), queue_only("engine", Engine), args.pairs)
    med = statistics.median
    ours, theirs = runs["engine"][0], runs["simpy"][0]
    res = {
        "scenario": s.name, "steps": ours["steps"], "seed": args.seed, "pairs": args.pairs, "cpus": cpus,
        "events": ours["events"], "simpy_events": theirs["events"],
        "engine_events_per_s": round(med(r["events_per_s"] for r in runs["engine"])),
        "engine_wall_s": round(med(r["wall_s"] for r in runs["engine"]), 3),
        "simpy_events_per_s": round(med(r["events_per_s"] for r in runs["simpy"])),
        "simpy_wall_s": round(med(r["wall_s"] for r in runs["simpy"]), 3),
        "trace_hash": ours["trace_hash"],
        "same_trace_hash": len(hashes["engine"] | hashes["simpy"]) == 1,
        "tie_order_same": ties_same, "simpy_at_absolute": theirs["absolute"],
        "micro_callbacks": args.callbacks, "micro_events": runs["micro_engine"][0]["events"],
        "micro_engine_events_per_s": round(med(m["events_per_s"] for m in runs["micro_engine"])),
        "micro_simpy_events_per_s": round(med(m["events_per_s"] for m in runs["micro_simpy"])),
        "micro_same_order": len(checks["engine"] | checks["simpy"]) == 1,
        **queue.fields(), **ratio.fields(),
    }
    emit(res, args.json)


if __name__ == "__main__":
    main()
