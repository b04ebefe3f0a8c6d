"""The worker side of a node: runs the steps peers ask for (within per-peer and total limits), answers
with a signed result, and records the receipts it is paid with. `--fault` modes live here. The worker
sees its node only through the WorkerPort it is handed (Node builds it); it never holds the Node."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from actors.messages import RunStep, StepDone, StepProgress
from ledger.receipts import BadReceipt, Receipt, verified
from ledger.store import Entry
from mesh.core.dag import MODEL_KINDS, check_request
from mesh.core.pricing import MIN_CHARGE, TOLERANCE, ceiling
from mesh.errors import JobError, NoAnswer, StepFailed
from mesh.node.flow import Limits
from mesh.node.peers import Peer
from mesh.steps.models import default_model_sha
from mesh.wire.canonical import canonical, digest
from mesh.wire.messages import MAX_WORK_TEXT, Progress, RateCard, ReceiptMsg, StepRequest, StepResult, Work
from mesh.wire.records import DEFAULT_RATES

log = logging.getLogger("mesh.node.worker")
PROGRESS_TEXT = 64 * 1024  # characters of streamed text per progress message (the newest)
MAX_OWED = 10_000  # steps answered but not yet paid that this node remembers (oldest forgotten first)
ACTOR_GRACE_S = 15.0  # how much longer than the step's own timeout the node waits for its actor
RIGHT_AFTER_S = 0.25  # fault=check-aware: a request this soon after the peer's previous one "is a check"
OLD_CHECK_CODE = re.compile(r"a, b, c = \d+, \d+, \d+\noutput = ")  # the one template checks used to have

OnProgress = Callable[[int, str], object]  # (tokens so far, text so far) of an llm step


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

    async def run(self, kind: str, params: dict[str, Any], timeout: float,
                  progress: OnProgress | None = None) -> Ran:
        """Run one step; StepFailed says why it did not."""
        if kind == "scrape":
            output, work = await self.scrape(params, timeout)
            return Ran(output, "scrape:" + str(work["via"]).split(" ")[0], work)
        relay = None if progress is None else (lambda m: progress(m.tokens, m.text))
        try:
            done = await self.ask(RunStep(uuid.uuid4().hex, kind, params, timeout, self.sandboxed),
                                  timeout + ACTOR_GRACE_S, relay)
        except NoAnswer as exc:
            raise StepFailed(str(exc)) from None
        if not isinstance(done, StepDone):
            raise StepFailed(f"internal error: unexpected {type(done).__name__}")
        if not done.ok:
            raise StepFailed(done.error or "the step failed without saying why")
        return Ran(done.output, done.identity, done.work)

    async def output(self, kind: str, params: dict[str, Any], timeout: float) -> object:
        return (await self.run(kind, params, timeout)).output


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


def failed(req: StepRequest, error: str) -> StepResult:
    return StepResult(req.job, req.step, False, None, "", "", Work(), error[:MAX_WORK_TEXT])


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


class Worker:
    def __init__(self, port: WorkerPort):
        self.port = port
        self.running = 0
        self.owed: dict[tuple[str, str, str], float] = {}  # (payer, job, step) answered ok → most it may be paid
        self.arrived: dict[str, float] = {}  # fault=check-aware: peer → when its last request came
        self.turn = 0  # fault=busy: requests seen, every other one refused

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
        if (peer.inflight >= port.limits.max_inflight_per_peer or self.running >= port.limits.max_running
                or (fault == "busy" and self.turn % 2 == 0)):  # busy: an honest node at its limits, every other time
            port.count("busy")
            result = failed(req, "busy: too many steps in flight")
        else:
            peer.inflight += 1
            self.running += 1
            try:
                result = await self.execute(req, lambda tokens, text: port.send(
                    peer, "progress", Progress(req.job, req.step, tokens, text[-PROGRESS_TEXT:])))
            finally:
                peer.inflight -= 1
                self.running -= 1
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
            result = StepResult(req.job, req.step, True, out, digest(out), result.identity, result.work)
        if result.ok:  # only a step answered for this payer can be paid for, and at most this (on_receipt)
            self.owed[(peer.node, req.job, req.step)] = ceiling(req.kind, result.work.to_json(), port.rates)
            while len(self.owed) > MAX_OWED:
                del self.owed[next(iter(self.owed))]
        await port.send_dialling(peer, "result", result)

    def refusal(self, req: StepRequest) -> str:
        """Why this node will not run `req` ('' when it will)."""
        port = self.port
        ledger_error = port.ledger_error()
        if ledger_error:
            return f"this node cannot record earnings ({ledger_error}); not taking paid work"
        kind = "llm" if req.kind in MODEL_KINDS or req.kind == "score" else req.kind  # what it needs here
        if kind not in port.kinds:
            why = {"llm": port.model_error or "no model", "python": "no sandbox (bwrap) on this node"}.get(
                kind, "turned off by its operator")
            return f"this node does not run {req.kind} steps: {why}"
        try:
            check_request(req.kind, req.params)
        except JobError as exc:
            return f"refused: {exc}"
        model = req.params.get("model", "default")
        if kind == "llm" and (default_model_sha() if model == "default" else model) not in port.models:
            return f"this node does not hold model {str(model)[:16]}"
        return ""

    async def execute(self, req: StepRequest, progress: OnProgress | None = None) -> StepResult:
        """Run one step here; `progress(tokens, text)` hears an llm step's text as it is generated."""
        why = self.refusal(req)
        if why:
            return failed(req, why)
        kind = "llm" if req.kind in MODEL_KINDS else req.kind  # score and scrape run as themselves
        timeout = max(1.0, min(req.timeout, 3600.0))
        try:
            ran = await self.port.steps.run(kind, req.params, timeout, None if kind == "scrape" else progress)
        except StepFailed as exc:
            return failed(req, str(exc))
        size = len(canonical(ran.output))
        cap = self.port.frame_cap // 2  # the signed result must fit in one frame, with room to spare
        if size > cap:
            return failed(req, f"output of {size} bytes is over this mesh's limit of {cap}")
        return StepResult(req.job, req.step, True, ran.output, digest(ran.output), ran.identity, Work.measured(ran.work))

    async def on_receipt(self, peer: Peer, msg: ReceiptMsg) -> None:
        """Book a receipt as earned: the JSON from the wire becomes a Receipt here, or is refused."""
        try:
            receipt = verified(msg.receipt)
        except BadReceipt as exc:
            return self._refuse(peer, str(exc))
        why = self._unowed(peer, receipt)
        if why:
            return self._refuse(peer, why)
        most = self.owed[(peer.node, receipt.job, receipt.step)]
        if not MIN_CHARGE - TOLERANCE <= receipt.amount <= most + TOLERANCE:
            return self._refuse(peer, f"receipt for {receipt.amount:g} credits is outside this node's rate card "
                                      f"for that step (from {MIN_CHARGE:g} to {most:g}: its own measured work at "
                                      "its own rates)")
        del self.owed[(peer.node, receipt.job, receipt.step)]  # paid once; a second copy is refused
        await self.port.record([Entry("earned", receipt.job, receipt.step, peer.node, float(receipt.amount),
                                      {"receipt": receipt})])

    def _refuse(self, peer: Peer, why: str) -> None:
        self.port.count("bad-receipt")
        log.warning("receipt from %s refused: bad-receipt: %s", peer.node[:12], why)

    def _unowed(self, peer: Peer, r: Receipt) -> str:
        """Why `r` does not pay for a step this node answered for `peer` ('' when it does)."""
        if r.worker != self.port.node_id or r.payer_id != peer.node:
            return "receipt names another worker or payer"
        if (peer.node, r.job, r.step) not in self.owed:
            return "receipt for a step this node did not answer for that payer"
        return ""
