"""The worker driven through its port alone (no Node, no actors, no network): what it refuses, what it
answers, how it relays progress, and which receipts it books (as typed Receipts, stored as their JSON)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from actors.messages import RunStep, StepDone, StepProgress
from ledger.receipts import Receipt, make_receipt
from ledger.store import Entry
from mesh.errors import NoAnswer
from mesh.node.flow import Limits
from mesh.node.peers import Peer
from mesh.node.worker import StepRunner, Worker, WorkerPort
from mesh.wire.canonical import digest
from mesh.wire.identity import Identity
from mesh.wire.messages import ReceiptMsg, StepRequest, StepResult

pytestmark = pytest.mark.timeout(30)

ME, PAYER = Identity.generate(), Identity.generate()
CODE = {"code": "output = 6 * 7", "inputs": {}}


class FakeNode:
    """What a Node would hand the worker, recorded."""

    def __init__(self, answer: object = None, kinds=("python",), fault: str = "", ledger_error: str = ""):
        self.answer = answer if answer is not None else StepDone("", True, 42, "python:bwrap", {"cpu_s": 0.25})
        self.sent: list[tuple[str, object]] = []
        self.recorded: list[Entry] = []
        self.counted: Counter[str] = Counter()
        self.asked: list[RunStep] = []
        self.ledger_problem = ledger_error
        self.port = WorkerPort(
            node_id=ME.node_id, fault=fault, collude="", frame_cap=1 << 20, limits=Limits(), kinds=kinds,
            models=(), model_error="no model here", steps=StepRunner(self.ask, self.scrape, True),
            send=self.send, send_dialling=self.send_dialling, record=self.record,
            ledger_error=lambda: self.ledger_problem, count=self.count)

    async def ask(self, msg: RunStep, timeout: float, relay) -> object:
        self.asked.append(msg)
        if isinstance(self.answer, Exception):
            raise self.answer
        if relay is not None:
            relay(StepProgress(msg.request_id, 8, "partial text"))
        return self.answer

    async def scrape(self, params: dict, timeout: float) -> tuple[object, dict]:
        return {"title": "t"}, {"via": "plain http fetch", "seconds": 0.1}

    def count(self, reason: str) -> None:
        self.counted[reason] += 1

    def send(self, peer: Peer, kind: str, payload: object) -> bool:
        self.sent.append((kind, payload))
        return True

    async def send_dialling(self, peer: Peer, kind: str, payload: object) -> bool:
        return self.send(peer, kind, payload)

    async def record(self, entries: list[Entry]) -> bool:
        self.recorded += entries
        return True


def request(kind: str = "python", params: dict | None = None) -> StepRequest:
    return StepRequest("job1", "a", kind, CODE if params is None else params, 10.0)


def results(fake: FakeNode) -> list[StepResult]:
    return [p for k, p in fake.sent if k == "result"]


def test_a_step_runs_through_the_runner_and_is_answered():
    fake = FakeNode()
    asyncio.run(Worker(fake.port).work(Peer(PAYER.public_key), request()))
    (res,) = results(fake)
    assert res.ok and res.output == 42 and res.digest == digest(42) and res.identity == "python:bwrap"
    assert fake.asked[0].kind == "python" and fake.asked[0].sandboxed


def test_llm_progress_is_relayed_to_the_payer():
    fake = FakeNode(StepDone("", True, "text", "gguf:x", {"tokens": 8}), kinds=("llm",))
    fake.port = WorkerPort(**{**fake.port.__dict__, "models": ("ab" * 32,)})
    asyncio.run(Worker(fake.port).work(Peer(PAYER.public_key), request("llm", {"prompt": "p", "model": "ab" * 32})))
    assert [k for k, _ in fake.sent] == ["progress", "result"] and results(fake)[0].ok


def test_scrape_runs_in_the_loop_and_names_how():
    fake = FakeNode(kinds=("scrape",))
    res = asyncio.run(Worker(fake.port).execute(request("scrape", {"url": "https://example.com/"})))
    assert res.ok and res.identity == "scrape:plain" and not fake.asked


@pytest.mark.parametrize("fake, why", [
    (FakeNode(kinds=()), "does not run python steps: no sandbox"),
    (FakeNode(ledger_error="disk full"), "cannot record earnings (disk full)"),
    (FakeNode(NoAnswer("no answer to RunStep within 25 s")), "no answer to RunStep"),
    (FakeNode(StepDone("", False, error="sandbox: timeout")), "sandbox: timeout"),
])
def test_refusals_and_failures_are_answered_with_the_reason(fake, why):
    res = asyncio.run(Worker(fake.port).execute(request()))
    assert not res.ok and why in res.error


def test_fault_wrong_answers_a_signed_wrong_answer():
    fake = FakeNode(fault="wrong")
    asyncio.run(Worker(fake.port).work(Peer(PAYER.public_key), request()))
    (res,) = results(fake)
    assert res.ok and res.output != 42 and res.digest == digest(res.output)


def test_a_receipt_for_an_answered_step_is_booked_once():
    fake = FakeNode()
    worker, peer = Worker(fake.port), Peer(PAYER.public_key)
    asyncio.run(worker.work(peer, request()))
    r = make_receipt(PAYER, "job1", "a", ME.node_id, 0.25, 1_700_000_000_000)
    asyncio.run(worker.on_receipt(peer, ReceiptMsg(r)))
    asyncio.run(worker.on_receipt(peer, ReceiptMsg(r)))  # a second copy pays nothing
    (entry,) = fake.recorded
    assert entry.kind == "earned" and entry.peer == PAYER.node_id and entry.amount == 0.25
    assert isinstance(entry.detail["receipt"], Receipt) and entry.detail["receipt"].to_json() == r
    assert fake.counted == Counter({"bad-receipt": 1})


@pytest.mark.parametrize("amount, booked", [(0.25, True), (0.2500004, True), (0.26, False), (999_999_999, False),
                                            (0.001, False), (0, False), (-3, False)])
def test_a_receipt_outside_the_rate_card_for_the_work_measured_is_refused(amount, booked):
    """The worker measured 0.25 CPU-seconds and charges 1 a CPU-second: 0.01 to 0.25 may be booked."""
    fake = FakeNode()
    worker, peer = Worker(fake.port), Peer(PAYER.public_key)
    asyncio.run(worker.work(peer, request()))
    asyncio.run(worker.on_receipt(peer, ReceiptMsg(make_receipt(PAYER, "job1", "a", ME.node_id, amount, 1))))
    assert [e.amount for e in fake.recorded] == ([amount] if booked else [])
    assert fake.counted == Counter({} if booked else {"bad-receipt": 1})


@pytest.mark.parametrize("receipt", [
    make_receipt(PAYER, "job1", "a", Identity.generate().node_id, 0.25, 1),  # pays another worker
    make_receipt(Identity.generate(), "job1", "a", ME.node_id, 0.25, 1),  # signed by another payer
    make_receipt(PAYER, "job1", "b", ME.node_id, 0.25, 1),  # a step not answered
    {"job": "job1", "amount": 1e6},  # not a receipt
])
def test_receipts_that_pay_for_nothing_answered_are_refused(receipt):
    fake = FakeNode()
    worker, peer = Worker(fake.port), Peer(PAYER.public_key)
    asyncio.run(worker.work(peer, request()))
    asyncio.run(worker.on_receipt(peer, ReceiptMsg(receipt)))
    assert fake.recorded == [] and fake.counted == Counter({"bad-receipt": 1})
