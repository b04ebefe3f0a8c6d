"""The submitter side of a node: drives each job's sans-I/O JobRun over the network, then pays the
agreeing workers (ledger first, receipts second) and records who disagreed or failed to answer."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ledger.receipts import make_receipt
from ledger.store import Entry
from mesh.core.dag import Job
from mesh.core.jobrun import Dispatch, JobRun, Outcome
from mesh.core.spotcheck import Challenge, SpotChecker
from mesh.errors import CreditError
from mesh.node.events import EventLog
from mesh.node.flow import Limits
from mesh.node.peers import Peer
from mesh.wire.attest import attestation
from mesh.wire.canonical import digest
from mesh.wire.envelope import Envelope
from mesh.wire.messages import Progress, ReceiptMsg, StepRequest, StepResult

if TYPE_CHECKING:
    from mesh.node.lifecycle import Node

log = logging.getLogger("mesh.node.submitter")
PER_WORKER = Limits().max_inflight_per_peer  # requests a worker takes from one peer at once
TICK_S = 1.0  # how often a job re-checks deadlines when nothing else wakes it
PARTIAL_TEXT = 4096  # characters of a running replica's streamed text shown in the job report
PROGRESS_EVENT_TEXT = 1024  # of it in each progress event (jobs keep their events while in memory)


@dataclass
class JobState:
    run: JobRun
    wake: asyncio.Event
    done: asyncio.Event
    created: float
    credits: float = 0.0
    payment_error: str = ""  # the ledger refused to record this job's payments
    recheck_of: tuple[str, str] | None = None  # (job, step) this run rechecks
    seed: int = 0  # of the run's RNG (reported with its core log)
    rechecks: dict[str, dict] = field(default_factory=dict)  # step → the recheck of its accepted answer
    partial: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)  # (step, node) → streamed
    events: EventLog = field(default_factory=EventLog)
    signed: dict[tuple[str, str], dict] = field(default_factory=dict)  # (step, node) → its signed answer


class Submitter:
    def __init__(self, node: "Node"):
        self.node = node
        self.jobs: dict[str, JobState] = {}
        self.outstanding: dict[str, dict[tuple[str, str], float]] = {}  # worker → (job, step) → deadline
        self.queued: dict[str, deque[tuple[str, JobState, Dispatch]]] = {}  # worker → replicas waiting for it
        self.spot = SpotChecker(node.opts.spot_rate, node.opts.blacklist_s, random.Random(node.rng.getrandbits(64)))

    def submit(self, job: Job) -> str:
        """Start a job; raises CreditError when this node's ledger is broken or it is past its credit line."""
        node = self.node
        if node.ledger_error:
            raise CreditError(f"this node's ledger cannot record payments ({node.ledger_error}); fix it and "
                              "restart the node")
        if node.balance < -node.opts.credit_line:
            raise CreditError(f"this node has spent {-node.balance:g} credits more than it earned, past its credit "
                              f"line of {node.opts.credit_line:g}: run a worker for others to earn credits, or "
                              "raise --credit-line")
        job_id = uuid.uuid4().hex[:20]
        seed = self.node.rng.getrandbits(64)
        self._start(JobRun(job_id, job, random.Random(seed), record=self.node.opts.core_log), seed=seed)
        log.info("job %s (%s) submitted: %d steps at r=%d", job_id, job.name, len(job.steps), job.redundancy)
        return job_id

    def _start(self, run: JobRun, recheck_of: tuple[str, str] | None = None, seed: int = 0) -> None:
        st = self.jobs[run.job_id] = JobState(run, asyncio.Event(), asyncio.Event(), time.time(),
                                              recheck_of=recheck_of, seed=seed)
        st.events.publish("job", {"job_id": run.job_id, "name": run.job.name, "steps": run.job.order(),
                                  "redundancy": run.job.redundancy, "quorum": run.job.quorum.spec})
        st.events.diff(run)  # every step, waiting
        self.node.spawn(self._drive(run.job_id, st))

    def _recheck(self, cheater: str) -> None:
        """Run again, on workers still trusted, every accepted step a just-caught cheater vouched for."""
        for job_id, sid in self.spot.to_recheck(cheater):
            st = self.jobs.get(job_id)
            if st is None or st.run.steps[sid].status != "done" or sid in st.rechecks:
                continue
            rid = uuid.uuid4().hex[:20]
            st.rechecks[sid] = {"job": rid, "cause": cheater, "verdict": "running"}
            self._start(JobRun.recheck(rid, st.run, sid, random.Random(self.node.rng.getrandbits(64))),
                        (job_id, sid))
            log.info("rechecking %s/%s (vouched for by %s) as job %s", job_id, sid, cheater[:12], rid)

    def _judge_recheck(self, rid: str, st: JobState) -> None:
        """Confirm or overturn the rechecked answer; those who vouched for an overturned one disagreed."""
        job_id, sid = st.recheck_of or ("", "")
        orig = self.jobs.get(job_id)
        if orig is None:  # finished long ago and let go of (its report is on disk): nothing to judge
            log.info("recheck %s of %s/%s ended after the job left memory", rid, job_id, sid)
            return
        verdict, vouched = orig.run.apply_recheck(sid, st.run)
        if vouched:
            why = {"recheck": rid, "accepted": orig.run.steps[sid].digest}
            self.node.spawn(self.node.record([Entry("disagreed", job_id, sid, n, 0.0, {"why": why}) for n in vouched]))
        orig.rechecks[sid]["verdict"] = verdict
        log.log(logging.WARNING if verdict == "overturned" else logging.INFO, "recheck of %s/%s: %s",
                job_id, sid, verdict)
        self._save(job_id)

    async def _drive(self, job_id: str, st: JobState) -> None:
        try:
            await self._loop(job_id, st)
        finally:  # whatever ends the driver (a bug, cancellation at shutdown) must not leave waiters hanging
            if not st.run.finished:
                st.run.abort("the job's driver stopped (node shutting down or internal error; see node.log)")
            self._save(job_id)
            if st.recheck_of:
                self._judge_recheck(job_id, st)
            st.events.diff(st.run)
            st.events.publish("done", self.report(job_id, st))
            st.done.set()
            log.info("job %s %s", job_id, st.run.status)
            self._let_go()

    def _let_go(self) -> None:
        """Keep the newest `--keep-jobs` finished jobs in memory; older ones live on as their reports in
        <home>/jobs (GET /jobs/{id} and its events read them there). Without this, a node serving chat
        completions (a job each) grew without bound."""
        finished = [j for j, s in self.jobs.items() if s.done.is_set()]
        for job_id in finished[:max(0, len(finished) - self.node.opts.keep_jobs)]:
            del self.jobs[job_id]

    async def _loop(self, job_id: str, st: JobState) -> None:
        run = st.run
        while True:
            st.wake.clear()
            now = time.monotonic()
            run.on_time(now)
            for d in run.advance(self.node.candidates(), now, self.spot.held(now)):
                self._dispatch(job_id, st, d)
            for node in list(self.queued):  # slots freed by deadlines passing, with no answer to free them
                self._drain(node)
            outcomes = run.take_outcomes()
            if outcomes:
                await self._settle(job_id, st, outcomes)
            st.events.diff(run)
            if run.finished:
                return
            try:
                await asyncio.wait_for(st.wake.wait(), TICK_S)
            except asyncio.TimeoutError:
                pass

    def _dispatch(self, job_id: str, st: JobState, d: Dispatch) -> None:
        """Send a replica now (its slot taken at once), or queue it while this worker already has as many
        of our requests as it takes from one peer (a worker answers more with "busy", failing the replica)."""
        if self._busy(d.node):
            self.queued.setdefault(d.node, deque()).append((job_id, st, d))
            return
        self.outstanding.setdefault(d.node, {})[(job_id, d.step)] = d.deadline
        self.node.spawn(self._send(job_id, st, d))

    async def _send(self, job_id: str, st: JobState, d: Dispatch) -> None:
        peer = self.node.peers.by_node(d.node)
        req = StepRequest(job_id, d.step, d.kind, d.params, max(1.0, d.deadline - time.monotonic()))
        if peer is None or not await self.node.send_dialling(peer, "step", req):
            self._release(d.node, job_id, d.step)
            st.run.on_failure(d.step, d.node, "unreachable")
            st.wake.set()
            return
        challenge = self.spot.challenge(d.kind)
        if challenge is not None:  # indistinguishable from real work for the worker
            spot_id = f"spot-{uuid.uuid4().hex[:16]}"
            self.spot.issue(spot_id, d.node, challenge, time.monotonic() + req.timeout)
            self.outstanding[d.node][(spot_id, "check")] = d.deadline
            self.node.send(peer, "step", StepRequest(spot_id, "check", challenge.kind, challenge.params, req.timeout))

    def _busy(self, node: str) -> bool:
        out = self.outstanding.get(node, {})
        now = time.monotonic()
        for key in [k for k, deadline in out.items() if deadline <= now]:
            del out[key]  # past its deadline: the core has failed it; the worker's slot is free or dead
        return len(out) >= PER_WORKER

    def _release(self, node: str, job_id: str, step: str) -> None:
        """A request to `node` was answered (or never sent): send what waits for that worker."""
        self.outstanding.get(node, {}).pop((job_id, step), None)
        self._drain(node)

    def _drain(self, node: str) -> None:
        """Send the replicas queued for `node` that still matter, as far as its free slots go."""
        waiting = self.queued.get(node)
        while waiting and not self._busy(node):
            queued_job, st, d = waiting.popleft()
            step_run = st.run.steps[d.step]
            if not st.run.finished and step_run.tally is not None and d.node in step_run.tally.pending:
                self._dispatch(queued_job, st, d)
        if not waiting:
            self.queued.pop(node, None)

    def _on_spot(self, node: str, challenge: Challenge, res: StepResult) -> None:
        ok = res.ok and digest(res.output) == res.digest
        if self.spot.judge(node, challenge, ok, res.output, time.monotonic()):
            log.info("spot check passed by %s", node[:12])
        else:
            got = res.digest if res.ok else f"error: {res.error}"
            log.warning("spot check FAILED by %s (got %s): blacklisted", node[:12], got[:40])
            entry = Entry("spot_failed", "spot", res.job, node, 0.0,
                          {"expected": digest(challenge.expected), "got": got, "kind": challenge.kind})
            self.node.spawn(self.node.record([entry]))
            for st in self.jobs.values():
                if not st.run.finished:
                    st.run.on_node_distrusted(node, "failed a spot check")
            self._recheck(node)
        for st in self.jobs.values():
            st.wake.set()

    def on_result(self, peer: Peer, res: StepResult, env: Envelope | None = None) -> None:
        self._release(peer.node, res.job, res.step)
        challenge = self.spot.take(res.job, peer.node)
        if challenge is not None:
            self._on_spot(peer.node, challenge, res)
            return
        st = self.jobs.get(res.job)
        if st is not None:
            st.run.on_time(time.monotonic())  # an answer past its replica's deadline is late, whatever the tick
        ok = res.ok
        if ok and digest(res.output) != res.digest:
            ok, res.error = False, "digest does not match output"
        if st is None or not st.run.on_result(res.step, peer.node, ok, res.digest, res.output, res.work, res.error):
            self.node.receiver.count("unexpected-result")  # never asked, late, or asked twice
            log.warning("refused result from %s: unexpected-result", peer.node[:12])
            return
        if env is not None and ok:
            st.signed[(res.step, peer.node)] = attestation(env)
        st.wake.set()

    def on_progress(self, peer: Peer, msg: Progress) -> None:
        """Streamed text of a replica we are waiting for; anything else is dropped (and counted)."""
        st = self.jobs.get(msg.job)
        run = st.run.steps.get(msg.step) if st else None
        if st is None or run is None or run.tally is None or peer.node not in run.tally.pending:
            self.node.receiver.count("unexpected-progress")
            return
        st.partial[(msg.step, peer.node)] = (msg.tokens, msg.text)
        st.events.publish("progress", {"step": msg.step, "node": peer.node, "tokens": msg.tokens,
                                       "text": msg.text[-PROGRESS_EVENT_TEXT:]})

    def on_node_lost(self, node: str, reason: str) -> None:
        self.outstanding.pop(node, None)
        self.queued.pop(node, None)  # the core fails those replicas below
        for st in self.jobs.values():
            if not st.run.finished:
                st.run.on_node_lost(node, reason)
                st.wake.set()

    async def _settle(self, job_id: str, st: JobState, outcomes: list[Outcome]) -> None:
        """Record settled steps in the ledger (one batch), then hand receipts to the paid workers."""
        ts = int(time.time() * 1000)
        entries: list[Entry] = []
        receipts: list[tuple[str, dict]] = []
        job = st.run.job
        for o in outcomes:
            step_run = st.run.steps[o.step]
            replicas = step_run.replicas
            if o.accepted:
                self.spot.remember(o.kind, step_run.params or {}, step_run.output)
                self.spot.vouch(o.agreeing, job_id, o.step)
            why = {  # the evidence behind every entry of this step, for `mesh ledger explain`
                "rule": job.quorum.spec, "needed": job.quorum.needed(job.redundancy), "redundancy": job.redundancy,
                "accepted": o.digest, "agreeing": list(o.agreeing),
                "answers": {n: replicas[n].digest for n in (*o.agreeing, *o.dissenting)},
                "failed": {n: replicas[n].error for n in o.failed}, "credit_basis": o.basis, "reason": o.reason,
            }
            for node in o.agreeing:
                r = make_receipt(self.node.identity, job_id, o.step, node, o.credit_of(node), ts)
                receipts.append((node, r))
                entries.append(Entry("paid", job_id, o.step, node, -o.credit_of(node), {"receipt": r, "why": why}))
            entries += [Entry(kind, job_id, o.step, node, 0.0, {"why": why}) for kind, node in o.verdicts()]
        if not await self.node.record(entries, ts):
            st.payment_error = f"the ledger could not record payments, none were made: {self.node.ledger_error}"
            log.error("job %s: %s", job_id, st.payment_error)
            return
        st.credits += sum(-e.amount for e in entries if e.kind == "paid")
        for node, r in receipts:
            peer = self.node.peers.by_node(node)
            if peer is not None:
                await self.node.send_dialling(peer, "receipt", ReceiptMsg(r))

    def _save(self, job_id: str) -> None:
        (self.node.opts.home / "jobs" / f"{job_id}.json").write_text(json.dumps(self.report(job_id)))

    def report(self, job_id: str, st: JobState | None = None) -> dict:
        """A job's report; pass `st` when holding it across an await (it may leave memory meanwhile)."""
        st = st or self.jobs[job_id]
        rep = st.run.report()
        rep["credits_spent"] = round(st.credits, 6)
        if st.payment_error:
            rep["payment_error"] = st.payment_error
        rep["submitter"] = self.node.id
        for sid, step in rep["steps"].items():  # text streamed so far by replicas still generating
            pending = st.run.steps[sid].tally.pending if st.run.steps[sid].tally else []
            for replica in step["replicas"]:
                got = st.partial.get((sid, replica["node"]))
                if got and replica["node"] in pending:
                    replica["partial"] = {"tokens": got[0], "text": got[1][-PARTIAL_TEXT:]}
        if st.rechecks:
            rep["rechecks"] = st.rechecks
        if st.recheck_of:
            rep["recheck_of"] = "/".join(st.recheck_of)
        if st.run.log is not None:
            rep["core_log"] = {"seed": st.seed, "job": st.run.job.to_json(), "log": st.run.log}
        return rep
