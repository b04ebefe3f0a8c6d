"""The submitter's sans-I/O core, one per submitting node: every job's JobRun, each worker's slots and
queue, spot checks, rechecks, and settled steps turned into ledger entries. Drivers (the node's asyncio
submitter, the simulator) feed it events with the time and get effects back (mesh.core.effects); it
never touches a socket, a clock or a global RNG, so both drivers make the same decisions and a recorded
log replays exactly (replay_log)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.core.dag import Job, parse_job
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
    as_json,
)
from mesh.core.jobrun import Dispatch, JobRun, Outcome, Replica, lone_limit
from mesh.core.policy import Candidate, RecheckEvidence, StepEvidence, candidate_from
from mesh.core.pricing import cap, observed, pay, quantity
from mesh.core.spotcheck import WORTH_SLACK, Challenge, SpotChecker
from mesh.errors import JobError
from mesh.wire.canonical import digest

PER_WORKER = 4  # requests a worker takes from one peer at once (mesh.node.flow.Limits.max_inflight_per_peer)
MIN_TIMEOUT_S = 1.0  # a request is never sent with less time than this to answer
CHECK_SPREAD_S = 30.0  # a spot check goes out at a random moment up to this long after the placement it follows
# ... or, one time in CHECK_TAIL_SHARE, at a log-uniform moment between CHECK_SPREAD_S and this long after it. All
# within 30 s, a request after a longer quiet gap from its submitter was never a check, and a worker that cheated
# only on those (quiet-loner-20, seeds 1-4) got 50-84 wrong answers accepted in 50,000 steps, 31-41 with the tail
CHECK_TAIL_S = 1800.0
CHECK_TAIL_SHARE = 0.5


def new_job_id(bits: int) -> str:
    """A job id as every job id on the wire is made: the first 20 hex digits of a version-4 UUID built
    from `bits` (the node's real jobs: uuid4's own random bits; the core's checks and rechecks: its
    seeded RNG's), so a worker cannot tell a check or a recheck by its id."""
    return uuid.UUID(int=bits & ((1 << 128) - 1), version=4).hex[:20]


@dataclass(frozen=True)
class Config:
    """How a submitter runs its jobs; the log's first entry, so a replay is configured alike."""

    seed: int  # of the core's RNG (spot checks, recheck ids and seeds)
    spot_rate: float = 0.0
    blacklist_s: float = 3600.0
    margin: bool = True  # see JobRun
    recheck: bool = True  # rerun what a caught cheater vouched for
    keep: int = 1000  # finished jobs kept (for rechecks and reports) before they are forgotten (not while rechecked)
    per_worker: int = PER_WORKER
    job_log: bool = False  # each JobRun keeps its own log too (JobRun.log, mesh.core.jobrun.replay_log)
    check_spread_s: float = CHECK_SPREAD_S  # a check waits a random 0..this (at most the step's timeout)
    check_tail_s: float = CHECK_TAIL_S  # ... or, one time in CHECK_TAIL_SHARE, spread..this (log-uniform); 0: never

    @classmethod
    def from_json(cls, d: dict) -> Config:
        """A config as a log or journal wrote it. One written before `check_tail_s` existed planned every
        check within check_spread_s: replayed so, its checks are drawn as they were."""
        return cls(**{"check_tail_s": 0.0, **d})


@dataclass(eq=False)
class SubmittedJob:
    run: JobRun
    seed: int = 0  # of the run's RNG
    recheck_of: tuple[str, str] | None = None  # (job, step) this run rechecks
    rechecks: dict[str, dict] = field(default_factory=dict)  # step → the recheck of its accepted answer
    credits: float = 0.0  # paid for its steps, once recorded
    payment_error: str = ""  # the ledger refused to record its payments
    exclude: frozenset[str] = frozenset()  # workers never placed on (a disputed step's recheck)


@dataclass(frozen=True)
class Dispute:
    """A check that replays an accepted step, answered differently: judged once that step is rechecked."""

    node: str
    check_id: str
    challenge: Challenge
    got: str
    work: dict
    waited: float | None = None  # seconds from the check's send to its answer (None: not known)


def step_evidence(job: Job, o: Outcome, replicas: Mapping[str, Replica]) -> StepEvidence:
    """The evidence behind every ledger entry of one settled step, for `mesh ledger explain` and streaks."""
    return StepEvidence(job.quorum.spec, job.quorum.needed(job.redundancy), job.redundancy, o.digest,
                        tuple(o.agreeing), {n: replicas[n].digest for n in (*o.agreeing, *o.dissenting)},
                        {n: replicas[n].error for n in o.failed}, o.basis, o.reason, tuple(o.overclaimed))


def settle_entries(job_id: str, job: Job, o: Outcome, replicas: Mapping[str, Replica]) -> list[LedgerEntry]:
    """Agreeing workers are paid their credit; everyone involved gets a verdict (Outcome.verdicts)."""
    why = step_evidence(job, o, replicas)
    paid = [LedgerEntry("paid", job_id, o.step, n, -o.credit_of(n), why) for n in o.agreeing]
    return paid + [LedgerEntry(kind, job_id, o.step, n, 0.0, why) for kind, n in o.verdicts()]


SUSPECT_SAMPLE = 3  # steps a worker ran alone that are rerun when a trusted issuer says it cheated (on_suspected)
RECHECK_TRIES = 3  # rechecks of one step that found no quorum before its answer is let stand

# each input and its number of arguments; those marked timed end with the time
INPUTS = {"submit": 3, "tick": 3, "on_result": 9, "on_unreachable": 4, "on_node_lost": 3, "on_alarm": 1,
          "on_recorded": 3, "abort": 2, "on_reported": 3, "on_suspected": 3}
UNTIMED = ("submit", "on_recorded", "abort")
Sink = Callable[[list], None]  # takes each input as it arrives, before the core acts on it (a journal)


class Submission:
    def __init__(self, config: Config, record: bool = False, sink: Sink | None = None):
        """`record`: keep every input and effect in `log` (see replay_log). `sink`: hand every input, as
        its log entry, to this callable before deciding on it (the node's journal, mesh.node.journal); the
        entry's Candidates and Job stay typed, for the sink to encode."""
        self.config = config
        self.sink = sink
        self.rng = random.Random(config.seed)
        self.spot = SpotChecker(config.spot_rate, config.blacklist_s, random.Random(self.rng.getrandbits(64)))
        self.jobs: dict[str, SubmittedJob] = {}  # running and the newest `keep` finished
        self.active: dict[str, SubmittedJob] = {}  # running
        self.outstanding: dict[str, dict[tuple[str, str], float]] = {}  # worker → (job, step) → deadline
        self.queued: dict[str, deque[tuple[str, Dispatch]]] = {}  # worker → replicas waiting for a slot
        self._finished: deque[str] = deque()
        self._rechecking: dict[str, int] = {}  # job → its rechecks still running (it is kept until they end)
        self._against: dict[tuple[str, str], str] = {}  # (job, step) → the new answer a first recheck gave
        self.disputes: dict[tuple[str, str], list[Dispute]] = {}  # (job, step) rechecked → checks awaiting it
        self.blocs: dict[tuple[str, str], tuple[str, ...]] = {}  # (job, step) rechecked → a bloc outvoted on it
        self._records: dict[int, Record] = {}  # written by the driver, not yet reported
        self._prefix: dict[str, str] = {}  # worker → its network prefix when last placed (for known answers)
        self._per_peer: dict[str, int] = {}  # worker → requests it takes from us at once, when below per_worker
        self._next_record = 0
        self.log: list | None = [["config", dataclasses.asdict(config)]] if record else None

    # -- inputs -------------------------------------------------------------------------------------
    def submit(self, job_id: str, job: Job, seed: int) -> list[Effect]:
        """A new job (its id and its RNG's seed chosen by the driver)."""
        self._in("submit", job_id, job, seed)
        run = JobRun(job_id, job, random.Random(seed), margin=self.config.margin, record=self.config.job_log)
        return self._out(self._add(job_id, SubmittedJob(run, seed)))

    def tick(self, job_id: str, candidates: Mapping[str, list[Candidate]], now: float) -> list[Effect]:
        """Drive one job: deadlines, placement (on `candidates` by capability, minus the blacklisted),
        sending, settling; and send whatever waited for a slot that a passed deadline freed."""
        self._in("tick", job_id, candidates, now)
        sj = self.active.get(job_id)
        if sj is None:
            return self._out([])
        out: list[Effect] = []
        sj.run.on_time(now)
        trusted = self._trusted(candidates, now)
        if sj.exclude:  # a disputed step's recheck: none of those with a part in either answer
            trusted = {k: [c for c in v if c.node not in sj.exclude] for k, v in trusted.items()}
        placed = sj.run.advance(trusted, now, self.spot.held(now))
        if placed:
            nodes = {d.node for d in placed}
            for c in (c for cs in candidates.values() for c in cs if c.node in nodes):
                self._prefix[c.node] = c.prefix
                if c.per_peer < self.config.per_worker:  # its owner offers fewer (--max-steps)
                    self._per_peer[c.node] = max(1, c.per_peer)
                else:
                    self._per_peer.pop(c.node, None)
        for d in placed:
            out.append(Timer(job_id, d.deadline))
            self._dispatch(job_id, d, now, out)
            self._plan_check(sj, d, now, out)
        for node in list(self.queued):
            self._drain(node, now, out)
        outcomes = sj.run.take_outcomes()
        if outcomes:
            out.append(self._settle(job_id, sj, outcomes))
            if self.config.recheck and sj.recheck_of is None:
                self._blocs(job_id, sj, outcomes, out)
                self._outvoted(sj, outcomes, out)
                self._thin(job_id, sj, outcomes, out)
        if sj.run.finished:
            self._finish(job_id, sj, out, now)
        return self._out(out)

    def on_result(self, node: str, job_id: str, step: str, ok: bool, claimed: str, output: Any, work: dict,
                  error: str, now: float) -> list[Effect]:
        """A worker's answer to a replica or to a spot check; its slot is free again either way. A check
        answered with an error (busy, a limit, a failed step) was not answered: dropped, unpunished."""
        self._in("on_result", node, job_id, step, ok, claimed, output, work, error, now)
        out: list[Effect] = []
        self._release(node, job_id, step, now, out)
        sound = ok and digest(output) == claimed
        challenge = self.spot.take(job_id, node)
        if challenge is not None:
            if ok:
                self._judge(node, job_id, challenge, sound, output, claimed, work, now, out)
            else:
                out.extend(self._wake_holding([node]))
            return self._out(out)
        if ok and not sound:
            ok, error = False, "digest does not match output"
        sj = self.active.get(job_id)
        if sj is not None:
            sj.run.on_time(now)  # an answer past its replica's deadline is late, whatever the tick
        taken = sj is not None and sj.run.on_result(step, node, ok, claimed, output, work, error, now)
        out.append(Answer(job_id, step, node, ok, claimed, taken))
        if taken:
            out.append(Wake(job_id))
        return self._out(out)

    def on_unreachable(self, job_id: str, step: str, node: str, now: float) -> list[Effect]:
        """A Send that could not be delivered: a replica fails, a spot check is withdrawn unpunished."""
        self._in("on_unreachable", job_id, step, node, now)
        out: list[Effect] = []
        self._release(node, job_id, step, now, out)
        if self.spot.withdraw(job_id) is not None:
            out.extend(self._wake_holding([node]))
            return self._out(out)
        sj = self.active.get(job_id)
        if sj is not None and sj.run.on_failure(step, node, "unreachable"):
            out.append(Wake(job_id))
        return self._out(out)

    def on_node_lost(self, node: str, reason: str, now: float) -> list[Effect]:
        """A worker is gone (connection lost, goodbye): what it holds or waits for fails now."""
        self._in("on_node_lost", node, reason, now)
        self.outstanding.pop(node, None)
        self.queued.pop(node, None)  # those replicas are pending in their tallies: failed just below
        dropped = self.spot.drop_node(node)  # its checks, planned or out: no answer, unpunished
        out: list[Effect] = []
        for job_id, sj in self.active.items():
            if any(node in r.tally.pending for r in sj.run.steps.values() if r.tally):
                sj.run.on_node_lost(node, reason)
                out.append(Wake(job_id))
        if dropped:  # steps it answered that waited for its check may settle now: drive them too
            out.extend(w for w in self._wake_holding([node]) if w not in out)
        return self._out(out)

    def on_reported(self, node: str, reason: str, now: float) -> list[Effect]:
        """An outvote proof (mesh.core.trust.Shared.reported) says `node` gave a wrong answer to someone
        else: its answers in steps not yet settled stop counting, and every accepted step it answered
        alone here is run again — a cheater trusted to run alone is caught by one submitter, but its wrong
        answers sit with all of them. Steps others agreed on with it are left as they are: a report is
        weaker evidence than this node's own check, and an honest worker outvoted by colluders is reported
        too, so rerunning its cross-checked steps would hand the colluders a second vote on them. Not
        blacklisted: only this node's own checks do that."""
        self._in("on_reported", node, reason, now)
        out: list[Effect] = []
        self._distrust(node, reason)
        if self.config.recheck:
            self._recheck(node, out, self.spot.to_recheck_alone(node))
        out.extend(self._wake_holding([node]))
        return self._out(out)

    def ran_alone(self, node: str) -> bool:
        """Whether an accepted step `node` answered alone here is still unchecked (on_suspected has work)."""
        return any(alone for _, _, alone in self.spot.vouched.get(node, ()))

    def on_suspected(self, node: str, reason: str, now: float) -> list[Effect]:
        """A trusted issuer's testimony says `node` gave it a wrong answer, with no proof: an opinion, which a
        sybil that did real work here can voice about every honest worker. So the only action is one that
        costs an honest worker nothing and this node little: SUSPECT_SAMPLE of the steps it answered alone
        here, drawn at random, run again. A cheater among them is caught by this node's own check, and
        that reruns the rest (on_result → _recheck)."""
        self._in("on_suspected", node, reason, now)
        out: list[Effect] = []
        if self.config.recheck:
            self._recheck(node, out, self.spot.to_recheck_alone(node, SUSPECT_SAMPLE))
        return self._out(out)

    def on_alarm(self, now: float) -> list[Effect]:
        """An Alarm's moment: planned spot checks now due go out (or wait for a slot of their worker);
        outstanding ones past their deadline are dropped unanswered and unpunished, and the steps their
        workers held may settle."""
        self._in("on_alarm", now)
        out: list[Effect] = []
        expired = self.spot.expire(now)
        for check_id, node in expired:
            for key in [k for k in self.outstanding.get(node, {}) if k[0] == check_id]:
                self._unhold(node, key)
        for check_id in self.spot.due(now):
            node, challenge, _ = self.spot.planned[check_id]
            if self.spot.blacklisted(node, now):
                self.spot.withdraw(check_id)
            elif self._busy(node, now) or self.queued.get(node):  # behind what already waits for a slot
                self.spot.planned[check_id] = (node, challenge, float("inf"))  # queued: due no more
                d = Dispatch(challenge.step, node, challenge.kind, challenge.params, float("inf"))
                self.queued.setdefault(node, deque()).append((check_id, d))
            else:
                self._send_check(check_id, now, out)
        for node in sorted({node for _, node in expired}):
            self._drain(node, now, out)
        out.extend(self._wake_holding(list(dict.fromkeys(node for _, node in expired))))
        return self._out(out)

    def on_recorded(self, record_id: int, ok: bool, error: str = "") -> None:
        """How the driver's ledger write of Record `record_id` went. Reputation is the ledger's to fold
        (only what it wrote); here a job learns what it paid, or that its payments were refused."""
        self._in("on_recorded", record_id, ok, error)
        rec = self._records.pop(record_id, None)
        sj = self.jobs.get(rec.job) if rec is not None else None
        if sj is None or not (rec.outcomes or any(e.kind == "paid" for e in rec.entries)):
            return  # (a spot check's payment: its id is no job here)
        if ok:
            sj.credits += sum(-e.amount for e in rec.entries if e.kind == "paid")
        else:
            sj.payment_error = f"the ledger did not record its payments: {error}"

    def abort(self, job_id: str, reason: str) -> list[Effect]:
        """The driver is giving up on a job (cancelled, or its own failure): fail what is unsettled, and pay
        the replicas answered in it so far (JobRun.abort)."""
        self._in("abort", job_id, reason)
        sj = self.active.get(job_id)
        out: list[Effect] = []
        if sj is not None:
            owed = sj.run.abort(reason)
            if owed:  # answered before the job was given up: settled work is paid, with no verdict
                out.append(self._record(job_id, tuple(
                    LedgerEntry("paid", job_id, sid, node, -credit, detail={"cancelled": basis})
                    for sid, node, credit, basis in owed)))
            self._finish(job_id, sj, out)
        return self._out(out)

    def blacklisted(self, node: str, now: float) -> bool:
        """Caught by a spot check and still banned: no work for it (pure, so asking is not an input)."""
        return self.spot.blacklisted(node, now)

    # -- placement and slots ------------------------------------------------------------------------
    def _trusted(self, candidates: Mapping[str, list[Candidate]], now: float) -> Mapping[str, list[Candidate]]:
        """The candidates minus the banned, those running a request of ours marked `engaged` (placement
        gives a lone step's seat to a free one first)."""
        banned = self.spot.banned  # (SpotChecker.blacklisted, inlined: this runs on every tick)
        if not banned and not self.outstanding:
            return candidates
        return {k: [dataclasses.replace(c, engaged=True) if self.engaged(c.node) else c for c in v
                    if c.node not in banned or banned[c.node] <= now] for k, v in candidates.items()}

    def _busy(self, node: str, now: float) -> bool:
        out = self.outstanding.get(node, {})
        for key in [k for k, deadline in out.items() if deadline <= now]:
            self._unhold(node, key)  # past its deadline: the core has failed it; the worker's slot is free or dead
        return len(out) >= self._per_peer.get(node, self.config.per_worker)

    def _unhold(self, node: str, key: tuple[str, str]) -> None:
        """`node` no longer holds request `key` of ours; a worker left holding none leaves `outstanding`
        (kept, its emptied map stayed for every worker ever placed on: 63,000 in a 40,000-step huge-100k)."""
        held = self.outstanding.get(node)
        if held is not None and held.pop(key, None) is not None and not held:
            del self.outstanding[node]

    def _dispatch(self, job_id: str, d: Dispatch, now: float, out: list[Effect]) -> None:
        """Send a replica now (its slot taken at once), or queue it while this worker already has as many
        of our requests as it takes from one peer (a worker answers more with "busy", failing the replica)."""
        if self._busy(d.node, now):
            self.queued.setdefault(d.node, deque()).append((job_id, d))
            return
        self.outstanding.setdefault(d.node, {})[(job_id, d.step)] = d.deadline
        out.append(Send(job_id, d.step, d.node, d.kind, d.params, d.deadline))

    def _plan_check(self, sj: SubmittedJob, d: Dispatch, now: float, out: list[Effect]) -> None:
        """Perhaps plan a spot check for the worker just placed: it goes out on its own, as a job of its
        own, at a random moment — never riding with this replica, whose timing would give it away. Up to
        check_spread_s (at most the step's timeout) from now, or, one time in CHECK_TAIL_SHARE, up to
        check_tail_s (`_check_delay`)."""
        run = sj.run
        kind = run.steps[d.step].kind  # (a verifier's replica is a 'score' request of an llm step)
        challenge = self.spot.challenge(kind, d.node, d.step, run.job.timeout, d.params.get("model"),
                                        self._prefix.get(d.node, ""))
        if challenge is None:
            return
        placed = run.steps[d.step].replicas.get(d.node)
        if placed is not None:  # paid at this worker's card, as the replica it was placed for would be
            challenge = dataclasses.replace(challenge, rates=placed.rates)
        check_id = new_job_id(self.rng.getrandbits(128))
        due = now + self._check_delay(run.job.timeout)
        self.spot.plan(check_id, d.node, challenge, due)
        out.append(Alarm(due))

    def _check_delay(self, timeout: float) -> float:
        """How long a planned check waits. Half the time a long wait, log-uniform from check_spread_s to
        check_tail_s: checks then also reach a worker after quiet gaps of every length up to it (one minute, ten),
        so no length of silence tells a real step from a check. Log-uniform, not uniform: a cheater's
        threshold may be any scale, and each scale gets its share of checks."""
        spread, tail, rng = self.config.check_spread_s, self.config.check_tail_s, self.spot.rng
        if tail > spread > 0 and rng.random() < CHECK_TAIL_SHARE:
            return math.exp(rng.uniform(math.log(spread), math.log(tail)))
        return rng.uniform(0.0, min(spread, timeout))

    def _send_check(self, check_id: str, now: float, out: list[Effect]) -> None:
        """A planned check goes out now, in a slot of its worker's own (the caller saw one free), shaped
        as the step it replays: its step id, params and timeout."""
        _, challenge, _ = self.spot.planned[check_id]
        deadline = now + max(challenge.timeout, MIN_TIMEOUT_S)
        node, challenge = self.spot.issue(check_id, deadline, now)
        self.outstanding.setdefault(node, {})[(check_id, challenge.step)] = deadline
        out.append(Send(check_id, challenge.step, node, challenge.kind, challenge.params, deadline, challenge))
        out.append(Alarm(deadline))

    def _release(self, node: str, job_id: str, step: str, now: float, out: list[Effect]) -> None:
        """A request to `node` was answered (or never sent): send what waits for that worker."""
        self._unhold(node, (job_id, step))
        self._drain(node, now, out)

    def _drain(self, node: str, now: float, out: list[Effect]) -> None:
        """Send the replicas queued for `node` that still matter, as far as its free slots go."""
        waiting = self.queued.get(node)
        while waiting and not self._busy(node, now):
            job_id, d = waiting.popleft()
            if job_id in self.spot.planned:  # a spot check waiting for a slot
                self._send_check(job_id, now, out)
                continue
            sj = self.active.get(job_id)
            tally = sj.run.steps[d.step].tally if sj is not None else None
            if tally is not None and d.node in tally.pending and d.deadline > now:
                self._dispatch(job_id, d, now, out)
        if not waiting:
            self.queued.pop(node, None)

    # -- spot checks and rechecks -------------------------------------------------------------------
    def _judge(self, node: str, check_id: str, challenge: Challenge, ok: bool, output: Any, got: str,
               work: Mapping[str, Any], now: float, out: list[Effect]) -> None:
        """A check answered. Passed, it is paid as the step it replays would be (its worker's own figures,
        capped by the step's limits, at its card), receipt and all: an unpaid request would tell a worker
        afterwards which of its answers were checks."""
        passed = ok and challenge.right(output)
        waited = None if challenge.sent is None else now - challenge.sent
        seen = observed(challenge.kind, work, output, waited, challenge.params)  # (a disputed one is paid so too)
        if passed:
            self._passed(node, check_id, challenge, got, seen, waited, out)
        elif not self._dispute(Dispute(node, check_id, challenge, got, dict(seen), waited), out):
            self._convict(node, check_id, challenge, got, now, out)
        out.extend(self._wake_holding([node]))

    def _passed(self, node: str, check_id: str, challenge: Challenge, got: str, work: Mapping[str, Any],
                waited: float | None, out: list[Effect]) -> None:
        out.append(Judged(node, True, got, check_id))
        limit = min(cap(challenge.kind, challenge.params, challenge.timeout), challenge.worth * WORTH_SLACK)
        if challenge.kind == "python" and waited is not None:
            # a check's answer is a lone one, nothing measured against its claim: one CPU for the time it took, as
            # a lone step's (a worker answering at once and claiming 16 CPUs over its wait was paid 4x the step)
            limit = lone_limit(limit, waited)
        credit, basis = pay(challenge.kind, {node: work}, {node: challenge.rates}, limit)
        out.append(self._record(check_id, (LedgerEntry("paid", check_id, challenge.step, node, -credit[node],
                                                       detail={"spot_check": basis}),)))

    def _convict(self, node: str, check_id: str, challenge: Challenge, got: str, now: float,
                 out: list[Effect]) -> None:
        """A failed check: recorded, and the worker caught (_catch)."""
        out.append(Judged(node, False, got, check_id))
        detail = {"expected": digest(challenge.expected), "got": got, "kind": challenge.kind,
                  "as_step": challenge.step, "replays": "/".join(challenge.source or ()) or "synthetic"}
        out.append(self._record("spot", (LedgerEntry("spot_failed", "spot", check_id, node, 0.0, None, detail),)))
        self._catch(node, now, "failed a spot check", out)

    def _catch(self, node: str, now: float, why: str, out: list[Effect]) -> None:
        """A worker caught by this node's own evidence: banned for blacklist_s, its unsettled answers
        dropped, everything it vouched for here rerun."""
        self.spot.ban(node, now)
        self._distrust(node, why)
        self._recheck(node, out)

    def _dispute(self, d: Dispute, out: list[Effect]) -> bool:
        """A check that replays an accepted step came back different: the known answer may be the wrong one
        (a unanimous wrong answer of colluders, replayed to an honest worker). Unless that step was already
        rechecked and confirmed, rerun it on workers who had no part in either answer, and judge the
        worker by that (`_settle_disputes`). False: no dispute possible (a synthetic check, the step gone
        or confirmed) — judge it now."""
        if d.challenge.source is None:
            return False
        job_id, sid = d.challenge.source
        orig = self.jobs.get(job_id)
        if orig is None or orig.recheck_of or orig.run.steps[sid].status != "done":
            return False
        earlier = orig.rechecks.get(sid)
        if earlier is not None and earlier["verdict"] != "running":
            if earlier["verdict"] == "overturned":  # the known answer was wrong and the worker right
                self._passed(d.node, d.check_id, d.challenge, d.got, d.work, d.waited, out)
            return earlier["verdict"] != "confirmed"  # inconclusive: unproven, let go unjudged
        self.disputes.setdefault((job_id, sid), []).append(d)
        self._distrust(d.node, "its spot check is disputed")  # until it is judged, its answers settle nothing
        if earlier is None:
            exclude = frozenset((*orig.run.steps[sid].replicas, d.node))
            self._start_recheck(job_id, sid, f"dispute by {d.node}", exclude, out)
        return True

    def _settle_disputes(self, job_id: str, sid: str, verdict: str, now: float | None, out: list[Effect]) -> None:
        """The recheck behind some disputed checks ended: a confirmed known answer convicts their workers,
        an overturned one pays them as a passed check; inconclusive, they are let go unjudged."""
        for d in self.disputes.pop((job_id, sid), []):
            if verdict == "confirmed" and now is not None:
                self._convict(d.node, d.check_id, d.challenge, d.got, now, out)
            elif verdict == "overturned":
                self._passed(d.node, d.check_id, d.challenge, d.got, d.work, d.waited, out)

    def _distrust(self, node: str, reason: str) -> None:
        """`node`'s answers in steps not yet settled stop counting (JobRun.on_node_distrusted), in every job."""
        for sj in self.active.values():
            sj.run.on_node_distrusted(node, reason)

    def _wake_holding(self, nodes: list[str]) -> list[Effect]:
        """Jobs with a running step one of these workers answered or was asked: drive them again."""
        return [Wake(job_id) for job_id, sj in list(self.active.items())
                if any(n in r.replicas for r in sj.run.steps.values() if r.status == "running" for n in nodes)]

    def _recheck(self, cheater: str, out: list[Effect], steps: list[tuple[str, str]] | None = None) -> None:
        """Run again, on workers still trusted, every accepted step a just-caught cheater vouched for, or
        just `steps` (once per step; never a recheck itself)."""
        for job_id, sid in self.spot.to_recheck(cheater) if steps is None else steps:
            orig = self.jobs.get(job_id)
            if orig is None or orig.recheck_of or orig.run.steps[sid].status != "done" or sid in orig.rechecks:
                continue
            self._start_recheck(job_id, sid, cheater, frozenset(), out)

    def _start_recheck(self, job_id: str, sid: str, cause: str, exclude: frozenset[str], out: list[Effect]) -> None:
        orig = self.jobs[job_id]
        rid, seed = new_job_id(self.rng.getrandbits(128)), self.rng.getrandbits(64)
        orig.rechecks[sid] = {"job": rid, "cause": cause, "verdict": "running"}
        self._rechecking[job_id] = self._rechecking.get(job_id, 0) + 1
        run = JobRun.recheck(rid, orig.run, sid, random.Random(seed))
        if exclude:  # ("the mesh offers 0" of a small mesh whose every worker had a part read as a bug)
            run.barred = f" and the {len(exclude)} with a part in the answers it rechecks"
        out.extend(self._add(rid, SubmittedJob(run, seed, recheck_of=(job_id, sid), exclude=exclude)))

    def _judge_recheck(self, rid: str, sj: SubmittedJob, now: float | None, out: list[Effect]) -> None:
        """Confirm or overturn the rechecked answer; those who vouched for an overturned one disagreed, and
        what they answered alone here is rerun too."""
        job_id, sid = sj.recheck_of or ("", "")
        orig = self.jobs[job_id]  # kept while rechecked
        left = self._rechecking.pop(job_id) - 1
        if left:
            self._rechecking[job_id] = left
        before = orig.run.steps[sid].digest
        tries = orig.rechecks[sid].get("tries", 1)
        second = self._second_opinion(job_id, sid, sj, tries)
        if second == "ask":
            self._ask_again(job_id, sid, sj, tries, out)
            return
        verdict, vouched = ("inconclusive", ()) if second == "split" else orig.run.apply_recheck(sid, sj.run)
        after = orig.run.steps[sid].digest
        if verdict == "overturned":
            self.spot.forget((job_id, sid))  # no longer a known answer for checks
        if vouched:
            why = RecheckEvidence(rid, after)
            out.append(self._record(job_id, tuple(LedgerEntry("disagreed", job_id, sid, n, 0.0, why) for n in vouched)))
            # caught by this node's own recheck: what else it ran alone here runs again. Two or more who
            # agreed on the answer a recheck by workers with no part in it overturned gave one wrong answer
            # together, as only colluders do: caught as by a spot check (banned; all they vouched for rerun)
            together = len(vouched) >= 2 and bool(sj.exclude) and now is not None
            for n in vouched:
                if together:
                    self._catch(n, now, "a recheck overturned the answer it agreed on with others", out)
                else:
                    self._distrust(n, "a recheck overturned its answer")
                    self._recheck(n, out, self.spot.to_recheck_alone(n))
        orig.rechecks[sid]["verdict"] = verdict
        if verdict == "inconclusive" and tries < RECHECK_TRIES:
            # no quorum among those asked: asked again of others, up to RECHECK_TRIES in all. Let stand at
            # once, a lone cheater's answer whose recheck drew a split (sybils among the askers) stayed wrong
            # (vouching-30 with proven workers first: 2 of 3 wrong answers)
            self._ask_again(job_id, sid, sj, tries, out)
            return
        self._against.pop((job_id, sid), None)
        out.append(Rechecked(job_id, sid, rid, verdict, before, after))
        self._settle_disputes(job_id, sid, verdict, now, out)
        self._settle_blocs(job_id, sid, verdict, now, out)

    def _second_opinion(self, job_id: str, sid: str, sj: SubmittedJob, tries: int) -> str:
        """Whether a recheck's answer may overturn the accepted one now: '' (yes, or it does not differ),
        'ask' (not yet: ask others first) or 'split' (RECHECK_TRIES rechecks disagreed: let it stand).
        An answer two or more workers agreed on falls only when two rechecks by workers with no part in it
        give the same new answer. On one, sybils that drew every seat of a recheck overturned a right answer
        and got the honest workers who gave it convicted as a bloc (tests/core/test_blocs.py). A lone answer
        falls on one recheck: in a small mesh nobody may be left to ask a second time."""
        run, new = self.jobs[job_id].run.steps[sid], sj.run.steps[sid]
        key = run.comparator.key(new.output) if new.status == "done" else run.key
        if key == run.key or len(run.vouchers()) < 2:
            return ""  # no new answer; or a lone one, which one recheck outnumbers already
        if self._against.get((job_id, sid)) == key:
            return ""  # the second recheck gave the same new answer
        if tries >= RECHECK_TRIES:
            return "split"
        self._against[(job_id, sid)] = key
        return "ask"

    def _ask_again(self, job_id: str, sid: str, sj: SubmittedJob, tries: int, out: list[Effect]) -> None:
        """Recheck `sid` once more, on workers with no part in the step or any of its rechecks so far."""
        orig = self.jobs[job_id]
        heard = sj.exclude | frozenset(sj.run.steps[sid].replicas) | frozenset(orig.run.steps[sid].replicas)
        self._start_recheck(job_id, sid, orig.rechecks[sid]["cause"], heard, out)
        orig.rechecks[sid]["tries"] = tries + 1

    # -- jobs ---------------------------------------------------------------------------------------
    def _add(self, job_id: str, sj: SubmittedJob) -> list[Effect]:
        self.jobs[job_id] = self.active[job_id] = sj
        return [Started(job_id, sj.recheck_of)]

    def _settle(self, job_id: str, sj: SubmittedJob, outcomes: list[Outcome]) -> Record:
        entries: list[LedgerEntry] = []
        for o in outcomes:
            step_run = sj.run.steps[o.step]
            if o.accepted:
                if sj.recheck_of is None and len(o.agreeing) >= 2 and not o.dissenting:  # no doubt about it
                    asked = tuple(sorted(step_run.replicas))
                    took = sorted(quantity(o.kind, step_run.replicas[n].billed()) for n in o.agreeing)
                    self.spot.remember(o.kind, step_run.params or {}, step_run.output, o.step, sj.run.job.timeout,
                                       step_run.comparator.spec, (job_id, o.step), asked,
                                       tuple(sorted({self._prefix.get(n, "") for n in asked})),
                                       took[(len(took) - 1) // 2])
                if self.config.recheck and sj.recheck_of is None:
                    self.spot.vouch(o.agreeing, job_id, o.step)
            entries += settle_entries(job_id, sj.run.job, o, step_run.replicas)
        return self._record(job_id, tuple(entries), tuple(outcomes))

    def _outvoted(self, sj: SubmittedJob, outcomes: list[Outcome], out: list[Effect]) -> None:
        """Workers outvoted on a step whose answer follows from its params: what each answered alone here,
        nobody checking it, runs again. A trusted worker that cheats alone is most often caught by an audit
        it loses, not by a spot check; before this, only a failed check or a proof reran its lone steps, and
        a trust builder's stayed wrong (trust-builder-20 with proven workers first: 15 wrong answers). An
        honest worker outvoted by colluders only has its own right answers confirmed, at some replicas'
        cost (at most VOUCHED steps each time, and only steps it ran alone)."""
        for o in outcomes:
            if o.accepted and o.dissenting and sj.run.steps[o.step].comparator.strict:
                for n in o.dissenting:
                    self._recheck(n, out, self.spot.to_recheck_alone(n))

    def _thin(self, job_id: str, sj: SubmittedJob, outcomes: list[Outcome], out: list[Effect]) -> None:
        """Steps accepted short of what the rule asks for, because the replica budget or the workers ran
        out first: under dissent without the margin, or with fewer agreeing than the step's redundancy and
        seats that failed. Run again on workers with no part in them; overturned, the winners are convicted
        as a bloc is (_judge_recheck). Two colluders won six-replica steps both ways: against one honest
        worker and three saboteurs or timeouts (large-10k: 3 wrong answers in 60,000 steps), and with all
        four other seats timed out (large-10k with proven workers first: 6 of 7 wrong answers in 200,000)."""
        job = sj.run.job
        if job.quorum.spec != "majority":
            return
        needed = job.quorum.needed(job.redundancy)
        for o in outcomes:
            run = sj.run.steps[o.step]
            if not o.accepted or o.step in sj.rechecks or not run.comparator.strict:
                continue
            if o.dissenting and len(o.agreeing) < needed + len(o.dissenting):
                self._start_recheck(job_id, o.step, "thin majority", frozenset(run.replicas), out)
            elif o.failed and run.tally is not None and len(o.agreeing) < run.tally.redundancy:
                self._start_recheck(job_id, o.step, "seats failed", frozenset(run.replicas), out)

    def _blocs(self, job_id: str, sj: SubmittedJob, outcomes: list[Outcome], out: list[Effect]) -> None:
        """Outvoted workers that gave one and the same wrong answer to a step whose answer follows from its
        params: honest workers err apart, colluders together (a side channel tells each what the others
        hold). Their answers elsewhere stop counting at once, and the step is run again on workers with no
        part in it: confirmed, the bloc is convicted (_settle_blocs); overturned, the winners were the bloc.
        Never convicted on the vote alone: sybils outvoting two honest workers would have them banned."""
        for o in outcomes:
            run = sj.run.steps[o.step]
            if not o.accepted or len(o.dissenting) < 2 or run.tally is None or \
                    not run.comparator.strict or (job_id, o.step) in self.blocs:
                continue
            said = Counter(run.tally.answers.get(n, "") for n in o.dissenting)
            bloc = tuple(n for n in o.dissenting if said[run.tally.answers.get(n, "")] >= 2)
            if not bloc:
                continue
            for node in bloc:
                self._distrust(node, "outvoted with others giving the same wrong answer")
            self.blocs[(job_id, o.step)] = bloc
            if o.step not in sj.rechecks:
                self._start_recheck(job_id, o.step, f"bloc of {len(bloc)}", frozenset(run.replicas), out)

    def _settle_blocs(self, job_id: str, sid: str, verdict: str, now: float | None, out: list[Effect]) -> None:
        """The recheck of a step a bloc was outvoted on ended: confirmed, each member is caught as by a failed
        spot check (banned, and everything it vouched for here run again); otherwise let go."""
        for node in self.blocs.pop((job_id, sid), ()):
            if verdict == "confirmed" and now is not None:
                self._catch(node, now, "outvoted with others giving the same wrong answer, and a recheck agreed", out)

    def _record(self, job_id: str, entries: tuple[LedgerEntry, ...], outcomes: tuple[Outcome, ...] = ()) -> Record:
        self._next_record += 1
        rec = self._records[self._next_record] = Record(self._next_record, job_id, entries, outcomes)
        return rec

    def _finish(self, job_id: str, sj: SubmittedJob, out: list[Effect], now: float | None = None) -> None:
        """`now`: None when the job was aborted (no verdict then convicts anyone)."""
        del self.active[job_id]
        if sj.recheck_of is not None:
            self._judge_recheck(job_id, sj, now, out)
        out.append(Finished(job_id, sj.run.status))
        self._finished.append(job_id)
        while len(self._finished) > self.config.keep and self._finished[0] not in self._rechecking:
            old = self._finished.popleft()
            del self.jobs[old]
            out.append(Forgotten(old))

    # -- the log ------------------------------------------------------------------------------------
    def _in(self, name: str, *args: Any) -> None:
        if self.sink is not None:
            self.sink([name, *args])
        if self.log is not None:
            self.log.append(loggable([name, *args]))

    def apply(self, entry: list) -> list[Effect]:
        """Feed one input in its logged (JSON) form, as a replay does; only the inputs above are taken,
        and a malformed entry raises ValueError (a journal read back from disk is checked, not trusted)."""
        if not isinstance(entry, list) or not entry or entry[0] not in INPUTS:
            raise ValueError(f"not a core input: {str(entry)[:80]}")
        name, args = entry[0], list(entry[1:])
        if len(args) != INPUTS[name] or (name not in UNTIMED and type(args[-1]) not in (int, float)):
            raise ValueError(f"core input {name} has the wrong arguments")
        try:
            if name == "submit":
                args[1] = parse_job(args[1])
            elif name == "tick":
                args[1] = {k: [candidate_from(c) for c in v] for k, v in args[1].items()}
            effects = getattr(self, name)(*args)
        except (TypeError, KeyError, IndexError, AttributeError, JobError) as exc:
            raise ValueError(f"core input {name} is malformed: {exc}") from None
        return effects or []

    def expects(self, node: str, job_id: str, step: str) -> bool:
        """Whether `node` holds a request of ours for (job, step): only such a result is an input (pure: a
        driver asks before feeding, so what a stranger sends unasked is never logged or journaled)."""
        return (job_id, step) in self.outstanding.get(node, {})

    def engaged(self, node: str) -> bool:
        """Whether `node` holds a request of ours not answered yet (pure, like `expects`): a lone step's
        first seat goes to a proven worker that does not (JobRun._trusted)."""
        return bool(self.outstanding.get(node))

    def holds(self, node: str) -> bool:
        """Whether losing `node` changes anything here: a request or replica out or queued for it, or a
        spot check planned or out (pure, like `expects`)."""
        return bool(self.outstanding.get(node) or self.queued.get(node) or any(
            n == node for n, _, _ in (*self.spot.planned.values(), *self.spot.out.values())) or any(
            node in r.tally.pending for sj in self.active.values() for r in sj.run.steps.values() if r.tally))

    @property
    def unconfirmed(self) -> list[Record]:
        """Ledger batches handed to the driver whose write it has not reported (on_recorded) yet."""
        return list(self._records.values())

    @property
    def idle(self) -> bool:
        """Nothing under way: no job running, nothing sent or queued, no check planned, no batch unwritten."""
        return not (self.active or any(self.outstanding.values()) or any(self.queued.values())
                    or self.spot.planned or self.spot.out or self._records)

    def _out(self, effects: list[Effect]) -> list[Effect]:
        if self.log is not None:
            self.log.append(["effects", [as_json(e) for e in effects]])
        return effects


def loggable(entry: list, candidate: Callable[[Candidate], dict] = dataclasses.asdict) -> list:
    """An input as JSON-ready data: a Job as its job file, Candidates as dicts (candidate_from reads them;
    `candidate` encodes one, e.g. a caching encoder)."""
    if entry[0] == "submit":
        return [*entry[:2], entry[2].to_json(), *entry[3:]]
    if entry[0] == "tick":
        return [*entry[:2], {k: [candidate(c) for c in v] for k, v in entry[2].items()}, *entry[3:]]
    return entry


def replay_log(log: list, make: Callable[[Config], Submission] | None = None) -> list:
    """Feed a recorded log's inputs to a fresh Submission configured from its first entry (built by
    `make`, e.g. as the simulator builds its own); returns the new log, equal to the recorded one
    exactly when the core decided the same."""
    config = Config.from_json(log[0][1])
    sub = make(config) if make is not None else Submission(config, record=True)
    if sub.log is None:
        raise ValueError("the Submission to replay into must record its log")
    for entry in log[1:]:
        if entry[0] != "effects":
            sub.apply(entry)
    return json.loads(json.dumps(sub.log))
