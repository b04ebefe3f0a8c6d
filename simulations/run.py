"""One simulation run: build the population from a scenario and a seed, drive the submitters, and
summarise. `simulate` is a pure function of (scenario, seed): the trace hash proves it."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import sys
import time
from pathlib import Path
from typing import IO

from mesh.core.dag import Job, parse_job

from .adversaries import SideChannel, Strategy, Vouching, strategy_class
from .board import Board
from .driver import SimSubmitter
from .engine import Engine
from .metrics import Metrics, auc, gini, percentile
from .network import Network, Partition
from .scenario import Scenario, parse_text
from .scoring import SCORE_COST, TOKENS
from .trace import Diverged, Trace, TraceError, footer, header, read_header
from .world import SimNode, World

SNAPSHOTS = 50  # points on the over-time plots
SAMPLE_PER_CLASS = 300  # nodes per class whose reputation is averaged at each snapshot


def chain(length: int, s: Scenario, llm: tuple[bool, ...] = ()) -> Job:
    """A chain of `length` python steps; those `llm` marks are greedy llm steps, compared as the
    scenario's jobs.llm_compare says."""
    j = s.jobs

    def step(i: int) -> dict:
        if i < len(llm) and llm[i]:
            return {"id": f"s{i}", "kind": "llm", "params": {"prompt": f"step {i}", "max_tokens": TOKENS},
                    "compare": j.llm_compare}
        return {"id": f"s{i}", "kind": "python", "params": {"code": f"step {i}"}}

    steps = [step(i) | ({"after": [f"s{i - 1}"]} if i else {}) for i in range(length)]
    return parse_job({"name": f"chain-{length}", "redundancy": j.redundancy, "quorum": j.quorum,
                      "adaptive": j.adaptive, "timeout": j.timeout_s, "max_replicas": j.max_replicas,
                      "steps": steps})


GC_YOUNG = 100_000  # allocations between two young collections while a run goes (Python's default: 700)


@contextlib.contextmanager
def young_collections_every(allocations: int):
    """Python's cyclic collector, less often for the duration: a simulated network is millions of small
    objects that live long (testimony, evidence, jobs) and make few cycles. `huge-100k`, 40,000 steps, two
    runs side by side: 269.4 s at the default (a young collection every 700 allocations), 225.7 s with
    this; the same trace and the same peak RSS (3,590 MiB), so nothing piles up uncollected. The
    previous thresholds come back after, whatever happens."""
    old = gc.get_threshold()
    gc.set_threshold(allocations, old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)


class Simulation:
    def __init__(self, s: Scenario, seed: int, out: IO[str] | None = None, expect: IO[str] | None = None,
                 engine: Engine | None = None, record: bool = False):
        """`engine`: another engine with Engine's interface (the SimPy one in bench/), seeded with `seed`.
        `record`: the submitters keep their cores' logs (tests replay them)."""
        self.s, self.seed, self.record = s, seed, record
        self.engine = engine or Engine(seed)
        self.trace = Trace(lambda: self.engine.now, out, expect)
        self.m = Metrics()
        self.net = Network(self.engine, self.engine.fork_rng(), s.network.loss)
        self.world = World(self.engine, self.net, self.trace, self.engine.fork_rng())
        self.submitters: list[SimSubmitter] = []
        self.templates = [chain(n, s) for n in range(s.jobs.steps_min, s.jobs.steps_max + 1)]
        self.submitted = 0
        self._build()

    def _build(self) -> None:
        s, rng = self.s, self.engine.fork_rng()
        n = s.network
        ids = [f"n{i:0{len(str(n.nodes))}d}" for i in range(n.nodes)]
        workers = ids[n.submitters:]  # adversaries are drawn from these
        is_worker = set(ids if n.submitters_work else workers)
        order = list(workers)
        rng.shuffle(order)
        behaviour: dict[str, Strategy] = {}
        prefix: dict[str, str] = {}
        at = 0
        channels: dict[str, dict] = {}  # group → the side channel its members share (SideChannel)
        for k, a in enumerate(s.adversaries):
            cls, srng = strategy_class(a.strategy), self.engine.fork_rng()
            count = round(a.fraction * len(workers))
            for j, nid in enumerate(order[at:at + count]):
                group = a.group or f"{a.strategy}{k}"
                behaviour[nid] = cls(srng, a.rate, group, a.good_steps)
                if isinstance(behaviour[nid], SideChannel):
                    behaviour[nid].channel = channels.setdefault(group, {})
                if a.prefixes:
                    prefix[nid] = f"adv{k}.{j % a.prefixes}"
            at += count
        honest = Strategy(self.engine.fork_rng())
        prefixes = n.prefixes or len(ids)
        median_s = n.latency_ms / 1000
        for nid in ids:
            node = SimNode(nid, prefix.get(nid) or f"p{rng.randrange(prefixes)}",
                           rng.lognormvariate(0, s.speed.sigma), behaviour.get(nid, honest))
            self.net.attach(nid, median_s * rng.lognormvariate(0, n.latency_sigma) if median_s else 0.0,
                            n.bandwidth_mbps * 1e6)
            self.world.add(node, worker=nid in is_worker)
        for p in n.partitions:
            cut = frozenset(rng.sample(ids, max(1, round(p.fraction * len(ids)))))
            self.net.partitions.append(Partition(p.start_s, p.end_s, cut))
        board = Board(s.policy.share_delay_s) if s.policy.shared and s.policy.reputation else None
        self._voices(behaviour, ids, board)
        for nid in ids[:n.submitters]:
            sub = SimSubmitter(nid, s, self.engine, self.net, self.world, self.trace, self.m, self.engine.fork_rng(),
                               self.record, board)
            self.submitters.append(sub)
            self.world.on_leave.append(sub.on_node_lost)
        self.submitter_ids = {sub.id for sub in self.submitters}
        c = s.churn
        if c.mean_uptime_s > 0 or c.join_fraction > 0:
            self.world.start_churn(c.mean_uptime_s, c.mean_downtime_s, c.crash_fraction, c.join_fraction,
                                   c.join_window_s)
        self.arrivals = self.engine.fork_rng()
        # which steps are llm steps: an RNG of its own, forked last, so runs without them are as before
        self.kinds = self.engine.fork_rng() if s.jobs.llm_share > 0 else None
        self._mixed: dict[tuple[bool, ...], Job] = {}
        self.engine.after(self.arrivals.expovariate(s.jobs.rate_per_s), self._arrive)

    def _arrive(self) -> None:
        job = self.templates[self.arrivals.randrange(len(self.templates))]
        if self.kinds is not None:
            llm = tuple(self.kinds.random() < self.s.jobs.llm_share for _ in job.steps)
            job = self._mixed.get(llm) or self._mixed.setdefault(llm, chain(len(llm), self.s, llm))
        self.submitters[self.arrivals.randrange(len(self.submitters))].submit(job)
        self.submitted += len(job.steps)
        if self.submitted < self.s.steps:
            self.engine.after(self.arrivals.expovariate(self.s.jobs.rate_per_s), self._arrive)

    def _voices(self, behaviour: dict[str, Strategy], ids: list[str], board: Board | None) -> None:
        """Adversaries that publish testimony (Vouching) learn their group and everyone else, and post
        what they say where submitters read testimony, as often as a submitter posts its own."""
        talkers = {nid: b for nid, b in behaviour.items() if isinstance(b, Vouching)}
        if board is None or not talkers:
            return
        groups: dict[str, list[str]] = {}
        for nid, b in talkers.items():
            groups.setdefault(b.group, []).append(nid)
        for b in talkers.values():
            b.members = groups[b.group]
            b.others = [n for n in ids if behaviour.get(n) is None or behaviour[n].group != b.group]
        every = self.s.policy.share_every_s

        def post() -> None:
            now_ms = int(self.engine.now * 1000)
            for nid, b in talkers.items():
                if self.world.nodes[nid].online:
                    for t in b.testimony(nid, now_ms):
                        board.publish(t, self.engine.now)
            self.engine.at(self.engine.now + every, post)

        self.engine.at(every, post)

    def done(self) -> bool:
        return self.submitted >= self.s.steps and not any(sub.jobs for sub in self.submitters)

    def run(self, progress: bool = False) -> dict:
        started = time.perf_counter()
        last = [started, 0]

        def on_batch() -> None:
            if self.m.steps >= last[1]:
                self._snapshot()
                last[1] = self.m.steps + max(1, self.s.steps // SNAPSHOTS)
            now = time.perf_counter()
            if progress and now - last[0] >= 0.5:
                last[0] = now
                frac = min(1.0, self.m.steps / self.s.steps)
                bar = "#" * int(frac * 30)
                print(f"\r{self.s.name}: [{bar:<30}] {frac:4.0%} {self.m.steps}/{self.s.steps} steps, "
                      f"{self.engine.events} events, {now - started:.0f} s", end="", file=sys.stderr, flush=True)

        with young_collections_every(GC_YOUNG):
            self.engine.run(self.done, on_batch, batch=1024)
        self._snapshot()
        wall = time.perf_counter() - started
        if progress:
            print(file=sys.stderr)
        return self.summary(wall)

    def _classes(self) -> dict[str, list[SimNode]]:
        out: dict[str, list[SimNode]] = {}
        for node in self.world.nodes.values():
            if node.id not in self.submitter_ids:
                out.setdefault(node.cls, []).append(node)
        return out

    def reputation(self, nid: str) -> float:
        """The mean of the submitters' views (0.5 for a node none of them has judged)."""
        now_ms = int(self.engine.now * 1000)
        views = [sub.evidence[nid].score(now_ms) for sub in self.submitters if nid in sub.evidence]
        return sum(views) / len(views) if views else 0.5

    def _snapshot(self) -> None:
        reps = {cls: sum(self.reputation(n.id) for n in nodes[:SAMPLE_PER_CLASS]) / min(len(nodes), SAMPLE_PER_CLASS)
                for cls, nodes in self._classes().items()}
        self.m.series.append({"t": round(self.engine.now, 3), "steps": self.m.steps,
                              "replicas_per_step": round(self.m.window_replicas(), 4), "reputation": reps})

    def summary(self, wall: float) -> dict:
        m, classes = self.m, self._classes()
        workers = [n for nodes in classes.values() for n in nodes]
        adversary = [n for n in workers if n.strategy.adversary]
        earned = sum(n.earned for n in workers)
        honest_reps = [self.reputation(n.id) for n in workers if not n.strategy.adversary]
        adv_reps = [self.reputation(n.id) for n in adversary]
        roc = auc(honest_reps, adv_reps)
        return {
            "scenario": self.s.name, "seed": self.seed, "nodes": self.s.network.nodes,
            "steps": m.steps, "jobs": len(m.latencies), "accepted": m.accepted, "failed": m.failed,
            "wrong_accepted": m.wrong_final, "wrong_accepted_rate": m.wrong_final / max(1, m.steps),
            "wrong_at_settle_rate": m.wrong_at_settle / max(1, m.steps),
            "replicas_per_step": round(m.replicas / max(1, m.steps), 4),
            "spot_checks_per_step": round(m.spot_checks / max(1, m.steps), 4),
            "refused_per_step": round(m.refused / max(1, m.steps), 4),
            "llm_steps": m.llm_steps, "llm_wrong_accepted": m.llm_wrong_final,
            "llm_wrong_per_1000": round(1000 * m.llm_wrong_final / max(1, m.llm_steps), 2),
            "llm_wrong_at_settle": m.llm_wrong_at_settle,
            "llm_replicas_per_step": round(m.llm_replicas / max(1, m.llm_steps), 4),
            "llm_generations_per_step": round(m.llm_generations / max(1, m.llm_steps), 4),
            "llm_scorings_per_step": round(m.llm_scorings / max(1, m.llm_steps), 4),
            # in generations' time: a scoring takes about a quarter of one (scoring.SCORE_COST)
            "llm_cost_per_step": round((m.llm_generations + SCORE_COST * m.llm_scorings) / max(1, m.llm_steps), 4),
            "score_fallbacks": m.fallbacks,
            "caught": m.caught, "rechecks": m.rechecks, "overturned": m.overturns,
            "latency_p50": round(percentile(m.latencies, 0.5), 3),
            "latency_p99": round(percentile(m.latencies, 0.99), 3),
            "virtual_s": round(self.engine.now, 3), "events": self.engine.events,
            "events_per_s": round(self.engine.events / wall) if wall > 0 else 0, "wall_s": round(wall, 3),
            "messages_lost": self.net.dropped, "joins": self.world.joins, "leaves": self.world.leaves,
            "crashes": self.world.crashes,
            "credit_gini": round(gini([n.earned for n in workers]), 4),
            "adversary_credit_share": round(sum(n.earned for n in adversary) / earned, 4) if earned else 0.0,
            "adversary_id_share": round(len(adversary) / max(1, len(workers)), 4),
            "reputation_auc": None if roc is None or math.isnan(roc) else round(roc, 4),
            "trace_records": self.trace.records, "trace_hash": self.trace.hash,
        }


def simulate(s: Scenario, text: str, source: str, seed: int, trace_path: Path | None = None,
             progress: bool = False, overrides: dict | None = None) -> tuple[dict, Simulation]:
    out = trace_path.open("w") if trace_path else None
    try:
        if out:
            out.write(header(text, source, seed, overrides or {}) + "\n")
        sim = Simulation(s, seed, out)
        result = sim.run(progress)
        if out:
            out.write(footer(result["trace_hash"], sim.trace.records) + "\n")
    finally:
        if out:
            out.close()
    return result, sim


def replay(path: Path, progress: bool = False) -> tuple[bool, str, dict]:
    """Re-run a trace; (reproduced, message, result). Stops at the first record that differs."""
    head, f = read_header(path)
    with f:
        s = parse_text(head["scenario"], head.get("source", "trace"))
        if head.get("overrides"):
            s = s.replace(**head["overrides"])
        sim = Simulation(s, int(head["seed"]), expect=f)
        try:
            result = sim.run(progress)
        except Diverged as exc:
            return False, str(exc), {}
        tail = f.readline()
        try:
            recorded = json.loads(tail)["trace_hash"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise TraceError(f"{path}: the trace has more records than the replay, or no footer") from None
    if recorded != result["trace_hash"]:
        return False, f"trace hash differs: recorded {recorded}, replay {result['trace_hash']}", result
    return True, f"reproduced {sim.trace.records} records bit for bit: trace hash {recorded}", result
