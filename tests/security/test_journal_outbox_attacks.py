"""The job journal and the receipt outbox against a peer with a valid key. It must not get results the
node never asked for (each as large as a frame allows) written to the node's journal — only an answer to
a request the node has out is an input of its core — nor grow it by linking and unlinking over and over;
and it can neither stop another worker's receipts nor be sent them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mesh.wire.canonical import digest
from mesh.wire.messages import ReceiptAck, ReceiptAsk, StepResult, Work

from ..conftest import wait_for
from .hostile import PY_JOB, HostilePeer, rejected, submit, wait_job, wait_paid, wait_rejection

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180)]
RESULTS = 20
BIG = "x" * (600 << 10)  # under the 1 MiB frame cap once signed


def journal_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in home.glob("journal.db*"))


def key_of(node) -> bytes:
    return bytes.fromhex(node.client.request("GET", "/status")["key"])


def test_unasked_results_and_empty_losses_are_not_journaled(make_mesh):
    mesh = make_mesh(2, lambda i: ["--no-model"])
    node = mesh.nodes[0]
    before_bytes, before = journal_bytes(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        evil.handshake(key_of(node))
        for i in range(RESULTS):
            out = [BIG, i]
            evil.send(evil.seal("result", key_of(node), StepResult(f"job{i:04d}", "s", True, out, digest(out),
                                                                   "python:bwrap", Work())))
        wait_rejection(node, "unexpected-result", before, evil.node_id[:12])
        wait_for(lambda: rejected(node).get("unexpected-result", 0) - before.get("unexpected-result", 0) >= RESULTS,
                 60, "every unasked result refused")
    for _ in range(10):  # link, introduce itself, go: a loss of a peer that holds nothing of ours
        with HostilePeer(node.listen) as again:
            again.handshake(key_of(node))
    grown = journal_bytes(node.home) - before_bytes
    assert grown < 256 << 10, f"the journal grew by {grown} bytes for {RESULTS} unasked results of 600 KiB"
    assert os.path.exists(node.home / "journal.db")


def test_a_stranger_can_neither_stop_nor_fetch_another_workers_receipts(make_mesh):
    """The outbox's two doors for peers. A `receipt-ask` is answered with the asker's own receipts only: a
    peer with a valid key naming an honest worker's paid step gets nothing. Its `receipt-ack`s for that
    step disturb nothing: the worker's receipt is delivered and booked. (That an ack stops only the
    acking peer's own resends is checked on the outbox itself, tests/node/test_journal.py: here the
    first send reaches the worker before any resend could be stopped.)"""
    mesh = make_mesh(3, lambda i: ["--no-model"])
    node = mesh.nodes[0]
    with HostilePeer(node.listen) as evil:
        evil.handshake(key_of(node))
        job_id = submit(node, PY_JOB, 2)
        # the moment the job is submitted, before its receipts go: ack and ask for every step, as if owed
        for _ in range(20):
            evil.send(evil.seal("receipt-ack", key_of(node), ReceiptAck(job_id, ["sum"])))
            evil.send(evil.seal("receipt-ask", key_of(node), ReceiptAsk(job_id, ["sum"])))
        rep = wait_job(node, job_id)
        assert rep["status"] == "done", rep
        evil.send(evil.seal("receipt-ask", key_of(node), ReceiptAsk(job_id, ["sum"])))  # after it was paid
        assert evil.expect(lambda f: f["kind"] == "receipt", 3.0) is None, "a stranger was sent a receipt"
    wait_paid(mesh, rep)  # the honest workers booked theirs: the stranger's acks stopped nothing
    wait_for(lambda: node.client.request("GET", "/status")["receipts_unacknowledged"] == 0, 30, "acknowledged")


def test_a_receipt_the_ledger_holds_is_sent_again_on_asking_after_the_journal_was_lost(make_mesh):
    """Red team G: a home restored without `journal.db-wal` (or a journal torn or emptied) lost the receipt
    outbox, and a worker that had not yet taken its receipt was never paid what the submitter's ledger
    says it paid: a `receipt-ask` was answered from the outbox only. The ledger's `paid` row holds the
    signed receipt: it is the answer when the outbox has none. (Here the worker's own key asks on a link of
    its own, after the submitter restarted without its journal.)"""
    from mesh.wire.identity import load

    mesh = make_mesh(3, lambda i: ["--no-model", "--no-scrape"])
    node = mesh.nodes[0]
    rep = wait_job(node, submit(node, PY_JOB, 2))
    assert rep["status"] == "done", rep
    wait_paid(mesh, rep)
    worker = next(n for n in mesh.nodes[1:] if any(r["node"] == n.node_id and r["agreed"]
                                                   for r in rep["steps"]["sum"]["replicas"]))
    worker.stop()  # (its own link would take the answer)
    node.stop()
    for path in node.home.glob("journal.db*"):
        path.unlink()
    node.start([])
    node.wait_started(60)
    node.info = None
    with HostilePeer(node.listen, identity=load(worker.home)) as asker:
        asker.handshake(key_of(node))
        asker.send(asker.seal("receipt-ask", key_of(node), ReceiptAsk(rep["job_id"], ["sum"])))
        got = asker.expect(lambda f: f["kind"] == "receipt", 10.0)
    assert got is not None, "the receipt the ledger holds was not sent"
    receipt = got["payload"]["receipt"]
    assert (receipt["job"], receipt["step"], receipt["worker"]) == (rep["job_id"], "sum", worker.node_id), receipt
