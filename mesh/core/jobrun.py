"""One job's run as a sans-I/O state machine: the driver (the node's asyncio loop, or the simulator) feeds
it the workers it may use, replica answers, failures and the time; it answers with replicas to dispatch
and step outcomes to record. It never touches a socket, a clock or a global RNG."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mesh.core.compare import Comparator
from mesh.core.dag import MODEL_KINDS, Job, Step, params_problem, render, sampling_seed, valid_ids
from mesh.core.policy import Candidate, candidate_from, place
from mesh.core.pricing import cap, most_tokens, observed, overclaimed, pay, quantity
from mesh.core.quorum import Accept, Decision, GiveUp, NeedMore, Tally
from mesh.errors import JobError
from mesh.wire.messages import RateCard


@dataclass(frozen=True)
class Dispatch:
    step: str
    node: str
    kind: str
    params: dict
    deadline: float


@dataclass(frozen=True)
class Outcome:
    """What the ledger records once a step is settled (accepted or given up)."""

    step: str
    kind: str
    accepted: bool
    digest: str
    agreeing: tuple[str, ...]
    dissenting: tuple[str, ...]
    failed: tuple[str, ...]
    credit: float  # per agreeing worker
    reason: str = ""
    basis: str = ""  # how the credit was measured, in words
    credits: dict[str, float] = field(default_factory=dict)  # per agreeing worker where it differs (verifiers)
    overclaimed: tuple[str, ...] = ()  # agreeing workers that claimed far more work than the others (pricing)

    def credit_of(self, node: str) -> float:
        return self.credits.get(node, self.credit)

    def verdicts(self) -> list[tuple[str, str]]:
        """(reputation kind, node) for everyone involved: agreeing workers agreed; dissenters disagreed,
        but only when there was a quorum (without one nobody can tell who was right); failures are
        no-shows. The node and the simulator both fold exactly these into reputation."""
        out = [("agreed", n) for n in self.agreeing]
        if self.accepted:
            out += [("disagreed", n) for n in self.dissenting]
        return out + [("no_show", n) for n in self.failed]


@dataclass
class Replica:
    node: str
    digest: str = ""
    key: str = ""  # its output's class under the step's comparator
    output: Any = None
    work: dict = field(default_factory=dict)
    error: str = ""
    deadline: float = 0.0
    role: str = "generate"  # or "verify": scored another worker's claimed output (compare 'score')
    verdict: bool | None = None  # a verifier's: did it accept the claim?
    rates: RateCard = RateCard()  # the worker's rate card when it was asked: what it is paid at
    sent: float = 0.0  # when it was asked (the caller's clock)
    bounded: dict | None = None  # a generator's figures held to what its payer saw (pricing.observed), once
    waited: float | None = None  # seconds from its ask to its answer (None: not answered, or not known)

    def billed(self) -> dict:
        """Its figures as they may be paid: bounded when it answered as a generator, else as it said."""
        return self.work if self.bounded is None else self.bounded


RETRY_AFTER_S = 2.0  # a worker whose replica failed for a passing reason is asked again after this
REJOIN_S = 15.0  # how long a step with no other worker waits for such a worker to come back up
MAX_RETRIES = 2  # times one worker is asked again for one step
REPLICATE_FLOOR = 0.02  # a trusted worker's step is still replicated at least this often (adaptive replication)
UNVERIFIED_CPUS = 1.0  # a python step's only answer (cancelled, run alone, a check) is paid at most this many CPUs
# for the time it took
AUDIT_REPLICAS = 2  # a trusted worker's replicated step: it and one other; any dissent escalates as usual
PROVEN = 2  # a worker whose run reaches PROVEN × N takes the first seat ahead of those with shorter runs


def lone_limit(limit: float, waited: float) -> float:
    """A python step's limit when its answer is the only one, nothing measured against its claim: one CPU
    (UNVERIFIED_CPUS) for the seconds it took, not STEP_CPUS."""
    return min(limit, max(0.0, waited) * UNVERIFIED_CPUS)


LINK_LOST = "connection lost"  # a replica's failure when its link went down after it was asked


def lost_once(tally: Tally, node: str) -> bool:
    """A seat whose link was lost after its first ask: asked again before any other worker takes it."""
    return tally.failures.get(node) == LINK_LOST and not tally.retries.get(node)


def passing(reason: str) -> bool:
    """A failure that says nothing about the worker's honesty or its ability: it was full (busy), or the
    link to it was lost or never made (a restart, a sleeping laptop, a dropped Wi-Fi)."""
    return reason.startswith("busy") or reason in (LINK_LOST, "unreachable")


@dataclass
class StepRun:
    kind: str
    comparator: Comparator
    status: str = "waiting"  # waiting | running | done | failed | skipped
    key: str = ""  # the accepted answer's class
    alone: bool = False  # adaptive replication: sent to one trusted worker
    tally: Tally | None = None
    params: dict | None = None
    replicas: dict[str, Replica] = field(default_factory=dict)
    output: Any = None
    digest: str = ""
    error: str = ""
    credit: float = 0.0  # the least any agreeing worker is paid
    credits: dict[str, float] = field(default_factory=dict)  # what each agreeing worker is paid
    overturned_by: str = ""  # the recheck that replaced the accepted answer
    scoring: bool = False  # compare 'score': one generation, verified by scoring (until a verifier objects)
    claim: Replica | None = None  # the generation being verified
    failed_at: dict[str, float] = field(default_factory=dict)  # node → when its passing failure was first seen

    def vouchers(self) -> tuple[str, ...]:
        """The workers whose answer is the accepted one (sorted)."""
        return tuple(sorted(r.node for r in self.replicas.values() if r.key and r.key == self.key))


class JobRun:
    def __init__(self, job_id: str, job: Job, rng: random.Random, margin: bool = True, record: bool = False):
        """`margin`: under dissent a majority must outvote every dissenting answer with room to spare
        (quorum.MARGIN_EXTRA; escalating while unused workers remain); False is plain majority voting, kept
        for the simulator's comparison.
        `record`: keep every input and output in `log`, so another driver can replay the same events
        (see replay_log) and show it gets the same decisions."""
        self.job_id = job_id
        self.margin = margin
        self.log: list | None = [] if record else None
        self.job = job
        self.rng = rng
        self.barred = ""  # which workers are never asked, said when too few are left (a recheck's)
        self.order = job.order()
        self.steps = {sid: StepRun(job.step(sid).kind, Comparator(job.step(sid).compare)) for sid in self.order}
        self.outcomes: list[Outcome] = []

    # -- inputs -------------------------------------------------------------------------------------
    def on_result(self, step: str, node: str, ok: bool, digest: str, output: Any, work: dict, error: str,
                  now: float | None = None) -> bool:
        """A worker's answer, at `now` (None: not known; its claim is then bounded by its limits alone);
        False when it was not expected (never asked, late, or a duplicate)."""
        if self.log is not None:
            self.log.append(["on_result", step, node, ok, digest, output, work, error, now])
        run = self.steps.get(step)
        if run is None or run.tally is None or run.status != "running":
            return False
        rep = run.replicas[node] if node in run.replicas else None
        if rep is None:
            return False
        if not ok:
            return self._fail(step, node, error or "step error")
        if rep.role == "verify":
            return self._verdict(step, run, rep, output, work)
        if run.scoring and not valid_ids(ids := work.get("token_ids")):
            return self._fail(step, node, "no token ids for the verifiers to score")
        if run.scoring and len(ids) > most_tokens(run.params):  # each verifier is paid to score them all
            return self._fail(step, node, "more token ids than the step's max_tokens")
        key = run.comparator.key(output)
        if run.tally.answer(node, key):
            rep.digest, rep.key, rep.output, rep.work, rep.error = digest, key, output, work, ""
            rep.waited = None if now is None else now - rep.sent
            rep.bounded = observed(run.kind, work, output, rep.waited, run.params)
            if run.scoring and run.claim is None:
                run.claim = rep
            return True
        return False

    def _verdict(self, step: str, run: StepRun, rep: Replica, output: Any, work: dict) -> bool:
        """A verifier's answer. Accepting vouches for exactly the claimed text; a rejection (or anything
        that is not a verdict) means the claim cannot be trusted: the step falls back to generating on
        other workers and comparing, with every verdict set aside."""
        claim, tally = run.claim, run.tally
        accepted = output.get("accepted") if isinstance(output, dict) else None
        if tally is not None and rep.node in tally.aside and rep.verdict is None:  # asked, then set aside
            rep.work, rep.verdict = work, accepted if isinstance(accepted, bool) else None
            return True
        if claim is None or tally is None or rep.node not in tally.pending:
            return False
        if not isinstance(accepted, bool):  # not a verdict at all: a failed replica, replaced by another
            return self._fail(step, rep.node, "answered a scoring request with no verdict")
        rep.work, rep.verdict = work, accepted
        if accepted and run.scoring:
            tally.answer(rep.node, claim.key)
            rep.digest, rep.key, rep.output, rep.error = claim.digest, claim.key, claim.output, ""
            return True
        if run.scoring:  # a rejection: the claim cannot be trusted until other generations back it
            run.scoring = False
            for r in run.replicas.values():
                if r.role == "verify" and r.node != rep.node and (r.node in tally.answers or r.node in tally.pending):
                    tally.set_aside(r.node, "the step fell back to generating")
        tally.set_aside(rep.node, "the step fell back to generating")
        return True

    def on_failure(self, step: str, node: str, reason: str) -> bool:
        """A replica that will not answer (error, unreachable); False when it was not expected."""
        if self.log is not None:
            self.log.append(["on_failure", step, node, reason])
        return self._fail(step, node, reason)

    def _fail(self, step: str, node: str, reason: str) -> bool:
        run = self.steps.get(step)
        if run is None or run.tally is None or run.status != "running":
            return False
        if run.tally.fail(node, reason):
            run.replicas[node].error = reason
            if run.alone:  # the trusted worker did not deliver: back to full replication
                run.alone, run.tally.redundancy = False, self.job.redundancy
            return True
        return False

    def on_node_lost(self, node: str, reason: str) -> None:
        if self.log is not None:
            self.log.append(["on_node_lost", node, reason])
        for sid, run in self.steps.items():
            if run.tally and node in run.tally.pending:
                self._fail(sid, node, reason)

    def on_node_distrusted(self, node: str, reason: str) -> None:
        """A worker caught cheating: its answers in steps not yet settled no longer count."""
        if self.log is not None:
            self.log.append(["on_node_distrusted", node, reason])
        for sid, run in self.steps.items():
            if run.status != "running" or run.tally is None:
                continue
            if run.tally.answers.pop(node, None) is not None:
                run.tally.failures[node] = reason
                rep = run.replicas[node]
                rep.error, rep.key = reason, ""
                if run.alone:
                    run.alone, run.tally.redundancy = False, self.job.redundancy
            elif node in run.tally.pending:
                self._fail(sid, node, reason)

    def on_time(self, now: float) -> None:
        if self.log is not None:
            self.log.append(["on_time", now])
        for sid, run in self.steps.items():
            if run.status == "running" and run.tally:
                for node in list(run.tally.pending):
                    if run.replicas[node].deadline <= now:
                        self._fail(sid, node, "timeout")

    # -- outputs ------------------------------------------------------------------------------------
    def advance(self, workers: dict[str, list[Candidate]], now: float, held: frozenset[str] = frozenset()
                ) -> list[Dispatch]:
        """Settle what can be settled and return the replicas to send. `workers` maps a capability
        (Step.needs) to the candidates offering it (never the submitter itself); `held` are workers
        with a spot check outstanding: a step they agreed on waits for it."""
        if self.log is not None:
            self.log.append(["advance", {k: [dataclasses.asdict(c) for c in v] for k, v in workers.items()}, now,
                             sorted(held)])
        out = self._advance(workers, now, held)
        if self.log is not None:
            self.log.append(["dispatched", [dataclasses.asdict(d) for d in out]])
        return out

    def _advance(self, workers: dict[str, list[Candidate]], now: float, held: frozenset[str]) -> list[Dispatch]:
        """Sweep the steps in order until a sweep changes nothing: a step settled early in a sweep can
        start the ones after it in the next."""
        out: list[Dispatch] = []
        progressed = True
        while progressed:
            progressed = False
            for sid in self.order:
                run = self.steps[sid]
                step = self.job.step(sid)
                if run.status == "waiting":
                    self._start(sid, run, step, workers)
                    if run.status != "running":  # still waiting (no progress), or skipped/given up (progress)
                        progressed = progressed or run.status != "waiting"
                        continue
                if run.status != "running":
                    continue
                pool = workers.get(step.needs, [])
                fresh = [c for c in pool if not run.tally.used(c.node)]
                decision, solo = self._decide(run, pool, fresh)
                restore: tuple[str, ...] = ()
                if isinstance(decision, NeedMore) and not solo:
                    again, later, back = self._again(run, pool, now)
                    # a seat whose link was lost after it was asked, its worker up again: the worker may have run
                    # the step and keeps its answer, so it is asked again before anyone else takes the seat (a
                    # submitter that slept past the envelope window had its workers' answers refused as stale;
                    # with only a quorum's seats asked again, or fresh workers placed, the third went unpaid)
                    # (once: a worker that drops its link again is replaced, or a seat could be held for
                    # three timeouts by one that takes each ask, stays silent and drops the link)
                    restore = tuple(c.node for c in again if lost_once(run.tally, c.node))
                    if back and not restore:  # such a worker is in its short backoff: wait for it
                        continue
                    if restore:
                        decision = NeedMore(len(restore), decision.reuse)
                    elif decision.reuse or not fresh:
                        fresh = []  # (with the budget spent, never an unused worker: a failed seat is reused)
                        if again:  # no unused worker left: one whose fault has passed is asked again
                            fresh = again
                        elif later:  # one may come back (a restart, a full worker): wait for it
                            continue
                if isinstance(decision, NeedMore):
                    decision = self._dispatch(sid, run, decision, solo, fresh, pool, now, out, restore)
                if isinstance(decision, Accept) and held.intersection(decision.agreeing):
                    continue
                if isinstance(decision, (Accept, GiveUp)):
                    self._settle(sid, decision)
                    progressed = True
        return out

    def _start(self, sid: str, run: StepRun, step: Step, workers: dict[str, list[Candidate]]) -> None:
        """A waiting step: skipped when an earlier step failed, left waiting until all its earlier steps
        are done, else started (its params rendered from their outputs) — or given up at once when the
        mesh has too few workers for its redundancy."""
        deps = [self.steps[d].status for d in step.after]
        if any(d in ("failed", "skipped") for d in deps):
            run.status, run.error = "skipped", "an earlier step failed"
            return
        if not all(d == "done" for d in deps):
            return
        too_big = ""
        if run.params is None:  # (a recheck comes with its params already rendered)
            outputs = {d: self.steps[d].output for d in step.after}
            # python code is never templated: earlier outputs reach it as data only
            try:
                run.params = ({**step.params, "inputs": outputs} if run.kind == "python"
                              else render(step.params, outputs, model=run.kind in MODEL_KINDS))
                too_big = params_problem(run.params)
            except JobError as exc:  # (render measures first: a bomb of placeholders is never built)
                run.params, too_big = dict(step.params), str(exc)
            if run.kind in MODEL_KINDS and run.params.get("temperature", 0) and "seed" not in run.params:
                run.params["seed"] = sampling_seed(self.job_id, sid)  # every replica draws alike
        run.tally = Tally(self.job.quorum, self.job.redundancy, self.job.replica_limit,
                          margin=self.margin and self.job.quorum.spec == "majority")
        run.status = "running"
        run.scoring = run.comparator.kind == "score"
        if too_big:  # sent, it would be over every worker's frame cap (and the worker would blame us)
            self._settle(sid, GiveUp(too_big))
            return
        eligible = len(workers.get(step.needs, []))
        if eligible < self.job.redundancy:
            self._settle(sid, GiveUp(
                f"needs {self.job.redundancy} workers able to run {step.needs} steps other than the "
                f"submitter{self.barred}, the mesh offers {eligible}"))

    def _decide(self, run: StepRun, pool: list[Candidate], fresh: list[Candidate]) -> tuple[Decision, str]:
        """The tally's decision, overridden where this run knows better: the first placement asks for the
        job's full redundancy (or one trusted worker, `solo`: alone, or audited with one other); under scoring, one
        generation first, then verifiers for it."""
        disputed = len(set(run.tally.answers.values())) > 1
        new = self._new_prefixes(run, pool, fresh) if disputed else set()  # (only a dispute reads them)
        decision = run.tally.decide(more=bool(fresh), spare=self._spare(run), new_prefixes=bool(new))
        if isinstance(decision, NeedMore) and new:
            # escalating under dissent: no more seats than new prefixes, or the last ones go to parties
            # already heard (three honest workers among twenty sybils on one prefix tied 3 to 3 and failed)
            decision = NeedMore(min(decision.count, len(new)), decision.reuse)
        solo = ""
        if run.tally.issued == 0:  # first placement: the job's full redundancy, not just a quorum
            decision = NeedMore(1 if run.scoring else self.job.redundancy)
            solo, alone = ("", False) if run.scoring else self._trusted(pool)
            if solo and alone:
                run.alone, run.tally.redundancy = True, 1
                decision = NeedMore(1)
            elif solo and self.job.redundancy > AUDIT_REPLICAS:  # an audit: the trusted worker and one other
                run.tally.redundancy = AUDIT_REPLICAS
                decision = NeedMore(AUDIT_REPLICAS)
            else:
                solo = ""
        elif run.scoring and run.claim is None and isinstance(decision, NeedMore):
            decision = NeedMore(1)  # the generator failed: one more generation, then verify it
        elif run.scoring and run.claim is not None and not any(
                r.role == "verify" for r in run.replicas.values()):
            decision = NeedMore(min(self.job.redundancy - 1, len(fresh)) or 1)  # verify with all the rest
        return decision, solo

    @staticmethod
    def _new_prefixes(run: StepRun, pool: list[Candidate], fresh: list[Candidate]) -> set[str]:
        """Network prefixes of unused workers that no replica of this step is on yet."""
        prefix = {c.node: c.prefix for c in pool}
        return {c.prefix for c in fresh} - {prefix.get(n, n) for n in run.replicas}

    @staticmethod
    def _spare(run: StepRun) -> int:
        """Failed replicas of this step whose workers may still be asked again (see _again)."""
        tally = run.tally
        return sum(1 for node, reason in tally.failures.items()
                   if passing(reason) and tally.retries.get(node, 0) < MAX_RETRIES)

    @staticmethod
    def _again(run: StepRun, pool: list[Candidate], now: float) -> tuple[list[Candidate], bool, bool]:
        """Workers whose replica of this step failed for a passing reason (busy, its link lost or never
        made) and that may be asked again: (those up and past RETRY_AFTER_S, whether any other may still
        be: in backoff, or not up yet within REJOIN_S, whether one of those is up and lost its link after
        it was first asked). At most MAX_RETRIES times each."""
        tally, up = run.tally, {c.node: c for c in pool}
        again, later, back = [], False, False
        for node, reason in tally.failures.items():
            if not passing(reason) or tally.retries.get(node, 0) >= MAX_RETRIES:
                continue
            since = now - run.failed_at.setdefault(node, now)
            if node in up and since >= RETRY_AFTER_S:
                again.append(up[node])
            elif since < (RETRY_AFTER_S if node in up else REJOIN_S):
                later = True
                back = back or (node in up and lost_once(tally, node))
        return again, later, back

    def _dispatch(self, sid: str, run: StepRun, decision: NeedMore, solo: str, fresh: list[Candidate],
                  pool: list[Candidate], now: float, out: list[Dispatch], restore: tuple[str, ...] = ()) -> Decision:
        """Place the replicas `decision` asks for (appended to `out`): generations, or, once a claim is
        in under scoring, requests to score it; `restore`, seats asked again as they are. GiveUp when no
        unused worker is left."""
        picked = [solo] if solo else list(restore)  # a trusted worker alone, or the one an audit is of
        if not (solo and run.alone):  # a prefix never supplies most of a step's replicas: those it holds already count
            prefix = {c.node: c.prefix for c in pool}
            held = Counter(prefix[n] for n in {*run.replicas, *picked} if n in prefix)
            others = [c for c in fresh if c.node not in picked]
            picked += place(others, decision.count - len(picked), self.rng, self._suspects(run, pool), held)
        result: Decision = decision
        if not picked:
            code, said = run.tally.code_error()
            result = GiveUp(f"{code} ({said} worker{'s' * (said > 1)} said so; {run.tally.evidence()})" if code
                            else "no unused worker left: " + run.tally.evidence())
        verify = run.scoring and run.claim is not None
        kind, params = ("score", {**(run.params or {}), "claim": run.claim.output,
                                  "token_ids": run.claim.work["token_ids"]}) if verify else (
            run.kind, run.params)
        cards = {c.node: c.rates for c in pool}
        for node in picked:
            sent = now
            if node in run.tally.failures:
                run.tally.retry(node)
                run.failed_at.pop(node, None)
                # asked again after a lost link or a sleep, it may answer at once with the step it ran since the
                # first ask: its figures are bounded by the time since then (from the retry, honest workers were
                # paid 9-37% of their work after the submitter's laptop slept 40 s)
                sent = run.replicas[node].sent if node in run.replicas else now
            else:
                run.tally.issue(node)
            run.replicas[node] = Replica(node, deadline=now + self.job.timeout, role="verify" if verify else "generate",
                                         rates=cards.get(node, RateCard()), sent=sent)
            out.append(Dispatch(sid, node, kind, params, now + self.job.timeout))
        return result

    @staticmethod
    def _suspects(run: StepRun, pool: list[Candidate]) -> frozenset[str]:
        """Under dissent, the reputation groups of everyone who answered: escalation replicas come from
        other groups first, so a colluding group cannot fill the extra seats with its own."""
        if run.tally is None or len(set(run.tally.answers.values())) < 2:
            return frozenset()
        group = {c.node: c.cohort for c in pool}
        return frozenset(group[n] for n in run.tally.answers if n in group)

    def _trusted(self, candidates: list[Candidate]) -> tuple[str, bool]:
        """Adaptive replication (as BOINC): the first placed worker, when its run of validated results
        reaches N, runs the step alone, except with probability 1/run (1/N at first, less as the run grows,
        never under REPLICATE_FLOOR), when it is audited. (worker, alone), or ('', False) when the first
        worker is not trusted and the step is replicated as usual.

        The first seat goes to a proven worker (run ≥ PROVEN × N) when the candidates hold one. Drawn from
        all candidates alike, a submitter of a 10,000-node mesh rarely drew one it trusted, and replicated
        nearly every step. Not from all trusted (run ≥ N): a worker that cheats as soon as it is trusted
        (trust-builder, evader) then ran most steps alone while its run was short and its audits rare.
        Of the proven, one not already running a request of ours (`engaged`) first: the step would queue
        behind ours there. Never a worker not proven instead, which would replicate the step in full."""
        n = self.job.adaptive
        if n <= 0 or not candidates:
            return "", False
        proven = [c for c in candidates if c.streak >= PROVEN * n]
        idle = [c for c in proven if not c.engaged]
        (first,) = place(idle or proven or candidates, 1, self.rng)
        streak = next(c.streak for c in candidates if c.node == first)
        if streak < n:
            return "", False
        return first, self.rng.random() >= max(REPLICATE_FLOOR, 1.0 / streak)

    @staticmethod
    def _scored(run: StepRun) -> dict:
        """What a verifier of `run` scores, as pricing.cap reads it: the claim's token ids after the prompt."""
        if run.claim is None:
            return {}
        return {"token_ids": run.claim.work.get("token_ids"), "prompt": run.params.get("prompt")}

    def _representative(self, makers: list[Replica]) -> Replica:
        """The agreeing answer handed on: the exact output most of them gave (under `numeric:TOL` or `text`,
        answers that agree may still differ), a tie drawn by this run's RNG. Taken as the first by node id,
        it was a ground key's: two honest workers' exact 1000 became a hostile's 1008.9999 within the
        tolerance. (Under `exact` every agreeing answer is one output: no draw, nothing changes.)"""
        counts = Counter(r.digest for r in makers)
        most = max(counts.values())
        tied = sorted(d for d, c in counts.items() if c == most)
        pick = tied[0] if len(tied) == 1 else tied[self.rng.randrange(len(tied))]
        return next(r for r in makers if r.digest == pick)

    def _settle(self, sid: str, decision: Accept | GiveUp) -> None:
        run = self.steps[sid]
        tally = run.tally
        if isinstance(decision, Accept):
            judged = [r for r in run.replicas.values() if tally and r.node in tally.aside and r.verdict is not None]
            right = tuple(r.node for r in judged if r.verdict == (run.claim is not None and
                                                                  run.claim.key == decision.key))
            wrong = tuple(r.node for r in judged if r.node not in right)  # set-aside verdicts, judged now
            for n in right:
                run.replicas[n].key = decision.key
            decision = Accept(decision.key, tuple(sorted(decision.agreeing + right)),
                              tuple(sorted(decision.dissenting + wrong)), decision.failed)
            agreeing = [run.replicas[n] for n in decision.agreeing]
            makers = [r for r in agreeing if r.role == "generate"] or agreeing
            verifiers = [r for r in agreeing if r.role == "verify"]
            chosen = self._representative(makers)
            run.status, run.key, run.digest, run.output = "done", decision.key, chosen.digest, chosen.output
            limit = cap(run.kind, run.params, self.job.timeout)
            scored = self._scored(run)
            if verifiers:  # the generator is paid for the tokens its claim holds, which the verifiers scored, not
                limit = min(limit, cap("score", scored, self.job.timeout))  # for what it says (1 token paid as 2,048)
            if run.kind == "python" and len(makers) == 1 and makers[0].waited is not None:
                # alone, nothing measured against its claim: one CPU for the time it took, not STEP_CPUS (a trusted
                # worker held a 2 ms answer a sixteenth of the timeout and was paid 250.9 for 16 CPUs over it)
                limit = lone_limit(limit, makers[0].waited)
            billed = {r.node: r.billed() for r in makers}
            credits, basis = pay(run.kind, billed, {r.node: r.rates for r in makers}, limit)
            run.credit = min(credits.values())
            if verifiers:  # scoring is cheaper than generating, and paid as such
                vcredits, vbasis = pay("score", {r.node: r.work for r in verifiers},
                                       {r.node: r.rates for r in verifiers}, cap("score", scored, self.job.timeout))
                credits.update(vcredits)
                basis = f"{basis}; verifiers: {vbasis}"
            run.credits = credits
            self.outcomes.append(Outcome(sid, run.kind, True, run.digest, decision.agreeing,
                                         decision.dissenting, decision.failed, run.credit, basis=basis,
                                         credits=credits, overclaimed=overclaimed(run.kind, billed)))
        else:
            run.status, run.error = "failed", decision.reason
            dissent = tuple(sorted(tally.answers)) if tally else ()
            failed = tuple(sorted(tally.failures)) if tally else ()
            self.outcomes.append(Outcome(sid, run.kind, False, "", (), dissent, failed, 0.0, decision.reason))
        if tally:
            for node in list(tally.pending):  # answers still out no longer matter
                tally.fail(node, "not needed")

    @classmethod
    def recheck(cls, job_id: str, of: "JobRun", step: str, rng: random.Random) -> "JobRun":
        """A fresh run of one settled step with the inputs it had, at least 2 replicas (by workers the
        driver still trusts), to confirm or overturn an answer a caught cheater had vouched for."""
        orig = of.job.step(step)
        job = Job(f"recheck of {of.job_id}/{step}", [Step(step, orig.kind, orig.params, [], orig.compare)],
                  max(2, of.job.redundancy), of.job.quorum, of.job.timeout)
        run = cls(job_id, job, rng)
        run.steps[step].params = of.steps[step].params
        return run

    def apply_recheck(self, step: str, recheck: "JobRun") -> tuple[str, tuple[str, ...]]:
        """Judge a finished recheck of `step`: 'confirmed', 'inconclusive' (it found no quorum), or
        'overturned' — its answer replaces the accepted one, and those who vouched for the old answer
        (returned) are now known to have agreed on a wrong one."""
        run, new = self.steps[step], recheck.steps[step]
        if new.status != "done":
            return "inconclusive", ()
        if run.comparator.key(new.output) == run.key:
            return "confirmed", ()
        vouched = run.vouchers()
        run.output, run.digest, run.overturned_by = new.output, new.digest, recheck.job_id
        run.key = run.comparator.key(new.output)
        return "overturned", vouched

    def abort(self, reason: str) -> list[tuple[str, str, float, str]]:
        """Fail every step not yet settled (cancelled, or the driver is going away). Work already answered
        in them is owed: (step, node, credit, basis) for each answered replica, paid at its own card for its
        own measured work (no quorum backs it), capped by the step's limits and, where others of its role
        answered too, by their lower median (one answer claiming the whole timeout was paid for it, right
        or wrong); a python step's only answer, by UNVERIFIED_CPUS for the time it took."""
        owed: list[tuple[str, str, float, str]] = []
        for sid, run in self.steps.items():
            if run.status == "running" and run.tally is not None:
                answered = [run.replicas[n] for n in sorted(run.tally.answers)]
                for rep in answered:
                    node = rep.node
                    kind = run.kind if rep.role == "generate" else "score"
                    limits = (cap(run.kind, run.params, self.job.timeout) if rep.role == "generate" else
                              cap("score", self._scored(run), self.job.timeout))
                    peers = sorted(quantity(kind, r.billed()) for r in answered if r.role == rep.role)
                    if len(peers) > 1:
                        limits = min(limits, peers[(len(peers) - 1) // 2])
                    elif kind == "python" and rep.waited is not None:
                        # the only answer, backed by nothing: one CPU for the time it took, not 16 (a made-up
                        # answer sent at 1/16 of the timeout, claiming all of it, was paid 1,200 on a cancel)
                        limits = lone_limit(limits, rep.waited)
                    credits, basis = pay(kind, {node: rep.billed()}, {node: rep.rates}, limits)
                    run.credits[node] = credits[node]
                    owed.append((sid, node, credits[node], basis))
            if run.status in ("waiting", "running"):
                run.status, run.error = "failed", reason
        return owed

    def take_outcomes(self) -> list[Outcome]:
        out, self.outcomes = self.outcomes, []
        if self.log is not None and out:
            self.log.append(["outcomes", [dataclasses.asdict(o) for o in out]])
        return out

    @property
    def finished(self) -> bool:
        return all(r.status in ("done", "failed", "skipped") for r in self.steps.values())

    @property
    def status(self) -> str:
        if not self.finished:
            return "running"
        return "done" if all(r.status == "done" for r in self.steps.values()) else "failed"

    def report(self) -> dict:
        steps = {}
        for sid, run in self.steps.items():
            replicas = []
            for node, rep in run.replicas.items():
                entry = {"node": node, "digest": rep.digest, "agreed": bool(run.key) and rep.key == run.key,
                         "role": rep.role}
                if rep.verdict is not None:
                    entry["verdict"] = "accepted" if rep.verdict else "rejected"
                if rep.error:
                    entry["error"] = rep.error
                if rep.work:
                    entry["work"] = rep.work
                if node in run.credits:
                    entry["credit"] = run.credits[node]
                replicas.append(entry)
            steps[sid] = {"status": run.status, "kind": run.kind, "output": run.output, "digest": run.digest,
                          "replicas": replicas, "credit": run.credit, "unreplicated": run.alone,
                          "compare": run.comparator.spec}
            if run.comparator.kind == "similar":
                steps[sid]["compare_note"] = "replicas grouped by shared words: not a correctness check"
            if run.error:
                steps[sid]["error"] = run.error
            if run.overturned_by:
                steps[sid]["overturned_by"] = run.overturned_by
        return {"job_id": self.job_id, "name": self.job.name, "status": self.status, "steps": steps}


def replay_log(job_id: str, job: Job, seed: int, log: list, margin: bool = True) -> list:
    """Feed a recorded log's inputs to a fresh JobRun seeded alike; returns the new run's log, which
    equals the recorded one exactly when the core decided the same under both drivers."""
    run = JobRun(job_id, job, random.Random(seed), margin, record=True)
    for entry in log:
        name, args = entry[0], entry[1:]
        if name == "advance":
            workers = {k: [candidate_from(c) for c in v] for k, v in args[0].items()}
            run.advance(workers, args[1], frozenset(args[2]))
        elif name == "outcomes":
            run.take_outcomes()
        elif name != "dispatched":
            getattr(run, name)(*args)
    return json.loads(json.dumps(run.log))
