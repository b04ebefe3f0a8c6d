"""The worker side of a node: runs the steps peers ask for (within per-peer and total limits), answers
with a signed result, and records the receipts it is paid with. `--fault` modes live here."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from actors.messages import RunStep, StepDone
from ledger.receipts import check_receipt, payer_id
from ledger.store import Entry
from mesh.core.dag import MODEL_KINDS, check_request
from mesh.errors import JobError, StepFailed
from mesh.node.bridge import NoAnswer
from mesh.node.peers import Peer
from mesh.steps.models import default_model_sha
from mesh.wire.canonical import canonical, digest
from mesh.wire.messages import Progress, ReceiptMsg, StepRequest, StepResult

if TYPE_CHECKING:
    from mesh.node.lifecycle import Node

log = logging.getLogger("mesh.node.worker")
PROGRESS_TEXT = 64 * 1024  # characters of streamed text per progress message (the newest)
MAX_OWED = 10_000  # steps answered but not yet paid that this node remembers (oldest forgotten first)


def failed(req: StepRequest, error: str) -> StepResult:
    return StepResult(req.job, req.step, False, None, "", "", {}, error)


def corrupt(output: object, salt: str) -> object:
    """fault=wrong: a plausible but wrong answer, validly signed. Nodes of one `--collude` group share the
    salt, so they return the same wrong answer; a lone wrong node's answer is its own."""
    return f"{output} [tampered:{salt}]" if isinstance(output, str) else {"tampered": output, "by": salt}


class Worker:
    def __init__(self, node: "Node"):
        self.node = node
        self.running = 0
        self.owed: dict[tuple[str, str, str], None] = {}  # (payer node, job, step) this node answered ok

    async def work(self, peer: Peer, req: StepRequest) -> None:
        node, fault = self.node, self.node.opts.fault
        if fault == "silent":
            return
        limits = node.gateway.limits
        if peer.inflight >= limits.max_inflight_per_peer or self.running >= limits.max_running:
            node.receiver.count("busy")
            result = failed(req, "busy: too many steps in flight")
        else:
            peer.inflight += 1
            self.running += 1
            try:
                result = await self.execute(req, lambda tokens, text: node.send(
                    peer, "progress", Progress(req.job, req.step, tokens, text[-PROGRESS_TEXT:])))
            finally:
                peer.inflight -= 1
                self.running -= 1
        if fault == "crash":
            log.error("fault=crash: dying mid-step")
            os.killpg(os.getpgrp(), signal.SIGKILL)
        if fault == "slow":
            await asyncio.sleep(min(req.timeout, 30.0))
        if fault == "wrong" and result.ok:
            out = corrupt(result.output, node.opts.collude or node.id[:8])
            result = StepResult(req.job, req.step, True, out, digest(out), result.identity, result.work)
        if result.ok:  # only a step answered for this payer can be paid for (see on_receipt)
            self.owed[(peer.node, req.job, req.step)] = None
            while len(self.owed) > MAX_OWED:
                del self.owed[next(iter(self.owed))]
        await node.send_dialling(peer, "result", result)

    async def execute(self, req: StepRequest, progress: Callable[[int, str], object] | None = None) -> StepResult:
        """Run one step here; `progress(tokens, text)` hears an llm step's text as it is generated."""
        node = self.node

        def fail(msg: str) -> StepResult:
            return failed(req, msg)

        if node.ledger_error:
            return fail(f"this node cannot record earnings ({node.ledger_error}); not taking paid work")
        kind = "llm" if req.kind in MODEL_KINDS or req.kind == "score" else req.kind  # what it needs here
        if kind not in node.kinds:
            why = {"llm": node.model_error or "no model", "python": "no sandbox (bwrap) on this node"}.get(
                kind, "turned off by its operator")
            return fail(f"this node does not run {req.kind} steps: {why}")
        try:
            check_request(req.kind, req.params)
        except JobError as exc:
            return fail(f"refused: {exc}")
        model = req.params.get("model", "default")
        if kind == "llm" and (default_model_sha() if model == "default" else model) not in node.models:
            return fail(f"this node does not hold model {str(model)[:16]}")
        timeout = max(1.0, min(req.timeout, 3600.0))
        if req.kind == "scrape":  # in this loop: the browser is its own process, the proxy guards it
            try:
                output, work = await node.scraper.scrape(req.params, timeout)
            except StepFailed as exc:
                return fail(str(exc))
            return self._result(req, output, "scrape:" + work["via"].split(" ")[0], work)
        try:
            done = await node.bridge.ask(
                RunStep(uuid.uuid4().hex, "score" if req.kind == "score" else kind, req.params, timeout,
                        node.sandboxed), timeout + 15,
                None if progress is None else lambda m: progress(m.tokens, m.text))
        except NoAnswer as exc:
            return fail(str(exc))
        if not isinstance(done, StepDone):
            return fail(f"internal error: unexpected {type(done).__name__}")
        if not done.ok:
            return fail(done.error)
        return self._result(req, done.output, done.identity, done.work)

    def _result(self, req: StepRequest, output: object, identity: str, work: dict) -> StepResult:
        size = len(canonical(output))
        cap = self.node.opts.frame_cap // 2  # the signed result must fit in one frame, with room to spare
        if size > cap:
            return failed(req, f"output of {size} bytes is over this mesh's limit of {cap}")
        return StepResult(req.job, req.step, True, output, digest(output), identity, work)

    async def on_receipt(self, peer: Peer, msg: ReceiptMsg) -> None:
        r = msg.receipt
        why = check_receipt(r)
        if not why and (r["worker"] != self.node.id or payer_id(r) != peer.node):
            why = "receipt names another worker or payer"
        if not why and (peer.node, r["job"], r["step"]) not in self.owed:
            why = "receipt for a step this node did not answer for that payer"
        if why:
            self.node.receiver.count("bad-receipt")
            log.warning("receipt from %s refused: bad-receipt: %s", peer.node[:12], why)
            return
        del self.owed[(peer.node, r["job"], r["step"])]  # paid once; a second copy is refused
        await self.node.record([Entry("earned", r["job"], r["step"], peer.node, float(r["amount"]), {"receipt": r})])
