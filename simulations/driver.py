"""A submitter in the simulator: drives the real sans-I/O JobRun, SpotChecker, Evidence and placement
exactly as mesh.node.submitter does over sockets, with the simulated network and clock in their place."""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from mesh.core.dag import Job
from mesh.core.jobrun import JobRun, Outcome
from mesh.core.policy import Candidate, Evidence, next_streak, reputation_group
from mesh.core.spotcheck import Challenge, SpotChecker
from mesh.wire.canonical import digest

from .engine import Engine
from .metrics import Metrics
from .network import Network
from .scenario import Scenario
from .trace import Trace
from .world import StepMsg, World

CANDIDATE_TTL_S = 60.0
KEEP_FINISHED = 100_000  # finished jobs kept for rechecks across all submitters (older ones are forgotten)


@dataclass(eq=False)
class SimJob:
    run: JobRun
    truths: dict[str, Any]
    costs: dict[str, float]
    pool: list[str]
    created: float
    recheck_of: tuple[str, str] | None = None


class SimSubmitter:
    def __init__(self, nid: str, s: Scenario, engine: Engine, net: Network, world: World, trace: Trace,
                 metrics: Metrics, rng: random.Random):
        self.id, self.s, self.engine, self.net, self.world, self.trace, self.m = nid, s, engine, net, world, trace, metrics
        self.rng = rng
        self.evidence: dict[str, Evidence] = {}
        self.streaks: dict[str, int] = {}
        self.spot = SpotChecker(s.policy.spot_rate, s.policy.blacklist_s, random.Random(rng.getrandbits(64)))
        self.jobs: dict[str, SimJob] = {}
        self.finished: OrderedDict[str, SimJob] = OrderedDict()
        self.count = 0
        self._cands: dict[str, tuple[Candidate, float]] = {}
        self.keep = max(500, KEEP_FINISHED // s.network.submitters)  # 20,000 each with 5 submitters
        self.record = False  # keep each job's core log (tests compare it with a replay)
        self.seeds: dict[str, int] = {}

    # -- jobs ---------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        self.count += 1
        job_id = f"{self.id}-{self.count}"
        seed = self.rng.getrandbits(64)
        run = JobRun(job_id, job, random.Random(seed), margin=self.s.policy.margin, record=self.record)
        if self.record:
            self.seeds[job_id] = seed
        truths = {st.id: self.rng.getrandbits(40) for st in job.steps}
        costs = {st.id: self.rng.expovariate(1 / self.s.jobs.cost_s) for st in job.steps}
        self._start(job_id, SimJob(run, truths, costs, self.world.sample(self.s.network.peer_sample),
                                   self.engine.now))

    def _start(self, job_id: str, sj: SimJob) -> None:
        self.jobs[job_id] = sj
        self.trace.add("job", job_id, len(sj.run.job.steps), sj.recheck_of)
        self._drive(job_id)

    def _candidate(self, nid: str) -> Candidate:
        """A worker as placement sees it. Cached until its evidence changes or a minute passes: decay
        over a minute is a millionth of the week-long half-life, and scoring every peer on every event
        was most of the run time."""
        now = self.engine.now
        hit = self._cands.get(nid)
        if hit is not None and now - hit[1] < CANDIDATE_TTL_S:
            return hit[0]
        ev = self.evidence.get(nid) if self.s.policy.reputation else None
        rep = ev.score(int(now * 1000)) if ev else 0.5
        prefix = self.world.nodes[nid].prefix
        cand = Candidate(nid, rep, prefix, self.streaks.get(nid, 0), reputation_group(prefix, rep))
        self._cands[nid] = (cand, now)
        return cand

    def _candidates(self, sj: SimJob) -> dict[str, list[Candidate]]:
        now, nodes, banned = self.engine.now, self.world.nodes, self.spot.banned
        return {"python": [self._candidate(nid) for nid in sj.pool
                           if nodes[nid].online and not (nid in banned and self.spot.blacklisted(nid, now))]}

    def _drive(self, job_id: str) -> None:
        sj = self.jobs.get(job_id)
        if sj is None:
            return
        run, now = sj.run, self.engine.now
        run.on_time(now)
        for d in run.advance(self._candidates(sj), now, self.spot.held(now) if self.spot.out else frozenset()):
            self._dispatch(job_id, sj, d.step, d.node, d.deadline)
        outcomes = run.take_outcomes()
        if outcomes:
            self._settle(job_id, sj, outcomes)
        if run.finished:
            self._finish(job_id, sj)

    def _dispatch(self, job_id: str, sj: SimJob, step: str, node: str, deadline: float) -> None:
        self.trace.add("send", job_id, step, node)
        self.m.replicas += 1
        msg = StepMsg(job_id, step, sj.truths[step], sj.costs[step])
        self.net.send(self.id, node, 1024, self.world.receive, node, self.on_result, self.id, msg)
        self.engine.at(deadline, self._drive, job_id)
        challenge = self.spot.challenge("python")
        if challenge is not None:
            spot_id = f"spot-{self.id}-{self.m.spot_checks}"
            self.m.spot_checks += 1
            self.spot.issue(spot_id, node, challenge, deadline)
            self.engine.at(deadline, self._expire_spot, spot_id, node)
            check = StepMsg(spot_id, "check", challenge.expected, self.s.jobs.cost_s * 0.1)
            self.net.send(self.id, node, 1024, self.world.receive, node, self.on_result, self.id, check)

    def on_result(self, job_id: str, step: str, node: str, output: Any, work: dict) -> None:
        challenge = self.spot.take(job_id, node)
        if challenge is not None:
            self._judge_spot(challenge, node, output)
            return
        sj = self.jobs.get(job_id)
        if sj is None:
            return
        sj.run.on_time(self.engine.now)
        d = digest(output)
        if sj.run.on_result(step, node, True, d, output, work, ""):
            self.trace.add("answer", job_id, step, node, d[:16])
            self._drive(job_id)

    def on_node_lost(self, node: str) -> None:
        for job_id, sj in list(self.jobs.items()):
            if any(node in st.tally.pending for st in sj.run.steps.values() if st.tally):
                sj.run.on_node_lost(node, "left the mesh")
                self._drive(job_id)

    # -- judging ------------------------------------------------------------------------------------
    def _note(self, kind: str, node: str, agreeing: tuple[str, ...] = ()) -> None:
        ev = self.evidence.get(node)
        if ev is None:
            ev = self.evidence[node] = Evidence()
        ev.add(kind, int(self.engine.now * 1000))
        self._cands.pop(node, None)
        self.streaks[node] = next_streak(self.streaks.get(node, 0), kind, {"why": {"agreeing": agreeing}})

    def _settle(self, job_id: str, sj: SimJob, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            for kind, node in o.verdicts():
                self._note(kind, node, o.agreeing)
            for node in o.agreeing:
                self.world.nodes[node].earned += o.credit_of(node)
            self.trace.add("settle", job_id, o.step, o.accepted, o.digest[:16], list(o.agreeing))
            if sj.recheck_of is None:
                wrong = o.accepted and o.digest != digest(sj.truths[o.step])
                self.m.settled(o.accepted, wrong, len(sj.run.steps[o.step].replicas), self.engine.now)
            if o.accepted and self.s.policy.recheck:
                self.spot.vouch(o.agreeing, job_id, o.step)

    def _judge_spot(self, challenge: Challenge, node: str, output: Any) -> None:
        passed = self.spot.judge(node, challenge, True, output, self.engine.now)
        self.trace.add("spot", node, passed)
        if not passed:
            self._caught(node)
        self._wake_holding(node)

    def _expire_spot(self, spot_id: str, node: str) -> None:
        """An unanswered check is dropped unpunished (as on a real node); what it held may settle."""
        self.spot.out.pop(spot_id, None)
        self._wake_holding(node)

    def _wake_holding(self, node: str) -> None:
        """Steps this worker answered may have waited for its check: drive their jobs again."""
        for job_id, sj in list(self.jobs.items()):
            if any(node in st.replicas for st in sj.run.steps.values() if st.status == "running"):
                self._drive(job_id)

    def _caught(self, node: str) -> None:
        self.m.caught += 1
        self._note("spot_failed", node)
        for sj in list(self.jobs.values()):
            sj.run.on_node_distrusted(node, "failed a spot check")
        for job_id, sid in self.spot.to_recheck(node):
            orig = self.jobs.get(job_id) or self.finished.get(job_id)
            if orig is None or orig.run.steps[sid].status != "done" or orig.recheck_of is not None:
                continue
            self.count += 1
            rid = f"{self.id}-{self.count}"
            run = JobRun.recheck(rid, orig.run, sid, random.Random(self.rng.getrandbits(64)))
            self.m.rechecks += 1
            self._start(rid, SimJob(run, {sid: orig.truths[sid]}, {sid: orig.costs[sid]},
                                    self.world.sample(self.s.network.peer_sample), self.engine.now, (job_id, sid)))

    def _finish(self, job_id: str, sj: SimJob) -> None:
        del self.jobs[job_id]
        if sj.recheck_of is None:  # steps skipped after an earlier one failed count as failed steps
            for st in sj.run.steps.values():
                if st.status == "skipped":
                    self.m.settled(False, False, 0, self.engine.now)
        self.trace.add("done", job_id, sj.run.status)
        if sj.recheck_of is not None:
            self._judge_recheck(sj)
            return
        self.m.job_done(self.engine.now - sj.created)
        self.finished[job_id] = sj
        if len(self.finished) > self.keep:
            self.finished.popitem(last=False)

    def _judge_recheck(self, sj: SimJob) -> None:
        job_id, sid = sj.recheck_of or ("", "")
        orig = self.jobs.get(job_id) or self.finished.get(job_id)
        if orig is None:
            return
        truth = digest(orig.truths[sid])
        was_wrong = orig.run.steps[sid].digest != truth
        verdict, vouched = orig.run.apply_recheck(sid, sj.run)
        for node in vouched:
            self._note("disagreed", node)
        self.trace.add("recheck", job_id, sid, verdict)
        if verdict == "overturned":
            self.m.overturned(was_wrong, orig.run.steps[sid].digest != truth)
