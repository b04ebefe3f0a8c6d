"""A submitter in the simulator: the node's own submission core (mesh.core.submission: JobRuns, worker
slots, spot checks, rechecks, ledger entries) driven on the simulated network and clock. What is left
here is what the simulator stands in for — sending, a ledger that always writes and folds reputation,
the peers each job places among — and the run's trace and metrics."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh.core.dag import MODEL_KINDS, Job
from mesh.core.effects import (
    Alarm,
    Answer,
    Effect,
    Finished,
    Forgotten,
    Judged,
    LedgerEntry,
    Rechecked,
    Record,
    Send,
    Started,
    Timer,
    Wake,
)
from mesh.core.policy import Candidate, Evidence, Reputations, StepEvidence, reputation_group
from mesh.core.spotcheck import Challenge
from mesh.core.submission import CHECK_SPREAD_S, CHECK_TAIL_S, Config, Submission, SubmittedJob, replay_log
from mesh.core.trust import Shared, Testimony, attest, outvote_of
from mesh.wire.canonical import digest

from .board import Board
from .engine import Engine
from .metrics import Metrics
from .network import Network
from .scenario import PolicySpec, Scenario
from .scoring import SCORE_COST, greedy_text
from .trace import Trace
from .world import Roster, SimNode, StepMsg, World

CANDIDATE_TTL_S = 60.0
KEEP_FINISHED = 100_000  # finished jobs kept for rechecks across all submitters (older ones are forgotten)


@dataclass(eq=False)
class SimJob:
    """What only the simulator knows of a job: the right answers, the work, the peers it may use."""

    truths: dict[str, Any]
    costs: dict[str, float]
    pool: list[str]
    created: float
    llm: frozenset[str] = frozenset()  # its llm steps (the core may forget the job in the call that judges it)


class SimLedger:
    """The simulator's ledger port. It writes every batch (a test may make it refuse) and, for a written
    batch only, folds reputation and credits as a node's ledger port (Node.record) does — and, when
    testimony is shared, publishes what it now says of each worker a batch touched."""

    def __init__(self, nodes: dict[str, SimNode], owner: str = "", board: Board | None = None):
        self.nodes = nodes
        self.owner, self.board = owner, board
        self.reputations = Reputations()
        self.evidence, self.streaks = self.reputations.evidence, self.reputations.streaks  # what placement reads
        self.refuse = False

    def record(self, entries: tuple[LedgerEntry, ...], ts_ms: int) -> bool:
        if self.refuse:
            return False
        touched: dict[str, None] = {}
        for e in entries:
            if e.kind == "paid":
                self.nodes[e.peer].earned -= e.amount
                continue
            self.reputations.fold(e.kind, e.peer, ts_ms, e.why if isinstance(e.why, StepEvidence) else None)
            touched[e.peer] = None
            proof = outvote_of(self.owner, e.kind, e.peer, e.job, e.step, e.why, ts_ms) if self.board else None
            if proof is not None:
                self.board.publish(proof, ts_ms / 1000)
        if self.board is not None:
            for peer in touched:
                t = attest(self.owner, peer, self.reputations, ts_ms)
                if t is not None:
                    self.board.publish(t, ts_ms / 1000)
        return True


def make_core(policy: PolicySpec, seed: int, keep: int, record: bool = False,
              check_spread_s: float = CHECK_SPREAD_S, check_tail_s: float = CHECK_TAIL_S) -> Submission:
    """The submission core as the simulator configures it from a scenario's policy."""
    config = Config(seed, policy.spot_rate, policy.blacklist_s, policy.margin, policy.recheck, keep, job_log=record,
                    check_spread_s=check_spread_s, check_tail_s=check_tail_s)
    return Submission(config, record=record)


def replay_core_log(log: list) -> list:
    """Replay a submission core's log — a node's (`mesh node --core-log`) or a simulated submitter's —
    into a core built as the simulator builds its own (the node's settings read as a scenario policy);
    returns the new log, equal to the recorded one when both decided the same."""
    def make(config: Config) -> Submission:
        policy = PolicySpec(margin=config.margin, spot_rate=config.spot_rate, blacklist_s=config.blacklist_s,
                            recheck=config.recheck)
        return make_core(policy, config.seed, config.keep, record=True, check_spread_s=config.check_spread_s,
                         check_tail_s=config.check_tail_s)

    return replay_log(log, make)


class SimSubmitter:
    def __init__(self, nid: str, s: Scenario, engine: Engine, net: Network, world: World, trace: Trace,
                 metrics: Metrics, rng: random.Random, record: bool = False, board: Board | None = None):
        """`record`: keep the core's log and every job's (tests replay them). `board`: where testimony is
        exchanged (None: this submitter judges workers on its own experience only)."""
        self.id, self.s, self.engine, self.net, self.world, self.trace, self.m = nid, s, engine, net, world, trace, metrics
        self.rng = rng
        self.ledger = SimLedger(world.nodes, nid, board)
        self.board = board
        self.shared: Shared | None = None
        if board is not None:
            board.join(nid)
            self.shared = Shared(nid, self.ledger.reputations, world.prefixes)
            self.engine.at(engine.now + s.policy.share_every_s, self._share)
        self.count = 0
        self._known = Roster()  # workers this submitter's own record holds more good than bad of
        # every worker a pool of this submitter's ever named (its peer table): only those can hold anything
        # of its core's (placement, spot checks and rechecks all draw from pools), so only their goodbyes are
        # inputs, and only testimony about them is kept; `_newly_met` since the last share round
        self._met: set[str] = set()
        self._newly_met: list[str] = []
        self._cands: dict[str, tuple[Candidate, float]] = {}
        self.core = make_core(s.policy, rng.getrandbits(64), max(500, KEEP_FINISHED // s.network.submitters), record)
        self.meta: dict[str, SimJob] = {}
        self._checks: dict[str, str] = {}  # a spot check's id on the wire → the core's id for it (private)
        self._wire_of: dict[str, tuple[str, str]] = {}  # a check's core id → (id on the wire, step) its worker saw
        self._effects: dict[type, Callable[[Any], None]] = {
            Send: self._send, Timer: self._timer, Alarm: self._alarm, Wake: self._wake, Record: self._record,
            Started: self._started,
            Answer: self._answer, Judged: self._judged, Rechecked: self._rechecked, Finished: self._finished,
            Forgotten: self._forgotten}

    @property
    def evidence(self) -> dict[str, Evidence]:
        """This submitter's view of each worker's reputation (from its ledger)."""
        return self.ledger.evidence

    @property
    def jobs(self) -> dict[str, SubmittedJob]:
        """Jobs still running."""
        return self.core.active

    # -- inputs -------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        self.count += 1
        job_id = f"{self.id}-{self.count}"
        seed = self.rng.getrandbits(64)
        truths: dict[str, Any] = {}
        for st in job.steps:  # an llm step's truth is its honest greedy text
            bits = self.rng.getrandbits(40)
            truths[st.id] = greedy_text(bits) if st.kind in MODEL_KINDS else bits
        costs = {st.id: self.rng.expovariate(1 / self.s.jobs.cost_s) for st in job.steps}
        self.meta[job_id] = SimJob(truths, costs, self._pool(), self.engine.now,
                                   frozenset(st.id for st in job.steps if st.kind in MODEL_KINDS))
        self._apply(self.core.submit(job_id, job, seed))

    def _pool(self) -> list[str]:
        """The peers a job places among, never this submitter itself: a fresh sample of the workers online
        (peers it meets through the DHT), and up to known_peers of those online it has a good record of.
        A node stays connected to the peers it works with and places among every connected one
        (Node.candidates); drawing all of them afresh for each job made a submitter of a 10,000-node mesh
        meet each worker about once, so nothing it learned was ever used. The known ones are those with
        the longest runs of validated results here, passing over any still running a request of ours:
        drawn at random from thousands, few were met ten times, and `large-10k` still replicated 47% of
        its steps in full at step 50,000 (2.13 replicas a step over 200,000 steps); by longest run alone,
        the same few were sent every lone step, queued behind each other and refused the rest."""
        k = self.s.network.peer_sample
        pool = [n for n in self.world.sample(k + 1) if n != self.id][:k]
        if self.board is not None:
            self._newly_met.extend(n for n in pool if n not in self._met)
        self._met.update(pool)
        known = self._known.members
        if known and self.s.network.known_peers:
            nodes, seen, engaged = self.world.nodes, set(pool), self.core.engaged
            want = self.s.network.known_peers
            for n in sorted(known, key=self._run_of):  # longest run first (ties: as they became known)
                if n not in seen and nodes[n].online and not engaged(n):
                    pool.append(n)
                    want -= 1
                    if not want:
                        break
        return pool

    def _run_of(self, nid: str) -> int:
        """Sort key: the longer a worker's run of validated results here, the sooner it is linked."""
        return -self._candidate(nid).streak

    def _share(self) -> None:
        """Read the testimony that reached this submitter and weigh its issuers again."""
        assert self.shared is not None and self.board is not None
        now = self.engine.now
        now_ms = int(now * 1000)
        # workers met since the last round: what each issuer said of them by then (later posts come below)
        fresh, self._newly_met = self._newly_met, []  # (distinct: each is added once, when first met)
        until = self.board.last_read.get(self.id, 0.0)
        self.shared.take_all(t for w in fresh for t in self.board.said_of(w, until))
        posts = self.board.read(self.id, now)
        # testimony about workers in this submitter's table only, as a node keeps it (Testimonies.heard):
        # read by every submitter, all of it was a third of a 100,000-node run's time
        # (testimony and outvotes touch apart state: `about`, and `proven` by own evidence alone)
        met = self._met
        self.shared.take_all([p for p in posts if type(p) is Testimony and p.worker in met])
        for post in posts:
            if type(post) is not Testimony:
                self.shared.take_outvote(post, now_ms)
        self.shared.refresh(now_ms)
        self._cands.clear()
        for r in self.shared.reports(now_ms):
            act = self.core.on_reported if r.evidence else self.core.on_suspected
            self._apply(act(r.worker, r.reason, now))
        self.engine.at(now + self.s.policy.share_every_s, self._share)

    def _drive(self, job_id: str) -> None:
        if job_id in self.core.active:
            self._apply(self.core.tick(job_id, self._candidates(job_id), self.engine.now))

    def on_result(self, job_id: str, step: str, node: str, output: Any, claimed: str, work: dict,
                  error: str = "") -> None:
        check = self._checks.pop(job_id, None)
        self.m.refused += check is None and error.startswith("busy")
        job_id = check or job_id
        self._apply(self.core.on_result(node, job_id, step, not error, claimed, output, work, error, self.engine.now))

    def on_node_lost(self, node: str) -> None:
        """A worker's goodbye: an input only where the worker may hold something of this submitter's, as
        a node asks core.holds first. Told to every submitter, a leave of a 100,000-node network cost 200
        scans of every job running (13-15% of a huge-100k run); a worker never in a pool here holds nothing."""
        if node in self._met:
            self._apply(self.core.on_node_lost(node, "left the mesh", self.engine.now))

    def _on_alarm(self) -> None:
        self._apply(self.core.on_alarm(self.engine.now))

    def _candidate(self, nid: str) -> Candidate:
        """A worker as placement sees it. Cached until its evidence changes or a minute passes: decay
        over a minute is a millionth of the week-long half-life, and scoring every peer on every event
        was most of the run time."""
        now = self.engine.now
        hit = self._cands.get(nid)
        if hit is not None and now - hit[1] < CANDIDATE_TTL_S:
            return hit[0]
        prefix = self.world.nodes[nid].prefix
        now_ms = int(now * 1000)
        if self.shared is not None:
            st = self.shared.standing(nid, now_ms)
            rep, streak, verified = st.evidence.score(now_ms), st.streak, st.evidence.good
        elif self.s.policy.reputation:
            ev = self.evidence.get(nid)
            rep, streak = (ev.score(now_ms) if ev else 0.5), self.ledger.streaks.get(nid, 0)
            verified = ev.decayed(now_ms)[0] if ev else 0.0
        else:  # no reputation at all: every worker alike
            rep, streak, verified = 0.5, self.ledger.streaks.get(nid, 0), None
        cand = Candidate(nid, rep, prefix, streak, reputation_group(prefix, rep), verified=verified)
        self._cands[nid] = (cand, now)
        return cand

    def _candidates(self, job_id: str) -> dict[str, list[Candidate]]:
        nodes = self.world.nodes
        cands = [self._candidate(nid) for nid in self.meta[job_id].pool if nodes[nid].online]
        if self.s.jobs.llm_share > 0:  # every simulated worker serves the default model
            return {"python": cands, "llm:default": cands}
        return {"python": cands}

    # -- effects ------------------------------------------------------------------------------------
    def _apply(self, effects: list[Effect]) -> None:
        for eff in effects:
            self._effects[type(eff)](eff)

    def _send(self, eff: Send) -> None:
        if eff.check is not None:
            self._send_check(eff, eff.check)
            return
        sj = self.meta[eff.job]
        self.trace.add("send", eff.job, eff.step, eff.node)
        self.m.replicas += 1
        self.m.llm_generations += eff.kind in MODEL_KINDS
        self.m.llm_scorings += eff.kind == "score"
        cost = sj.costs[eff.step] * (SCORE_COST if eff.kind == "score" else 1.0)
        msg = StepMsg(eff.job, eff.step, sj.truths[eff.step], cost, eff.params, eff.kind, eff.deadline)
        self.net.send(self.id, eff.node, 1024, self.world.receive, eff.node, self.on_result, self.id, msg)

    def _send_check(self, eff: Send, ch: Challenge) -> None:
        """A spot check goes out as this submitter's next job would: an id from the same sequence, the
        replayed step's id, params and cost. An honest worker computes the replayed step's real answer
        (which a wrongly accepted known answer would not match), or a synthetic one's."""
        self.count += 1
        wire = f"{self.id}-{self.count}"
        self._checks[wire] = eff.job
        self._wire_of[eff.job] = (wire, eff.step)
        for d in (self._checks, self._wire_of):  # checks never answered or judged: the oldest go
            if len(d) > KEEP_FINISHED:
                del d[next(iter(d))]
        self.m.spot_checks += 1
        self.trace.add("check", wire, eff.step, eff.node)
        src = self.meta.get(ch.source[0]) if ch.source is not None else None
        step = ch.source[1] if ch.source is not None else ""
        truth = src.truths[step] if src is not None else ch.expected
        cost = src.costs[step] if src is not None else self.s.jobs.cost_s * 0.1
        msg = StepMsg(wire, eff.step, truth, cost, eff.params, eff.kind, eff.deadline)
        self.net.send(self.id, eff.node, 1024, self.world.receive, eff.node, self.on_result, self.id, msg)

    def _timer(self, eff: Timer) -> None:
        self.engine.at(eff.at, self._drive, eff.job)

    def _alarm(self, eff: Alarm) -> None:
        self.engine.at(eff.at, self._on_alarm)

    def _wake(self, eff: Wake) -> None:
        self._drive(eff.job)

    def _record(self, eff: Record) -> None:
        ok = self.ledger.record(eff.entries, int(self.engine.now * 1000))
        if ok:
            evidence, remember = self.ledger.evidence, self.s.network.known_peers > 0
            for e in eff.entries:
                self._cands.pop(e.peer, None)  # its reputation changed
                if remember:  # (decay scales good and bad alike: no clock needed to compare them)
                    ev = evidence.get(e.peer)
                    (self._known.add if ev is not None and ev.good > ev.bad else self._known.drop)(e.peer)
        for o in eff.outcomes:
            sj = self.core.jobs[eff.job]
            self.trace.add("settle", eff.job, o.step, o.accepted, o.digest[:16], list(o.agreeing))
            nodes = self.world.nodes
            for w in (*o.agreeing, *o.dissenting, *o.failed):  # what each worker's receipt (or none) tells it
                nodes[w].strategy.settled(eff.job, o.step, o.accepted and w in o.agreeing, self.engine.now)
            if sj.recheck_of is None:
                st = sj.run.steps[o.step]
                wrong = o.accepted and o.digest != digest(self.meta[eff.job].truths[o.step])
                self.m.settled(o.accepted, wrong, len(st.replicas), self.engine.now, st.kind in MODEL_KINDS,
                               st.comparator.kind == "score" and not st.scoring)
        self.core.on_recorded(eff.id, ok, "" if ok else "the simulated ledger refused the batch")

    def _started(self, eff: Started) -> None:
        if eff.recheck_of is not None:
            job_id, sid = eff.recheck_of
            orig = self.meta[job_id]
            self.meta[eff.job] = SimJob({sid: orig.truths[sid]}, {sid: orig.costs[sid]}, self._pool(), self.engine.now,
                                        orig.llm & {sid})
            self.m.rechecks += 1
        self.trace.add("job", eff.job, len(self.core.jobs[eff.job].run.job.steps), eff.recheck_of)
        self._drive(eff.job)

    def _answer(self, eff: Answer) -> None:
        if eff.taken:
            self.trace.add("answer", eff.job, eff.step, eff.node, eff.digest[:16])

    def _judged(self, eff: Judged) -> None:
        self.trace.add("spot", eff.node, eff.passed)
        self.m.caught += not eff.passed
        seen = self._wire_of.pop(eff.check, None)
        if seen is not None:  # a passed check is paid like work; a failed one is not
            self.world.nodes[eff.node].strategy.settled(*seen, eff.passed, self.engine.now)

    def _rechecked(self, eff: Rechecked) -> None:
        self.trace.add("recheck", eff.job, eff.step, eff.verdict)
        if eff.verdict == "overturned":
            truth = digest(self.meta[eff.job].truths[eff.step])
            llm = eff.step in self.meta[eff.job].llm  # (not core.jobs: a verdict may let the job go at once)
            self.m.overturned(eff.before != truth, eff.after != truth, llm)

    def _finished(self, eff: Finished) -> None:
        sj = self.core.jobs[eff.job]
        if sj.recheck_of is None:  # steps skipped after an earlier one failed count as failed steps
            for st in sj.run.steps.values():
                if st.status == "skipped":
                    self.m.settled(False, False, 0, self.engine.now, st.kind in MODEL_KINDS)
            self.m.job_done(self.engine.now - self.meta[eff.job].created)
        self.trace.add("done", eff.job, eff.status)

    def _forgotten(self, eff: Forgotten) -> None:
        del self.meta[eff.job]
