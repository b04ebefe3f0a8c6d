"""The submitter side of a node: the asyncio driver of the sans-I/O submission core
(mesh.core.submission). It carries out the core's effects — replicas and spot checks over the network,
ledger batches (then receipts to the paid workers, through the outbox until each is acknowledged), job
events and reports — and feeds back answers, lost peers and the time. Every input reaches the node's
journal before the core decides on it, so a node killed at any moment replays the journal into the same
core at its next start and resumes (`resume`): answers already in are not asked again, replicas that were
out are asked again, unwritten ledger batches are written (once: the ledger keys each row). The journal
commits the inputs of a few event-loop turns together (group commit: one fsync for a burst), and what
those inputs cause (sends, ledger writes, receipts, the HTTP reply to a submit, what readers of a job see)
waits here until that commit (`_flush`). It sees the node only through Ports, never the Node itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.receipts import make_receipt
from ledger.store import Entry, Ledger
from mesh.core.dag import MODEL_KINDS, Job
from mesh.core.effects import Alarm, Answer, Effect, Forgotten, Judged, Rechecked, Record, Send, Started, Wake
from mesh.core.jobrun import JobRun
from mesh.core.policy import Candidate
from mesh.core.submission import Config, Submission, SubmittedJob, new_job_id
from mesh.core.trust import outvote_of
from mesh.errors import CreditError, JournalError, LedgerError
from mesh.node.events import EventLog
from mesh.node.home import LEDGER_FILE
from mesh.node.journal import COMPACT_AT, Journal, Replayed
from mesh.node.outbox import Outbox
from mesh.node.peers import Peer
from mesh.node.tally import Tally
from mesh.wire.envelope import Envelope
from mesh.wire.identity import Identity
from mesh.wire.messages import (
    Cancel,
    Outvoted,
    Progress,
    ReceiptAck,
    ReceiptAsk,
    ReceiptMsg,
    SignedAnswer,
    StepRequest,
    StepResult,
    asked_digest,
)
from mesh.wire.proof import canonical_payload, outvoted, signed_answer

log = logging.getLogger("mesh.node.submitter")
TICK_S = 1.0  # how often a job re-checks deadlines when nothing else wakes it
LINKS_BACK_S = 30.0  # a job that had its workers waits this long for their links before its steps give up
PARTIAL_TEXT = 4096  # characters of a running replica's streamed text shown in the job report
PROGRESS_EVENT_TEXT = 1024  # of it in each progress event (jobs keep their events while in memory)
MAX_ASKED = 50_000  # requests remembered for the answer to name (Submitter._asked)
CORE_LOG_FILE = "submission-log.jsonl"  # with --core-log: the core's inputs and effects (replay_log)
# loop turns a group commit waits for more inputs: a driver woken by an answer ticks a few turns after it
# (Event → wait_for → task), and with 5 its tick and the receipts it holds share the answer's commit (3: not)
FLUSH_HOPS = 5


@dataclass(frozen=True)
class Ports:
    """What the submitter may ask of the rest of its node, and nothing more."""

    node_id: str
    identity: Identity  # signs receipts
    home: Path  # reports go to home/jobs
    send: Callable[[str, str, object], Awaitable[bool]]  # (node id, kind, payload), dialling if need be → sent?
    record: Callable[[list[Entry], int], Awaitable[bool]]  # one ledger batch at ts (ms); folds reputation if True
    candidates: Callable[[], dict[str, list[Candidate]]]  # workers by capability, this node excluded
    spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task]  # a task the node owns (cancelled at shutdown)
    count: Callable[[str], None]  # a refused message, by reason (`mesh status`)
    balance: Callable[[], float]  # credits earned minus spent
    ledger_error: Callable[[], str]  # why the ledger refused a write ('' when it never did)
    find: Callable[[dict[str, int]], Awaitable[None]]  # {capability: workers wanted}: look for them, wait a while
    tell: Callable[[str, str, object], bool] = lambda node, kind, payload: False  # on an open link only → sent?
    prove: Callable[[Outvoted], None] = lambda proof: None  # pass a proof of a wrong answer on to linked peers
    tally: Tally = field(default_factory=Tally)  # ended jobs, their steps and replicas (/metrics)


@dataclass(frozen=True)
class Options:
    spot_rate: float = 0.0
    blacklist_s: float = 3600.0
    credit_line: float = 10.0
    keep_jobs: int = 1000
    core_log: bool = False


@dataclass
class JobState:
    job: SubmittedJob  # the core's view: run, rechecks, credits
    wake: asyncio.Event
    done: asyncio.Event
    created: float
    partial: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)  # (step, node) → streamed
    events: EventLog = field(default_factory=EventLog)
    signed: dict[tuple[str, str], SignedAnswer] = field(default_factory=dict)  # (step, node) → its signed answer
    cancelled: set[tuple[str, str]] = field(default_factory=set)  # (node, step) told to stop: no longer needed
    resumed: bool = False  # its node restarted (or was killed) while it ran, and it went on from the journal
    had_workers: bool = False  # ticked with enough workers for its steps (see Submitter._links_gone)
    recovering: bool = False  # resumed after a restart, and has not yet had enough workers linked
    short_since: float | None = None  # core time since when it has had too few
    ended: bool = False  # its driver is done and its payments are written: its report may say it ended
    closing: list[Record] = field(default_factory=list)  # a cancel's payments: written before the job ends

    @property
    def run(self) -> JobRun:
        return self.job.run

    @property
    def status(self) -> str:
        """What the job's readers are told: settled by the core but its payments still being written, it
        is still `running` (whoever reads `done` may take the ledger to hold them: a script that then checks
        balances, a harness that stops the workers)."""
        return self.run.status if self.ended or not self.run.finished else "running"


def request(eff: Send, now: float) -> StepRequest:
    """The StepRequest of a Send: the same fields for a replica and a spot check (never `check`)."""
    return StepRequest(eff.job, eff.step, eff.kind, dict(eff.params), max(1.0, eff.deadline - now))


@dataclass
class Resumed:
    """What a replay of the journal left for the driver to pick up once the node runs."""

    sends: dict[tuple[str, str, str], Send] = field(default_factory=dict)  # (node, job, step) → its last Send
    alarms: set[float] = field(default_factory=set)
    submitted: dict[str, float] = field(default_factory=dict)  # job → wall time it was submitted


class Submitter:
    def __init__(self, ports: Ports, opts: Options, seed: int, journal: Journal | None = None):
        """`journal`: the node's (HOME/journal.db); its current epoch is replayed into the core here, and
        `resume` picks the jobs up once the node runs. None: an in-memory journal (nothing survives)."""
        self.ports, self.opts = ports, opts
        self.rng = random.Random(seed)  # job seeds
        self.journal = journal or Journal(None)
        self.outbox = Outbox(self.journal)
        self._holding = False  # the journal failed and effects were held back (_held)
        self._pending: list[tuple[Effect, tuple[Outvoted, ...]]] = []  # effects waiting for the commit
        self._flush_call: asyncio.Handle | None = None  # the next group commit (_flush), when one is due
        self._flushed: asyncio.Future | None = None  # done when it has run (_durable)
        self.journal.group_commit(self._schedule_flush)
        self.jobs: dict[str, JobState] = {}
        self.outbox_due = asyncio.Event()  # a receipt to send now (a batch written, a payee back)
        replayed = self.journal.replayed()
        self.offset = Journal.clock_at(replayed, time.monotonic())  # the core's clock goes on across restarts
        self._resumed: Resumed | None = None
        self._logged = 0  # core log entries already written to CORE_LOG_FILE
        # (worker, job, step) → asked_digest of the request sent: an answer must name it (wire.proof). The
        # oldest are let go past MAX_ASKED (requests never answered); an answer to one let go is not checked
        self._asked: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        if replayed is None:
            self.core = self._fresh_core()
        else:
            self.core = Submission(replayed.config, record=opts.core_log)
            self._resumed = self._replay(replayed)
            self.core.sink = self._journal_input
            self._logged = len(self.core.log or ())  # (what the replay logged again was written by the last run)

    def now(self) -> float:
        """The core's clock: monotonic, continued from the journal across restarts."""
        return time.monotonic() + self.offset

    def _reconcile(self, writing: set[str]) -> None:
        """Receipts held for batches whose write was reported failed: the ledger decides. A payment it
        holds (the write landed after its caller gave up) gets its receipt sent; one it lacks, never."""
        stranded = self.outbox.stranded(writing)
        if not stranded:
            return
        led = self._read_ledger(f"settle {len(stranded)} held receipts")
        if led is None:
            return
        found: dict[str, float] = {}  # job → what the ledger holds of its stranded payments
        try:
            for peer, job, step in stranded:
                receipt = led.receipt("paid", job, step, peer)
                self.outbox.release(peer, job, step, receipt)
                if receipt is not None:
                    found[job] = found.get(job, 0.0) + float(receipt["amount"])
        finally:
            led.close()
        for job, amount in found.items():
            self._amend(job, amount)

    def _read_ledger(self, why: str) -> Ledger | None:
        """This node's ledger opened read-only (the caller closes it); None, logged, when it cannot be."""
        try:
            return Ledger(self.ports.home / LEDGER_FILE, readonly=True)
        except LedgerError as exc:
            log.error("cannot read the ledger to %s: %s", why, exc)
            return None

    def _amend(self, job_id: str, amount: float) -> None:
        """A saved report that said its payments failed, when the ledger holds them after all (it answered
        after its caller gave up): the report said "0 credits spent" for good, the workers paid meanwhile."""
        path = self.ports.home / "jobs" / f"{job_id}.json"
        try:
            rep = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # no report saved (the job is still running: the core counts its payments itself)
        rep["credits_spent"] = round(float(rep.get("credits_spent") or 0.0) + amount, 6)
        rep["payment_error"] = (f"the ledger answered late; {amount:g} credits of payments it held were found in it "
                                "at the next start, and their receipts sent")
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(rep))
            os.replace(tmp, path)
        except OSError as exc:
            log.error("job %s: cannot amend its report: %s", job_id, exc)
            tmp.unlink(missing_ok=True)

    def _journal_input(self, entry: list) -> None:
        self.journal.append(entry, self.now())

    def _fresh_core(self) -> Submission:
        opts = self.opts
        config = Config(self.rng.getrandbits(64), opts.spot_rate, opts.blacklist_s, keep=opts.keep_jobs,
                        job_log=opts.core_log)
        self.journal.start_epoch(config)
        self._logged = 0
        return Submission(config, record=opts.core_log, sink=self._journal_input)

    def _replay(self, replayed: Replayed) -> Resumed:
        """Feed the journal's inputs to the fresh core (nothing is sent: effects are only noted)."""
        got = Resumed()
        for i, (entry, wall) in enumerate(zip(replayed.entries, replayed.walls, strict=True)):
            try:
                effects = self.core.apply(entry)
            except (ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:  # (an entry the core
                # cannot take: a traceback at start told the owner nothing)
                raise JournalError(f"the job journal {self.journal.path} does not replay at input {i + 1}: "
                                   f"{type(exc).__name__}: {str(exc)[:300]}; move it aside to start without its "
                                   "unfinished jobs (it also holds receipts its workers have not acknowledged and "
                                   "the steps this node is owed for: those are given up with it)") from None
            if entry[0] == "submit":
                got.submitted[entry[1]] = wall
            for eff in effects:
                if isinstance(eff, Send):
                    got.sends[(eff.node, eff.job, eff.step)] = eff
                elif isinstance(eff, Alarm):
                    got.alarms.add(eff.at)
        if replayed.config.spot_rate != self.opts.spot_rate or replayed.config.keep != self.opts.keep_jobs:
            log.info("the journal's jobs run on with its settings (spot rate %g, keep %d) until they end",
                     replayed.config.spot_rate, replayed.config.keep)
        return got

    def resume(self) -> int:
        """After a restart: drive the jobs the journal left unfinished, ask again the replicas that were
        out (their workers dropped them with our link; one that had answered sends its kept answer), re-arm
        spot-check alarms, write the ledger batches not known written, save reports not yet saved. Returns
        the jobs resumed."""
        got, self._resumed = self._resumed, None
        if got is None:
            return 0
        now = self.now()
        for job_id, sj in list(self.core.active.items()):
            self._start(Started(job_id, sj.recheck_of), got.submitted.get(job_id))
        for node, out in self.core.outstanding.items():
            for job_id, sid in list(out):
                eff = got.sends.get((node, job_id, sid))
                if eff is not None:
                    self.ports.spawn(self._send(eff))
        for at in sorted(a for a in got.alarms if a > now):
            self.ports.spawn(self._alarm(at))
        self.ports.spawn(self._alarm(now))
        for rec in self.core.unconfirmed:
            self.ports.spawn(self._record(rec))
        self._reconcile({f"{self.journal.epoch}:{rec.id}" for rec in self.core.unconfirmed})
        for job_id, sj in self.core.jobs.items():  # ended just before the kill: its report may be missing
            if job_id not in self.core.active and not (self.ports.home / "jobs" / f"{job_id}.json").exists():
                self._save(job_id, JobState(sj, asyncio.Event(), asyncio.Event(), got.submitted.get(job_id, 0.0),
                                            ended=True))  # its unwritten batches are in the journal, retried above
        if self.core.active:
            log.info("resumed %d unfinished jobs from the journal (%d replicas asked again, %d ledger batches "
                     "to write)", len(self.core.active), sum(map(len, self.core.outstanding.values())),
                     len(self.core.unconfirmed))
        return len(self.core.active)

    def submit(self, job: Job) -> str:
        """Start a job; raises CreditError when this node's ledger is broken or it is past its credit line."""
        error, balance = self.ports.ledger_error(), self.ports.balance()
        if error:
            raise CreditError(f"this node's ledger cannot record payments ({error}); fix it and restart the node")
        if self.journal.error:
            raise self._journal_refusal()
        if balance < -self.opts.credit_line:
            raise CreditError(f"this node has spent {-balance:g} credits more than it earned, past its credit "
                              f"line of {self.opts.credit_line:g}: run a worker for others to earn credits, or "
                              "raise --credit-line")
        job_id = new_job_id(uuid.uuid4().int)  # the format the core's spot checks share
        effects = self.core.submit(job_id, job, self.rng.getrandbits(64))
        if self.journal.error:  # this very job could not be journaled: it is refused, never run unkept
            self.core.abort(job_id, self.journal.error)
            raise self._journal_refusal()
        self._apply_all(effects)
        log.info("job %s (%s) submitted: %d steps at r=%d", job_id, job.name, len(job.steps), job.redundancy)
        return job_id

    async def submit_kept(self, job: Job) -> str:
        """`submit`, answered once the job is on disk: its id told to the client is an effect of its input
        too. Raises JournalError (and the job is given up, nothing of it sent) when the commit fails."""
        job_id = self.submit(job)
        if not await self._durable():
            self.core.abort(job_id, self.journal.error)  # (held: the journal stopped)
            raise self._journal_refusal()
        return job_id

    def shown(self, st: JobState) -> dict:
        """A job's report for a reader outside the node: what it shows is on disk first."""
        self.journal.commit()
        return self.report(st.run.job_id, st)

    def visible(self) -> dict[str, JobState]:
        """The jobs in memory, for a reader outside the node: what their states show is on disk first."""
        self.journal.commit()
        return self.jobs

    def _journal_refusal(self) -> JournalError:
        return JournalError(f"{self.journal.error}; new jobs are refused, since they would not survive a "
                            "restart: free disk space (or fix the home) and restart the node")

    def cancel(self, job_id: str) -> bool:
        """Its submitter gives a running job up: every step not yet settled fails ("cancelled by its
        submitter"), the replicas answered in them so far are paid (the driver writes that batch before the
        job ends), and the driver, woken, tells the workers of replicas still out to stop them. False
        when the job had already ended."""
        st = self.jobs.get(job_id)
        if st is None or st.run.finished:
            return False
        for eff in self.core.abort(job_id, "cancelled by its submitter"):
            if isinstance(eff, Record):  # the replicas answered so far: paid before the job says it ended
                st.closing.append(eff)
            else:
                self._apply(eff)
        st.wake.set()
        log.info("job %s cancelled by its submitter", job_id)
        return True

    def blacklisted(self, node: str) -> bool:
        return self.core.blacklisted(node, self.now())

    # -- the job loop -------------------------------------------------------------------------------
    async def _drive(self, job_id: str, st: JobState) -> None:
        kept = False
        try:
            # The core gives a step up when it starts with fewer workers than its redundancy; workers this
            # node is not linked to yet (a model few peers hold) are found first, in the DHT.
            job = st.run.job
            await self.ports.find({step.needs: job.redundancy for step in job.steps})
            await self._loop(job_id, st)
        except asyncio.CancelledError:  # the node is stopping: its journal resumes the job at the next start
            kept = not self.journal.error
            raise
        finally:  # whatever else ends the driver (a bug) must not leave waiters hanging
            if kept:
                log.info("job %s stops with the node; it resumes from the journal at the next start", job_id)
            elif not st.run.finished:
                self._apply_all(self.core.abort(
                    job_id, "the job's driver stopped (node shutting down or internal error; see node.log)"))
                self.journal.commit()  # (its report, saved next, says so: the abort on disk first)
            self._end(job_id, st)

    async def _loop(self, job_id: str, st: JobState) -> None:
        while True:
            st.wake.clear()
            candidates = self.ports.candidates()
            if self._links_gone(st, candidates):
                await asyncio.sleep(TICK_S)
                continue
            for eff in self.core.tick(job_id, candidates, self.now()):
                if isinstance(eff, Record):
                    await self._record(eff, self._proofs(eff))  # payments written before the job says done
                else:
                    self._apply(eff)
            await self._durable()  # what readers see and the cancels below follow from the tick's inputs
            st.events.diff(st.run)
            self._cancel_unneeded(job_id, st)
            while st.closing:
                eff = st.closing.pop(0)
                await self._record(eff, self._proofs(eff))
            if st.run.finished:
                return
            try:
                await asyncio.wait_for(st.wake.wait(), TICK_S)
            except asyncio.TimeoutError:
                pass

    def _links_gone(self, st: JobState, candidates: dict[str, list[Candidate]]) -> bool:
        """Whether to hold the job's ticks, because the core would give a step up for want of workers whose
        links are only coming back: a step about to start (its earlier steps done or running) of a job that had
        its workers — the node woke from sleep, or its peers are reconnecting — or, right after a restart,
        any unfinished step. Held up to LINKS_BACK_S. A new job on a mesh too small is not held (it fails
        at once, saying so), nor a step already running (the core waits for workers lost to a passing
        fault itself, and may settle without them)."""
        run, job = st.run, st.run.job
        if st.recovering:
            watch = [sid for sid, r in run.steps.items() if r.status in ("waiting", "running")]
        else:  # (earlier steps still running count: one may settle and this one start in the same tick, and
            # a worker restarted during step a failed step b at once, 8 jobs of 8)
            watch = [sid for sid, r in run.steps.items() if r.status == "waiting"
                     and all(run.steps[d].status in ("done", "running") for d in job.step(sid).after)]
        if not any(len(candidates.get(job.step(sid).needs, ())) < job.redundancy for sid in watch):
            st.had_workers, st.recovering, st.short_since = True, False, None
            return False
        if not (st.had_workers or st.recovering):
            return False
        if st.short_since is None:
            st.short_since = self.now()
            log.info("job %s waits up to %g s for its workers' links to come back", run.job_id, LINKS_BACK_S)
        return self.now() - st.short_since < LINKS_BACK_S

    def _cancel_unneeded(self, job_id: str, st: JobState) -> None:
        """Replicas still out for steps that settled (or of a job that ended) are of no use: their workers
        are told to stop them (`cancel`, on a link that is open: a worker that lost it stopped them already),
        which saves them the work and frees their slots sooner."""
        unneeded: dict[str, list[str]] = {}
        for node, out in self.core.outstanding.items():
            for jid, sid in out:
                if (jid == job_id and (node, sid) not in st.cancelled
                        and (st.run.finished or st.run.steps[sid].status != "running")):
                    st.cancelled.add((node, sid))
                    unneeded.setdefault(node, []).append(sid)
        for node, steps in unneeded.items():
            for i in range(0, len(steps), 64):  # (a cancel names at most 64 steps)
                self.ports.tell(node, "cancel", Cancel(job_id, steps[i:i + 64]))

    def _end(self, job_id: str, st: JobState) -> None:
        """The job's report to disk, then its `done` event: a disk error must not leave waiters hanging."""
        st.ended = True
        self.ports.tally.job_ended(st.run, time.time() - st.created)
        st.partial.clear()  # streamed text is shown only while its replica runs
        self._save(job_id, st)
        self._write_core_log()
        st.events.diff(st.run)
        st.events.publish("done", self.report(job_id, st))
        st.done.set()
        log.info("job %s %s", job_id, st.run.status)
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        """Start the journal over (a fresh core) once it is long and nothing is under way: a restart then
        replays little. What the old core knew across jobs (answers kept for spot checks, jobs kept for
        rechecks) goes with it; finished jobs are read from their reports."""
        if self.journal.count < COMPACT_AT or not self.core.idle or self.journal.error or self._pending:
            return  # (effects waiting for a commit belong to this epoch's inputs)
        for job_id in [j for j, st in self.jobs.items() if st.run.finished]:
            del self.jobs[job_id]
        self.core = self._fresh_core()
        log.info("the job journal started over (epoch %d)", self.journal.epoch)

    # -- effects ------------------------------------------------------------------------------------
    def _apply_all(self, effects: list[Effect]) -> None:
        if self.journal.error:
            self._held(len(effects))
            return
        for eff in effects:
            self._apply(eff)

    def _held(self, effects: int) -> None:
        """The journal failed (a full disk): what the core decides now would not survive a restart, so none
        of it leaves the node, no ask, no payment. Left to run unjournaled, a job paid in the ledger
        receipts the outbox never kept (its workers were never paid), and a restart ran its steps again at
        other prices. The core's state is the journal's again at the next start, and jobs go on from there."""
        if effects and not self._holding:
            log.error("%s: this node's jobs are held (nothing asked, nothing paid) until it is restarted with "
                      "room on its disk; they go on from the journal then", self.journal.error)
        self._holding = self._holding or bool(effects)

    def _apply(self, eff: Effect) -> None:
        """One effect of the core: a wake-up or an alarm (they stay in this process) at once, anything else
        once the inputs that caused it are committed (`_flush`)."""
        if self.journal.error:
            self._held(1)
        elif isinstance(eff, (Wake, Alarm)):
            self._carry_out(eff)
        else:  # (a batch's proofs are taken now, while the job is still held: _proofs)
            self._pending.append((eff, self._proofs(eff) if isinstance(eff, Record) else ()))
            self._schedule_flush()

    def _schedule_flush(self, hops: int = FLUSH_HOPS) -> None:
        """A group commit, a few loop turns from now (at once when no loop runs: nothing to wait with)."""
        if self._flush_call is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush()
            return
        self._flush_call = loop.call_soon(self._hop, hops)

    def _hop(self, hops: int) -> None:
        """Let the callbacks queued meanwhile (a woken driver's tick) run first, then commit."""
        self._flush_call = None
        if hops > 1:
            self._schedule_flush(hops - 1)
        else:
            self._flush()

    def _flush(self) -> None:
        """Commit the journal (one transaction for every input since the last), then carry out what those
        inputs caused; a failed commit holds it all (`_held`), as a failed write always did."""
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None
        ok = self.journal.commit()
        effects, self._pending = self._pending, []
        flushed, self._flushed = self._flushed, None
        if not ok:
            self._held(len(effects))
        else:
            for eff, proofs in effects:
                self._carry_out(eff, proofs)
        if flushed is not None and not flushed.done():
            flushed.set_result(ok)

    async def _durable(self) -> bool:
        """Wait for the commit of every input journaled so far (the next group commit); False when the
        journal failed."""
        if self.journal.pending or self._pending or self._flush_call is not None:
            if self._flushed is None:
                self._flushed = asyncio.get_running_loop().create_future()
            flushed = self._flushed
            self._schedule_flush()
            await asyncio.shield(flushed)
        return not self.journal.error

    def _carry_out(self, eff: Effect, proofs: tuple[Outvoted, ...] = ()) -> None:
        """Carry out one effect without waiting (ledger batches run as tasks of their own)."""
        if isinstance(eff, Send):
            self.ports.spawn(self._send(eff))
        elif isinstance(eff, Alarm):
            self.ports.spawn(self._alarm(eff.at))
        elif isinstance(eff, Record):
            self.ports.spawn(self._record(eff, proofs))
        elif isinstance(eff, Wake) and eff.job in self.jobs:
            self.jobs[eff.job].wake.set()
        elif isinstance(eff, Started):
            self._start(eff)
        elif isinstance(eff, Judged):
            if eff.passed:
                log.info("spot check passed by %s", eff.node[:12])
            else:
                log.warning("spot check FAILED by %s (got %s): blacklisted", eff.node[:12], eff.got[:40])
        elif isinstance(eff, Rechecked):
            self._rechecked(eff)
        elif isinstance(eff, Forgotten):
            self.jobs.pop(eff.job, None)  # its report lives on in <home>/jobs (GET /jobs/{id} reads it there)
        # Timer: the loop re-checks deadlines every TICK_S; Finished: the loop sees it; Answer: on_result

    def _start(self, eff: Started, submitted: float | None = None) -> None:
        """A job to drive: new, or (`submitted` given) resumed from the journal after a restart."""
        sj = self.core.jobs[eff.job]
        st = self.jobs[eff.job] = JobState(sj, asyncio.Event(), asyncio.Event(), submitted or time.time())
        if submitted is not None:
            st.resumed = st.recovering = True
        job = sj.run.job
        st.events.publish("job", {"job_id": eff.job, "name": job.name, "steps": job.order(),
                                  "redundancy": job.redundancy, "quorum": job.quorum.spec})
        st.events.diff(sj.run)  # every step, waiting
        if eff.recheck_of:
            job_id, sid = eff.recheck_of
            log.info("rechecking %s/%s (vouched for by %s) as job %s", job_id, sid,
                     self.core.jobs[job_id].rechecks[sid]["cause"][:12], eff.job)
        self.ports.spawn(self._drive(eff.job, st))

    def _rechecked(self, eff: Rechecked) -> None:
        log.log(logging.WARNING if eff.verdict == "overturned" else logging.INFO, "recheck of %s/%s: %s",
                eff.job, eff.step, eff.verdict)
        st = self.jobs.get(eff.job)
        if st is not None:
            self._save(eff.job, st)

    async def _send(self, eff: Send) -> None:
        """One request, replica or spot check alike: `eff.check` is never read here, so a worker cannot
        tell them apart by anything this node sends."""
        self._asked[(eff.node, eff.job, eff.step)] = asked_digest(eff.kind, eff.params)
        while len(self._asked) > MAX_ASKED:
            self._asked.popitem(last=False)
        if not await self.ports.send(eff.node, "step", request(eff, self.now())):
            self._apply_all(self.core.on_unreachable(eff.job, eff.step, eff.node, self.now()))

    async def _alarm(self, at: float) -> None:
        """A spot check is due, or one's deadline passed: the core sends or drops it then."""
        await asyncio.sleep(max(0.0, at - self.now()))
        self._apply_all(self.core.on_alarm(self.now()))

    def _proofs(self, eff: Record) -> tuple[Outvoted, ...]:
        """Proofs of the wrong answers a batch books as outvoted (mesh.wire.proof), from the signed answers
        kept: taken now, while the job is still held, and passed on once the ledger has the batch."""
        st = self.jobs.get(eff.job)
        out: list[Outvoted] = []
        for e in eff.entries if st is not None else ():
            o = outvote_of(self.ports.node_id, e.kind, e.peer, e.job, e.step, e.why, 0)
            accused = st.signed.get((e.step, e.peer)) if o is not None else None
            if o is None or accused is None:
                continue
            proof = outvoted(accused, [a for n in o.majority if (a := st.signed.get((e.step, n))) is not None])
            if proof is not None:
                out.append(proof)
        return tuple(out)

    async def _record(self, eff: Record, proofs: tuple[Outvoted, ...] = ()) -> None:
        """One ledger batch (a receipt signed for each payment), then the receipts go out through the
        outbox. The receipts are held in the journal first: a batch written again after a crash reuses
        them (same bytes, and the ledger skips rows it has), and they are released only once the ledger
        has the batch, in the same journal transaction as the core hears so. Each of those transactions
        is committed before what follows it (the ledger write, the receipts' sending) starts."""
        key = f"{self.journal.epoch}:{eff.id}"
        held = self.outbox.held(key)
        ts = min((r["ts"] for r in held.values()), default=int(time.time() * 1000))
        entries: list[Entry] = []
        fresh: list[tuple[str, dict]] = []
        for e in eff.entries:
            detail = e.details()
            if e.kind == "paid":
                r = held.get((e.peer, e.job, e.step))
                if r is None:
                    r = make_receipt(self.ports.identity, e.job, e.step, e.peer, -e.amount, ts)
                    fresh.append((e.peer, r))
                detail["receipt"] = r
            entries.append(Entry(e.kind, e.job, e.step, e.peer, e.amount, detail))
        self.outbox.hold(key, fresh)
        if not await self._durable():  # its receipts are not kept: the batch waits for the restart (_held)
            self._held(1)
            return
        ok = await self.ports.record(entries, ts)
        with self.journal.batch(defer=True):
            self.core.on_recorded(eff.id, ok, self.ports.ledger_error())
            self.outbox.settle(key, ok)
        if not await self._durable():  # the release is not on disk: no receipt, no proof leaves
            self._held(1)
            return
        if not ok:
            if eff.outcomes:
                log.error("job %s: the ledger did not record its payments: %s", eff.job,
                          self.ports.ledger_error())
            return
        self.outbox_due.set()
        for proof in proofs:
            self.ports.prove(proof)
        self._maybe_compact()

    # -- the receipt outbox -------------------------------------------------------------------------
    async def deliver(self, interval: float = 1.0) -> None:
        """Send due receipts until the node stops: at once after a batch is written or a payee is back,
        else every `interval`; each unacknowledged one again after its backoff."""
        self.outbox.prune()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.outbox_due.wait(), interval)
            self.outbox_due.clear()
            by_peer: dict[str, list[dict]] = {}
            for peer, r in self.outbox.due():
                by_peer.setdefault(peer, []).append(r)
            await asyncio.gather(*(self._deliver(peer, rs) for peer, rs in by_peer.items()))

    async def _deliver(self, peer: str, receipts: list[dict]) -> None:
        for r in receipts:
            if not await self.ports.send(peer, "receipt", ReceiptMsg(r)):
                return  # unreachable: the rest wait for their backoff (or the peer's return)

    def on_receipt_ack(self, peer: Peer, msg: ReceiptAck) -> None:
        self.outbox.acked(peer.node, msg.job, msg.steps)

    def on_receipt_ask(self, peer: Peer, msg: ReceiptAsk) -> None:
        """A worker asks for receipts it holds none of: its own, if this node paid them (only on the link
        it asked on: an asker cannot make this node dial anyone), as often as Outbox.ASK_RULE allows."""
        if not self.outbox.take_ask(peer.node):
            self.ports.count("receipt-ask-rate")
            return
        for r in self.outbox.asked(peer.node, msg.job, msg.steps, elsewhere=lambda: self._paid(peer.node, msg.job)):
            self.ports.tell(peer.node, "receipt", ReceiptMsg(r))

    def _paid(self, worker: str, job: str) -> dict[str, dict]:
        """The receipts of `job` this node's ledger holds for `worker`, by step: a receipt-ask the outbox has no
        row for (its journal lost, torn, or restored without its WAL: red team G, 2026-12-07) is answered from
        the ledger, which holds every paid row's signed receipt; else that worker was never paid."""
        led = self._read_ledger(f"answer {worker[:12]}'s receipt-ask")
        if led is None:
            return {}
        try:
            return led.receipts("paid", job, worker)
        except sqlite3.Error as exc:
            log.error("cannot read the ledger to answer %s's receipt-ask: %s", worker[:12], exc)
            return {}
        finally:
            led.close()

    def on_peer_up(self, node: str) -> None:
        """A peer linked (again): receipts it is owed go now, whatever their backoff."""
        self.outbox.nudge(node)
        self.outbox_due.set()

    # -- events from the gateway --------------------------------------------------------------------
    def on_result(self, peer: Peer, res: StepResult, env: Envelope | None = None) -> None:
        if not self.core.expects(peer.node, res.job, res.step):  # never an input: not journaled, not kept
            st = self.jobs.get(res.job)
            if st is None or (peer.node, res.step) not in st.cancelled or res.ok:
                self.ports.count("unexpected-result")  # never asked, late, or asked twice
                log.warning("refused result from %s: unexpected-result", peer.node[:12])
            return
        if env is not None and not canonical_payload(env):  # could not be shown to others as signed: a
            self.ports.count("non-canonical")  # cheater's way out of every proof (mesh.wire.proof)
            log.warning("refused result from %s: non-canonical: its payload does not re-encode to the bytes "
                        "it signed", peer.node[:12])
            return
        sent = self._asked.pop((peer.node, res.job, res.step), None)
        if res.ok and sent is not None and res.asked != sent:  # naming another request, it could never be
            self.ports.count("wrong-asked")  # shown in a proof against it: another way out of every proof
            log.warning("refused result from %s: wrong-asked: it names another request than the one sent",
                        peer.node[:12])
            return
        for eff in self.core.on_result(peer.node, res.job, res.step, res.ok, res.digest, res.output, res.work.to_json(),
                                       res.error, self.now()):
            if not isinstance(eff, Answer):
                self._apply(eff)
            elif not eff.taken:
                st = self.jobs.get(eff.job)
                if st is not None and (eff.node, eff.step) in st.cancelled and not eff.ok:
                    continue  # a replica this node told to stop, saying it stopped
                self.ports.count("unexpected-result")  # never asked, late, or asked twice
                log.warning("refused result from %s: unexpected-result", peer.node[:12])
            elif eff.ok and env is not None and eff.job in self.jobs:
                self.jobs[eff.job].signed[(eff.step, eff.node)] = signed_answer(env)

    def on_progress(self, peer: Peer, msg: Progress) -> None:
        """Streamed text of a replica we are waiting for; anything else is dropped (and counted)."""
        st = self.jobs.get(msg.job)
        run = st.run.steps.get(msg.step) if st else None
        if st is None or run is None or run.tally is None or peer.node not in run.tally.pending or \
                run.kind not in MODEL_KINDS:  # (only generations stream: a python step's "progress" was kept too)
            self.ports.count("unexpected-progress")
            return
        # its tail only, and only while the job runs: whole texts of 1 MiB, kept until the job was forgotten,
        # grew a submitter by 147 MB over 240 steps of one worker's
        st.partial[(msg.step, peer.node)] = (msg.tokens, msg.text[-PARTIAL_TEXT:])
        st.events.publish("progress", {"step": msg.step, "node": peer.node, "tokens": msg.tokens,
                                       "text": msg.text[-PROGRESS_EVENT_TEXT:]})

    def needs(self) -> set[str]:
        """The capabilities (Step.needs) of the steps of jobs still running here: what discovery looks for."""
        return set(self.wanted())

    def wanted(self) -> dict[str, int]:
        """Per capability, the most replicas a step of a job still running here asks for (its job's
        redundancy): placement looks beyond the holders of a model only while they are fewer."""
        out: dict[str, int] = {}
        for st in self.jobs.values():
            if not st.job.run.finished:
                job = st.job.run.job
                for step in job.steps:
                    out[step.needs] = max(out.get(step.needs, 0), job.redundancy)
        return out

    def on_node_lost(self, node: str, reason: str) -> None:
        if self.core.holds(node):  # a peer that holds nothing of ours is no input (nor a journal row)
            self._apply_all(self.core.on_node_lost(node, reason, self.now()))

    def on_reported(self, node: str, reason: str = "an outvote proved a wrong answer") -> None:
        """A wrong answer of `node` to someone else, proven (or reported by a trusted issuer after `node`
        misbehaved here too): its pending answers stop counting and what it answered alone here runs
        again (Submission.on_reported)."""
        self._apply_all(self.core.on_reported(node, reason, self.now()))

    def on_suspected(self, node: str, reason: str) -> None:
        """A trusted issuer says `node` gave it a wrong answer: rerun a sample of what it answered alone
        here, nothing more (Submission.on_suspected)."""
        if self.core.ran_alone(node):  # else nothing to do: no input (nor a journal row)
            self._apply_all(self.core.on_suspected(node, reason, self.now()))

    # -- reports ------------------------------------------------------------------------------------
    def _save(self, job_id: str, st: JobState) -> None:
        path = self.ports.home / "jobs" / f"{job_id}.json"
        tmp = path.with_name(path.name + ".tmp")
        try:  # whole or not at all: a full disk must not leave half a report to be read back
            tmp.write_text(json.dumps(self.report(job_id, st)))
            os.replace(tmp, path)
        except OSError as exc:  # a full or read-only disk: the job is still reported from memory (and journal)
            log.error("job %s: cannot save its report: %s", job_id, exc)
            tmp.unlink(missing_ok=True)

    def _write_core_log(self) -> None:
        """--core-log: append the core's new log entries to CORE_LOG_FILE (JSON lines)."""
        core_log = self.core.log
        if core_log is None or self._logged == len(core_log):
            return
        try:
            with (self.ports.home / CORE_LOG_FILE).open("a") as f:
                f.writelines(json.dumps(e) + "\n" for e in core_log[self._logged:])
        except OSError as exc:
            log.error("cannot write %s: %s", CORE_LOG_FILE, exc)
            return
        self._logged = len(core_log)

    def report(self, job_id: str, st: JobState | None = None) -> dict:
        """A job's report; pass `st` when holding it across an await (it may leave memory meanwhile)."""
        st = st or self.jobs[job_id]
        sj, run = st.job, st.run
        rep = run.report()
        rep["status"] = st.status
        rep["credits_spent"] = round(sj.credits, 6)
        if sj.payment_error:
            rep["payment_error"] = sj.payment_error
        if st.resumed:
            rep["resumed"] = True  # its node restarted while it ran; it went on from the journal
        rep["submitter"] = self.ports.node_id
        rep["created"] = round(st.created, 3)
        for sid, step in rep["steps"].items():  # text streamed so far by replicas still generating
            pending = run.steps[sid].tally.pending if run.steps[sid].tally else []
            for replica in step["replicas"]:
                got = st.partial.get((sid, replica["node"]))
                if got and replica["node"] in pending:
                    replica["partial"] = {"tokens": got[0], "text": got[1][-PARTIAL_TEXT:]}
        if sj.rechecks:
            rep["rechecks"] = sj.rechecks
        if sj.recheck_of:
            rep["recheck_of"] = "/".join(sj.recheck_of)
        if run.log is not None:
            rep["core_log"] = {"seed": sj.seed, "job": run.job.to_json(), "log": run.log}
        return rep
