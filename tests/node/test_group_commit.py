"""Group commit in the submitter's journal, with the real Submitter and Journal on a real SQLite file and
fake workers that answer at once: a burst of inputs in one event-loop turn is one transaction (counted
from SQLite's own statement trace, so the count does not rest on the journal's word), and nothing leaves
the node before the input that caused it is on disk — checked at the moment it leaves by replaying the
journal as a second connection sees it, as a node killed right then would."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from mesh.core.dag import parse_job
from mesh.core.effects import Send
from mesh.core.policy import Candidate
from mesh.core.submission import Submission
from mesh.errors import JournalError
from mesh.node.journal import JOURNAL_FILE, Journal
from mesh.node.outbox import HELD, SENDING
from mesh.node.submitter import Options, Ports, Submitter
from mesh.wire.canonical import digest
from mesh.wire.identity import Identity
from mesh.wire.messages import ReceiptAck, StepRequest, StepResult, Work, asked_digest

pytestmark = pytest.mark.timeout(60)
JOB = parse_job({"redundancy": 3, "timeout": 10, "steps": [{"id": "a", "kind": "python", "params": {"code": "x"}}]})
WORKERS = [Candidate(f"w{i}", 0.5, f"10.0.{i}") for i in range(12)]  # (4 requests in flight each)
OUT = {"x": 1}


class Transactions:
    """Which transaction each journaled input went to disk in, from SQLite's statement trace: an input
    written outside BEGIN … COMMIT is a transaction of its own (autocommit)."""

    def __init__(self, db: sqlite3.Connection):
        self.current, self.open, self.of_input = 0, False, []
        self.writes: set[int] = set()  # transactions that wrote a row
        db.set_trace_callback(self.saw)

    def saw(self, sql: str) -> None:
        word = sql.split()[0].upper()
        if word == "BEGIN":
            self.current, self.open = self.current + 1, True
        elif word in ("COMMIT", "ROLLBACK", "END"):
            self.open = False
        elif word in ("INSERT", "UPDATE", "DELETE"):
            if not self.open:
                self.current += 1
            self.writes.add(self.current)
            if sql.startswith("INSERT INTO inputs"):
                self.of_input.append(self.current)

    def by_kind(self, home: Path) -> dict[str, set[int]]:
        """Input name → the transactions its inputs were committed in."""
        kinds = [json.loads(e)[0] for (e,) in on_disk(home).execute("SELECT entry FROM inputs ORDER BY seq")]
        assert len(kinds) == len(self.of_input)
        out: dict[str, set[int]] = {}
        for kind, txn in zip(kinds, self.of_input, strict=True):
            out.setdefault(kind, set()).add(txn)
        return out


def on_disk(home: Path) -> sqlite3.Connection:
    """A second, read-only connection: it sees only what is committed."""
    return sqlite3.connect(f"file:{home / JOURNAL_FILE}?mode=ro", uri=True)


def replayed_sends(home: Path) -> set[tuple[str, str, str]]:
    """(worker, job, step) of every request a node killed now would know it sent: its journal on disk
    replayed into a fresh core."""
    journal = Journal.__new__(Journal)  # (its reading half only, on the read-only connection)
    journal.db, journal.path, journal._refs = on_disk(home), home / JOURNAL_FILE, set()
    replayed = journal.replayed()
    journal.db.close()
    core = Submission(replayed.config)
    return {(e.node, e.job, e.step) for entry in replayed.entries for e in core.apply(entry) if isinstance(e, Send)}


def outbox_on_disk(home: Path) -> dict[tuple[str, str, str], int]:
    db = on_disk(home)
    try:
        return {(p, j, s): state for p, j, s, state in db.execute("SELECT peer, job, step, state FROM outbox")}
    finally:
        db.close()


class Mesh:
    """Fake workers that answer every request at once, a ledger that takes every batch, and a check at
    every effect that leaves the node: what caused it is on disk."""

    def __init__(self, home: Path, answer: bool = True):
        self.home, self.answer = home, answer
        (home / "jobs").mkdir(exist_ok=True)
        self.tasks: set[asyncio.Task] = set()
        self.requests: list[tuple[str, StepRequest]] = []
        self.left: list[str] = []  # every effect that left the node, in order
        self.unkept: list[str] = []  # those whose cause was not on disk when they left
        self.paid = 0
        ports = Ports("me", Identity.generate(), home, self.send, self.record,
                      lambda: {"python": list(WORKERS)}, self.spawn, lambda reason: None,
                      lambda: 0.0, lambda: "", self.find)
        self.sub = Submitter(ports, Options(credit_line=1e9), seed=1, journal=Journal(home))
        self.txns = Transactions(self.sub.journal.db)

    async def __aenter__(self) -> Mesh:
        self.spawn(self.sub.deliver(0.05))
        return self

    async def __aexit__(self, *exc) -> None:
        for _ in range(50):  # (again: on 3.11 a wait_for finishing as it is cancelled swallows the cancel)
            if not self.tasks:
                break
            for task in list(self.tasks):
                task.cancel()
            await asyncio.wait(list(self.tasks), timeout=0.1)
        await asyncio.sleep(0.05)  # (answers and acknowledgements already on the loop's queue)
        self.sub.journal.close()

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def find(self, wanted: dict) -> None:
        return None

    async def send(self, node: str, kind: str, payload: object) -> bool:
        self.left.append(kind)
        if kind == "step":
            if (node, payload.job, payload.step) not in replayed_sends(self.home):
                self.unkept.append(f"request {payload.job}/{payload.step} to {node}")
            self.requests.append((node, payload))
            if self.answer:
                asyncio.get_running_loop().call_soon(self.result, node, payload)
        elif kind == "receipt":
            r = payload.receipt
            if outbox_on_disk(self.home).get((node, r["job"], r["step"])) != SENDING:
                self.unkept.append(f"receipt {r['job']}/{r['step']} to {node}")
            asyncio.get_running_loop().call_soon(self.sub.on_receipt_ack, SimpleNamespace(node=node),
                                                 ReceiptAck(r["job"], [r["step"]]))
        return True

    def result(self, node: str, req: StepRequest) -> None:
        self.sub.on_result(SimpleNamespace(node=node), StepResult(
            req.job, req.step, True, OUT, digest(OUT), "python", Work(cpu_s=0.01),
            asked=asked_digest(req.kind, req.params)))

    async def record(self, entries: list, ts: int) -> bool:
        self.left.append("ledger")
        held = outbox_on_disk(self.home)
        for e in entries:
            if e.kind == "paid" and held.get((e.peer, e.job, e.step)) not in (HELD, SENDING):
                self.unkept.append(f"payment {e.job}/{e.step} to {e.peer} without its receipt kept")
        self.paid += sum(e.kind == "paid" for e in entries)
        return True

    async def until(self, what, why: str, wait: float = 20.0) -> None:
        for _ in range(int(wait / 0.01)):
            if what():
                return
            await asyncio.sleep(0.01)
        pytest.fail(f"timed out waiting for {why}")


def test_a_burst_of_inputs_in_one_turn_is_one_commit(tmp_path: Path):
    """Eight jobs submitted in one turn are one transaction, and their 24 answers, arriving in one turn,
    another one (the journal took each input as a commit of its own: 8 and 24)."""
    async def run() -> dict[str, set[int]]:
        async with Mesh(tmp_path, answer=False) as mesh:
            for _ in range(8):
                mesh.sub.submit(JOB)
            await mesh.until(lambda: len(mesh.requests) == 24, "the 24 requests")
            for node, req in list(mesh.requests):  # every answer in one turn
                mesh.result(node, req)
            await mesh.until(lambda: mesh.paid == 24, "the 24 payments")
            await mesh.until(lambda: not mesh.sub.journal.db.in_transaction, "the last commit")
            return mesh.txns.by_kind(tmp_path)

    txns = asyncio.run(run())
    assert len(txns["submit"]) == 1, f"8 submits in {len(txns['submit'])} commits"
    assert len(txns["on_result"]) == 1, f"24 answers in {len(txns['on_result'])} commits"


def test_nothing_leaves_before_the_input_that_caused_it_is_on_disk(tmp_path: Path):
    """Requests, ledger writes and receipts of eight r=3 jobs, each checked as it leaves against the
    journal a second connection reads; the id a submit answers is on disk when it is answered."""
    async def run() -> tuple[Mesh, list[str]]:
        async with Mesh(tmp_path) as mesh:
            ids = []
            for _ in range(8):
                job_id = await mesh.sub.submit_kept(JOB)
                submits = [json.loads(e) for (e,) in on_disk(tmp_path).execute("SELECT entry FROM inputs")]
                assert ["submit", job_id] in [e[:2] for e in submits], "answered unkept"
                ids.append(job_id)
            for job_id in ids:
                await asyncio.wait_for(mesh.sub.jobs[job_id].done.wait(), 20)
            await mesh.until(lambda: mesh.left.count("receipt") == 24, "the 24 receipts")
            return mesh, [mesh.sub.jobs[j].run.status for j in ids]

    mesh, statuses = asyncio.run(run())
    assert statuses == ["done"] * 8 and mesh.paid == 24
    assert mesh.left.count("step") == 24 and mesh.left.count("ledger") == 8
    assert mesh.unkept == []


class FailingCommits:
    """The journal's connection, whose COMMITs fail from when `fail` is set (a disk that filled)."""

    def __init__(self, db: sqlite3.Connection):
        self.db, self.fail = db, False

    def execute(self, sql: str, *args):
        if self.fail and sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.db, name)


def test_a_commit_that_fails_lets_nothing_out_and_refuses_the_job(tmp_path: Path):
    """The group's COMMIT fails: the submit is answered with JournalError (HTTP 503), nothing of the job
    is sent, the journal on disk ends before it (a valid prefix), and later jobs are refused."""
    async def run() -> tuple[Mesh, Journal]:
        async with Mesh(tmp_path) as mesh:
            journal = mesh.sub.journal
            first = await mesh.sub.submit_kept(JOB)
            await asyncio.wait_for(mesh.sub.jobs[first].done.wait(), 20)
            await mesh.until(lambda: mesh.left.count("receipt") == 3, "the first job's receipts")
            journal.db = FailingCommits(journal.db)
            journal.db.fail = True
            sent = len(mesh.left)
            with pytest.raises(JournalError, match="could not be written"):
                await mesh.sub.submit_kept(JOB)
            for _ in range(20):
                await asyncio.sleep(0.01)
            assert len(mesh.left) == sent, mesh.left[sent:]
            with pytest.raises(JournalError):
                mesh.sub.submit(JOB)
            return mesh, journal

    mesh, journal = asyncio.run(run())
    kinds = [json.loads(e)[0] for (e,) in on_disk(tmp_path).execute("SELECT entry FROM inputs ORDER BY seq")]
    assert kinds.count("submit") == 1 and mesh.unkept == []
