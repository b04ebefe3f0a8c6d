"""The worker side of a node: runs the steps peers ask for (within the slots mesh.core.admission shares
out by standing and network prefix, a stranger's with capped time and memory), stops them when their
requester cancels them or disconnects, answers with a signed result, and records the receipts it is paid
with — what it is owed is kept on disk (mesh.node.owed), each receipt acknowledged, missing ones asked for. `--fault` modes live here. The worker sees its node only through the WorkerPort it is handed (Node
builds it); it never holds the Node."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.messages import RunStep, StepDone, StepProgress
from ledger.receipts import BadReceipt, Receipt, verified
from ledger.store import Entry
from mesh.core.admission import MAX_TIMEOUT_S, Account, Shares, Slots, Standing, Terms, credit_refusal, terms
from mesh.core.dag import MODEL_KINDS, check_request
from mesh.core.pricing import MIN_CHARGE, TOLERANCE, ceiling
from mesh.errors import JobError, LimitHit, NoAnswer, StepFailed
from mesh.node.flow import Limits
from mesh.node.journal import Journal
from mesh.node.owed import Owed
from mesh.node.peers import Peer
from mesh.steps.extract import selectors_error
from mesh.steps.models import default_model_sha
from mesh.steps.sandbox import MEMORY_LIMIT
from mesh.wire.canonical import canonical, digest
from mesh.wire.messages import (
    MAX_MEASURE,
    MAX_WORK_TEXT,
    Progress,
    RateCard,
    ReceiptAck,
    ReceiptAsk,
    ReceiptMsg,
    StepRequest,
    StepResult,
    Work,
    asked_digest,
)
from mesh.wire.records import DEFAULT_RATES

log = logging.getLogger("mesh.node.worker")
PROGRESS_TEXT = 64 * 1024  # characters of streamed text per progress message (the newest)
ACTOR_GRACE_S = 15.0  # how much longer than the step's own timeout the node waits for its actor
RIGHT_AFTER_S = 0.25  # fault=check-aware: a request this soon after the peer's previous one "is a check"
OLD_CHECK_CODE = re.compile(r"a, b, c = \d+, \d+, \d+\noutput = ")  # the one template checks used to have
FLAG_KEEP_S = 60.0  # a cancel flag no actor answered for (past its timeout) is removed this much later
FAILED_KEEP_S = 86400.0  # a failed step's time counts against its requester's credit line this long
FAILED_KEPT = 1000  # failed steps remembered per requester (the oldest forgotten first)
FAILED_PAYERS = 4096  # requesters remembered (the least recently failed forgotten first)

OnProgress = Callable[[int, str], object]  # (tokens so far, text so far) of an llm step


NOT_ANSWERED = "receipt for a step this node did not answer for that payer"


@dataclass(frozen=True)
class Ran:
    """A step that ran here: its JSON output, what produced it, and the work measured here."""

    output: object
    identity: str  # python:bwrap, gguf:<sha256>, scrape:<how>
    work: dict[str, Any]


@dataclass(frozen=True)
class StepRunner:
    """The one door to running a step on this node: llm, score and python on its own actors (through the
    bridge), scrapes in the loop (the browser is its own process, the egress proxy guards it). Shared
    by the worker (peers' steps) and the API (the planner's own model call)."""

    ask: Callable[[object, float, Callable[[StepProgress], None] | None], Awaitable[object]]  # ActorBridge.ask
    scrape: Callable[[dict[str, Any], float], Awaitable[tuple[object, dict[str, Any]]]]  # Scraper.scrape
    sandboxed: bool  # python steps run under bubblewrap
    cancel_dir: Path | None = None  # where a cancel flag tells an actor to stop a step (None: never)

    async def run(self, kind: str, params: dict[str, Any], timeout: float,
                  progress: OnProgress | None = None, memory: int | None = None) -> Ran:
        """Run one step; StepFailed says why it did not. Cancelled (its requester gone), it is stopped
        where it runs: the actor sees its flag (python: the sandbox is killed; llm: generation ends)."""
        if kind == "scrape":  # in this loop: cancelling this task closes its browser context
            output, work = await self.scrape(params, timeout)
            return Ran(output, "scrape:" + str(work["via"]).split(" ")[0], work)
        relay = None if progress is None else (lambda m: progress(m.tokens, m.text))
        rid = uuid.uuid4().hex
        flag = None if self.cancel_dir is None else self.cancel_dir / rid
        asking = asyncio.ensure_future(self.ask(RunStep(rid, kind, params, timeout, self.sandboxed, memory=memory,
                                                        cancel_file=str(flag or "")), timeout + ACTOR_GRACE_S, relay))
        try:
            done = await asyncio.shield(asking)
        except asyncio.CancelledError:
            _raise_flag(flag, asking)
            raise
        except NoAnswer as exc:
            _raise_flag(flag, asking)
            raise StepFailed(str(exc)) from None
        if not isinstance(done, StepDone):
            raise StepFailed(f"internal error: unexpected {type(done).__name__}")
        if not done.ok:
            raise (LimitHit if done.limit else StepFailed)(done.error or "the step failed without saying why")
        return Ran(done.output, done.identity, done.work)

    async def output(self, kind: str, params: dict[str, Any], timeout: float) -> object:
        return (await self.run(kind, params, timeout)).output


def _raise_flag(flag: Path | None, asking: asyncio.Future) -> None:
    """Tell the actor running a step to stop it; the flag goes once the actor answered (or, when it never
    will, FLAG_KEEP_S later). The ask's own outcome is of no interest any more."""
    if flag is None:
        return
    try:
        flag.touch()
    except OSError as exc:
        log.error("cannot stop a step (cancel flag %s: %s)", flag, exc)
        return

    def gone(fut: asyncio.Future) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved, so asyncio does not log it
        flag.unlink(missing_ok=True)

    if asking.done():
        asyncio.get_running_loop().call_later(FLAG_KEEP_S, flag.unlink, True)
    else:
        asking.add_done_callback(gone)


def _anyone(peer: Peer) -> Standing:
    """The standing of a requester when the node gives none: a stranger."""
    return Standing(peer.node, "")


@dataclass(frozen=True)
class WorkerPort:
    """All the worker may see or do of its node."""

    node_id: str
    fault: str  # --fault mode ('' for an honest node)
    collude: str  # with fault=wrong: the group whose wrong answers agree
    frame_cap: int  # bytes: a signed result must fit in one frame
    limits: Limits  # steps in flight, per peer and in total
    kinds: Sequence[str]  # step kinds this node runs
    models: Sequence[str]  # SHA-256 of each model it serves
    model_error: str  # why it has no model ('' when it has one)
    steps: StepRunner
    send: Callable[[Peer, str, object], bool]  # seal and write on an open connection; False when none
    send_dialling: Callable[[Peer, str, object], Awaitable[bool]]  # the same, dialling the peer if needed
    record: Callable[[list[Entry]], Awaitable[bool]]  # append to the ledger; False when it failed
    ledger_error: Callable[[], str]  # why the ledger cannot be written now ('' when it can)
    count: Callable[[str], None]  # count a refused message under its reason (status: rejected)
    rates: RateCard = DEFAULT_RATES  # what it charges (its record's card): a receipt above it is refused
    standing: Callable[[Peer], Standing] = _anyone  # a requester's reputation, reciprocity and prefix here
    account: Callable[[str], Account] = lambda node: Account()  # credits between this node and a peer
    require_credit: float | None = None  # --require-credit: refuse submitters beyond this line (None: never)
    # --fetch-models: fetch a model a step needs from the peers serving it ('' once served, else why not)
    fetch_model: Callable[[str], Awaitable[str]] | None = None
    sandbox_problem: str = ""  # why python steps cannot be sandboxed here ('' when they can)
    paused: Callable[[], str] = lambda: ""  # why the owner lets no new step start ('' when it does: mesh pause)
    step_memory: Callable[[], int] = lambda: 0  # --max-memory: bytes all python steps may use together (0: no cap)
    # a step a peer asked of this node ended: (requester, job, step), kind, ok | failed | refused, its wall
    # seconds (None: it never ran), why (the error or refusal sent back); counted for /metrics and the dashboard
    worked: Callable[[tuple[str, str, str], str, str, float | None, str], None] = lambda *ended: None


def within(limits: Terms, cap: int) -> Terms:
    """A step's terms under the owner's --max-memory (`cap` bytes for all steps; 0: none): no step may ask
    for more than all of them may use, so it fails with a MemoryError of its own, not the kernel's kill."""
    if not cap or (limits.memory or MEMORY_LIMIT) <= cap:
        return limits
    return dataclasses.replace(limits, memory=cap, cut=limits.cut or f"this worker's owner lets steps use "
                               f"{cap >> 20} MiB in all")


def failed(req: StepRequest, error: str) -> StepResult:
    return StepResult(req.job, req.step, False, None, "", "", Work(), error[:MAX_WORK_TEXT])


def answer(req: StepRequest, output: Any, identity: str, work: Work) -> StepResult:
    """An answer to `req`, naming what it answered (`asked`: a proof can only hold answers to one request)."""
    return StepResult(req.job, req.step, True, output, digest(output), identity, work, asked=asked_digest(req.kind, req.params))


def check_cue(req: StepRequest, since_previous: float | None) -> str:
    """fault=check-aware: what makes a request look like a spot check to an attacker ('' when nothing
    does): every cue a worker sees — the job id, the step id, the code, and the timing (right after
    another request from the same submitter, as checks used to ride with a replica)."""
    if req.job.startswith("spot-"):
        return "job id prefix"
    if req.step == "check":
        return "step id"
    if req.kind == "python" and OLD_CHECK_CODE.match(str(req.params.get("code", ""))):
        return "code template"
    if since_previous is not None and since_previous < RIGHT_AFTER_S:
        return "right after a replica"
    return ""


def corrupt(output: object, salt: str) -> object:
    """fault=wrong: a plausible but wrong answer, validly signed. Nodes of one `--collude` group share the
    salt, so they return the same wrong answer; a lone wrong node's answer is its own."""
    return f"{output} [tampered:{salt}]" if isinstance(output, str) else {"tampered": output, "by": salt}


def stored(result: StepResult) -> dict[str, Any]:
    return dataclasses.asdict(result)


def restored(data: dict[str, Any]) -> StepResult:
    """An answer this node kept (mesh.node.owed), as it was sent."""
    return StepResult(**{**data, "work": Work(**data["work"])})


class Worker:
    def __init__(self, port: WorkerPort, owed: Owed | None = None):
        """`owed`: what it is owed, kept in the node's journal (in memory when not given: tests)."""
        self.port = port
        self.slots = Slots()
        self.set_limits(port.limits)
        self.running: dict[tuple[str, str, str], asyncio.Task] = {}  # (requester, job, step) → its run here
        self.stopped: dict[tuple[str, str, str], str] = {}  # runs cancelled here → why
        self.owed = owed or Owed(Journal(None))  # (payer, job, step) answered ok → most it may be paid, the answer
        self.arrived: dict[str, float] = {}  # fault=check-aware: peer → when its last request came
        self.turn = 0  # fault=busy: requests seen, every other one refused
        # requester → (when, credits) of its steps that failed here, for --require-credit (in memory, a day)
        self.failed_work: OrderedDict[str, deque[tuple[float, float]]] = OrderedDict()

    def set_limits(self, limits: Limits) -> None:
        """The owner's --max-steps (at start, or changed by SIGHUP): steps running now keep their slots."""
        self.slots.shares = Shares.of(limits.max_running, limits.max_inflight_per_peer)

    async def work(self, peer: Peer, req: StepRequest) -> None:
        port, fault = self.port, self.port.fault
        if fault == "silent":
            return
        cue = ""
        if fault == "check-aware":
            now = time.monotonic()
            previous = self.arrived.get(peer.node)
            self.arrived[peer.node] = now
            cue = check_cue(req, None if previous is None else now - previous)
        self.turn += 1
        who, key = port.standing(peer), (peer.node, req.job, req.step)
        if key not in self.running:
            answered, earlier = self.owed.earlier(key)
            if answered:  # asked again (its requester restarted, or a duplicate): never a second, different run
                log.info("%s/%s asked again by %s: %s", req.job, req.step, peer.node[:12],
                         "the same answer sent" if earlier else "refused, its answer was not kept")
                again = restored(earlier) if earlier else failed(req, "answered before; that answer was too large "
                                                                      "to keep, and a step is not run twice")
                await port.send_dialling(peer, "result", again)
                return
        busy = "busy: too many steps in flight" if fault == "busy" and self.turn % 2 == 0 else ""  # an honest node at its limits
        owes = self.over_credit(peer.node)
        paused = port.paused()
        why = busy or (paused and f"busy: {paused}") or owes or self.slots.take(key, who)
        if why:
            port.count("credit" if owes else "busy")
            result = failed(req, why)
            port.worked(key, req.kind, "refused", None, why)
        else:
            began = time.monotonic()
            try:
                result = await self._run(peer, req, key, within(terms(who, req.timeout), port.step_memory()))
            finally:
                self.slots.release(key)
            took = time.monotonic() - began
            port.worked(key, req.kind, "ok" if result.ok else "failed", took, result.error)
            if not result.ok:
                self._failed(peer.node, took)
        if key in self.stopped:  # cancelled: its submitter may hear why, but nobody is dialled for it
            port.send(peer, "result", failed(req, self.stopped.pop(key)))
            return
        if fault == "crash":
            log.error("fault=crash: dying mid-step")
            os.killpg(os.getpgrp(), signal.SIGKILL)
        if fault == "slow":
            await asyncio.sleep(min(req.timeout, 30.0))
        if fault == "check-aware" and result.ok:
            log.info("fault=check-aware: %s/%s %s", req.job, req.step,
                     f"looks like a check ({cue}): answered right" if cue else "looks real: answered wrong")
        if (fault == "wrong" or (fault == "check-aware" and not cue)) and result.ok:
            out = corrupt(result.output, port.collude or port.node_id[:8])
            result = answer(req, out, result.identity, result.work)
        if fault == "overclaim" and result.ok:  # the whole time limit, every token it may ask for
            most = float(req.params.get("max_tokens", 64)) if req.kind in ("llm", "ask-model") else 0.0
            work = dataclasses.replace(result.work, cpu_s=min(req.timeout, MAX_MEASURE),
                                       tokens=int(min(max(most, result.work.tokens), MAX_MEASURE)))
            result = answer(req, result.output, result.identity, work)
        if result.ok:  # only a step answered for this payer can be paid for, and at most this (on_receipt)
            self.owed.answered(key, ceiling(req.kind, result.work.to_json(), port.rates), stored(result))
        await port.send_dialling(peer, "result", result)

    async def _run(self, peer: Peer, req: StepRequest, key: tuple[str, str, str], limits: Terms) -> StepResult:
        """Run the step as a task of its own, so cancel() and drop() can stop it."""
        task = asyncio.ensure_future(self.execute(req, lambda tokens, text: self.port.send(
            peer, "progress", Progress(req.job, req.step, tokens, text[-PROGRESS_TEXT:])), limits))
        self.running[key] = task
        try:
            return await task
        except asyncio.CancelledError:
            if key not in self.stopped:  # this node is stopping: not a cancel from the requester
                task.cancel()
                raise
            return failed(req, self.stopped[key])
        finally:
            self.running.pop(key, None)

    def cancel(self, node: str, job: str, steps: Sequence[str], why: str) -> int:
        """Stop the steps of `job` (all of them when `steps` is empty) running here for `node`: only what
        that requester itself asked for. How many were stopped."""
        keys = [k for k, t in self.running.items()
                if k[0] == node and k[1] == job and (not steps or k[2] in steps) and not t.done()]
        for key in keys:
            self.stopped[key] = why
            self.running[key].cancel()
        return len(keys)

    def drop(self, node: str, why: str) -> int:
        """Stop every step running here for `node` (it disconnected: nobody is waiting for them)."""
        keys = [k for k, t in self.running.items() if k[0] == node and not t.done()]
        for key in keys:
            self.stopped[key] = why
            self.running[key].cancel()
        if keys:
            log.info("stopped %d steps of %s: %s", len(keys), node[:12], why)
        return len(keys)

    def _failed(self, node: str, seconds: float) -> None:
        """A step of `node`'s ran `seconds` here and failed (raised, ran out of time, was stopped): it is
        never paid, so its time, at this node's rate for a CPU-second, counts against `node`'s credit line.
        (12 steps that spun 3 CPU-seconds each and then raised ran past a line of 1, and a step that
        computed its answer handed it back in the error text.)"""
        if self.port.require_credit is None:
            return
        spent = self.failed_work.pop(node, None) or deque(maxlen=FAILED_KEPT)
        spent.append((time.monotonic(), seconds * self.port.rates.cpu_s))
        self.failed_work[node] = spent  # (the most recently failed last)
        while len(self.failed_work) > FAILED_PAYERS:
            self.failed_work.popitem(last=False)

    def over_credit(self, node: str) -> str:
        """--require-credit: why this submitter is beyond the line this node holds it to ('' when not)."""
        line = self.port.require_credit
        if line is None:
            return ""
        unpaid = self.owed.debt(node)
        since = time.monotonic() - FAILED_KEEP_S
        failed = sum(c for when, c in self.failed_work.get(node, ()) if when >= since)
        return credit_refusal(self.port.account(node), unpaid, line, round(failed, 6))

    def use(self) -> dict[str, Any]:
        """The worker's slots in use, by kind of requester (mesh status)."""
        return {**self.slots.use(), "require_credit": self.port.require_credit}

    def refusal(self, req: StepRequest) -> str:
        """Why this node will not run `req` ('' when it will)."""
        port = self.port
        ledger_error = port.ledger_error()
        if ledger_error:
            return f"this node cannot record earnings ({ledger_error}); not taking paid work"
        kind = "llm" if req.kind in MODEL_KINDS or req.kind == "score" else req.kind  # what it needs here
        if kind not in port.kinds and not (kind == "llm" and port.fetch_model):
            why = {"llm": port.model_error or "no model",
                   "python": port.sandbox_problem or "no sandbox (bwrap) on this node"}.get(
                kind, "turned off by its operator")
            return f"this node does not run {req.kind} steps: {why}"
        try:
            check_request(req.kind, req.params)
        except JobError as exc:
            return f"refused: {exc}"
        bad = selectors_error(req.params) if req.kind == "scrape" else ""
        if bad:
            return f"refused: selectors: {bad}"
        if kind == "llm" and (sha := self._model(req)) not in port.models and not port.fetch_model:
            return f"this node does not hold model {sha[:16]}"
        return ""

    @staticmethod
    def _model(req: StepRequest) -> str:
        """The SHA-256 of the model a step runs (check_request has shown it is one, or 'default')."""
        model = str(req.params.get("model", "default"))
        return default_model_sha() if model == "default" else model

    async def execute(self, req: StepRequest, progress: OnProgress | None = None,
                      limits: Terms | None = None) -> StepResult:
        """Run one step here within `limits` (default: the longest a step may ask for and the sandbox's
        own memory); `progress(tokens, text)` hears an llm step's text as it is generated."""
        why = self.refusal(req)
        if why:
            return failed(req, why)
        limits = limits or Terms(max(1.0, min(req.timeout, MAX_TIMEOUT_S)), None)
        kind = "llm" if req.kind in MODEL_KINDS else req.kind  # score and scrape run as themselves
        if kind in ("llm", "score") and self.port.fetch_model and (sha := self._model(req)) not in self.port.models:
            why = await self.port.fetch_model(sha)  # (the fetch is not work charged for)
            if why:
                return failed(req, why)
        try:
            ran = await self.port.steps.run(kind, req.params, limits.timeout, None if kind == "scrape" else progress,
                                            limits.memory)
        except StepFailed as exc:  # (a cut limit is named only when a limit stopped the step)
            return failed(req, f"{exc} ({limits.cut})" if limits.cut and isinstance(exc, LimitHit) else str(exc))
        try:
            size = len(canonical(ran.output))
        except ValueError as exc:  # a lone surrogate: JSON text, but no UTF-8 (unanswered, the job waited its timeout)
            return failed(req, f"your output cannot be sent as JSON: {type(exc).__name__}: {exc}")
        cap = self.port.frame_cap // 2  # the signed result must fit in one frame, with room to spare
        if size > cap:
            return failed(req, f"output of {size} bytes is over this mesh's limit of {cap}")
        return answer(req, ran.output, ran.identity, Work.measured(ran.work))

    async def on_receipt(self, peer: Peer, msg: ReceiptMsg) -> None:
        """Book a receipt as earned: the JSON from the wire becomes a Receipt here, or is refused."""
        try:
            receipt = verified(msg.receipt)
        except BadReceipt as exc:
            return self._refuse(peer, str(exc))
        key = (peer.node, receipt.job, receipt.step)
        if receipt.worker == self.port.node_id and receipt.payer_id == peer.node and self.owed.was_paid(key):
            self._ack(peer, receipt)  # booked before (its payer resent it): acknowledged again, booked once
            return
        why = self._unowed(peer, receipt)
        if why == NOT_ANSWERED:
            return await self._on_forgotten(peer, receipt, key, why)
        if why:
            return self._refuse(peer, why)
        most = self.owed.unpaid[key]
        if not MIN_CHARGE - TOLERANCE <= receipt.amount <= most + TOLERANCE:
            return self._refuse(peer, f"receipt for {receipt.amount:g} credits is outside this node's rate card "
                                      f"for that step (from {MIN_CHARGE:g} to {most:g}: its own measured work at "
                                      "its own rates)")
        # the ledger keeps one (earned, job, step, payer): a copy that raced this one is skipped there
        if await self.port.record([Entry("earned", receipt.job, receipt.step, peer.node, float(receipt.amount),
                                         {"receipt": receipt, "measured": most})]):  # (for the credit line)
            self.owed.paid(key)
            self._ack(peer, receipt)

    async def _on_forgotten(self, peer: Peer, receipt: Receipt, key: tuple[str, str, str], why: str) -> None:
        """A receipt for a step this node does not remember: booked when a trim forgot steps of that payer's
        whose debt still covers it (Owed.pay_forgotten), refused otherwise."""
        amount = float(receipt.amount)
        if not MIN_CHARGE - TOLERANCE <= amount or not self.owed.pay_forgotten(key, amount):
            return self._refuse(peer, why)
        if await self.port.record([Entry("earned", receipt.job, receipt.step, peer.node, amount,
                                         {"receipt": receipt, "forgotten": True})]):
            self._ack(peer, receipt)
        else:
            self.owed.unpay_forgotten(key, amount)

    def _ack(self, peer: Peer, receipt: Receipt) -> None:
        self.port.send(peer, "receipt-ack", ReceiptAck(receipt.job, [receipt.step]))

    def on_peer_up(self, peer: Peer) -> int:
        """A payer is linked again: ask it for the receipts of steps answered long ago and still unpaid
        (it resends those it paid). How many asks went out."""
        sent = 0
        for job, steps in list(self.owed.to_ask(peer.node).items())[:16]:
            for i in range(0, len(steps), 64):
                sent += self.port.send(peer, "receipt-ask", ReceiptAsk(job, steps[i:i + 64]))
        return sent

    def _refuse(self, peer: Peer, why: str) -> None:
        self.port.count("bad-receipt")
        log.warning("receipt from %s refused: bad-receipt: %s", peer.node[:12], why)

    def _unowed(self, peer: Peer, r: Receipt) -> str:
        """Why `r` does not pay for a step this node answered for `peer` ('' when it does)."""
        if r.worker != self.port.node_id or r.payer_id != peer.node:
            return "receipt names another worker or payer"
        if (peer.node, r.job, r.step) not in self.owed.unpaid:
            return NOT_ANSWERED
        return ""
