"""A worker's --require-credit line against a submitter that pays too little (found by a credit attack,
2026-12-05): any receipt from the minimum charge (0.01) to the worker's own figure is valid — an honest
payer pays the median of the agreeing workers' figures — and the line counted receipts, not work. Paying
0.01 for each step, a hostile submitter ran 12 steps (4.19 CPU-seconds) past a line of 0.5 and was never
refused. Now a receipt for less than the step's work as the worker measured it counts the rest against
the line (a quarter of it, until an attack of 2026-12-06 got 4 times an honest payer's steps) (mesh.core.admission.UNDERPAID); the worker's ledger keeps that measure with each
receipt (ledger.store.Ledger.accounts reads it back at a restart: tests/ledger)."""

from __future__ import annotations

import pytest

from ledger.receipts import make_receipt
from mesh.wire.messages import ReceiptMsg, StepRequest

from ..conftest import wait_for
from .hostile import HostilePeer, ledger_rows, now_ms, status

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(240)]
CODE = "x = 0\nfor i in range(3_000_000):\n    x += i\noutput = x"  # a few tenths of a CPU-second
STEPS = 30  # at most


def run_steps(evil: HostilePeer, me: bytes, worker: str, job: str, pay: float) -> tuple[int, float, str]:
    """Steps one after another until one is refused: (steps run, CPU-seconds claimed, the refusal)."""
    ran, cpu = 0, 0.0
    for i in range(STEPS):
        evil.send(evil.seal("step", me, StepRequest(job, f"s{i}", "python", {"code": CODE}, 30.0)))
        got = evil.expect(lambda f, s=f"s{i}": f["kind"] == "result" and f["payload"]["step"] == s, 60)
        assert got is not None, f"no answer to {job}/s{i}"
        res = got["payload"]
        if not res["ok"]:
            return ran, cpu, res["error"]
        ran, cpu = ran + 1, cpu + res["work"]["cpu_s"]
        receipt = make_receipt(evil.identity, job, f"s{i}", worker, pay, now_ms())
        evil.send(evil.seal("receipt", me, ReceiptMsg(receipt)))
        assert evil.expect(lambda f: f["kind"] == "receipt-ack", 10), f"receipt for {job}/s{i} not taken"
    return ran, cpu, ""


def test_a_submitter_paying_the_minimum_for_every_step_is_held_to_the_workers_credit_line(make_mesh):
    node = make_mesh(1, lambda i: ["--no-model", "--transport", "tcp", "--require-credit", "0.5"]).nodes[0]
    me = bytes.fromhex(status(node)["key"])
    with HostilePeer(node.listen, transport="tcp") as evil:
        evil.handshake(me)
        ran, cpu, why = run_steps(evil, me, node.node_id, "cheap", 0.01)
    assert why.startswith("refused: over this worker's credit line") and "short of what your receipts" in why, \
        (ran, cpu, why)
    assert cpu <= 0.5 * 4 + 2.0, (ran, cpu)  # within the line's reach: 0.5 credits short at a quarter, and one step more
    earned = wait_for(lambda: len(rows := [r for r in ledger_rows(node.home) if r["kind"] == "earned"]) == ran and rows,
                      15, f"the worker booking {ran} receipts")
    assert all('"measured"' in r["detail"] for r in earned)


FAIL_CODE = "x = 0\nfor i in range(3_000_000):\n    x += i\nraise SystemExit(f'RESULT {x}')"  # computes, then fails


def test_steps_that_compute_and_then_fail_count_against_the_credit_line(make_mesh):
    """Found by this project's attack round on workers: a step was owed only when it succeeded, so steps
    that spun and then raised were never held against the line (12 of 3 CPU-seconds each ran past a line of
    1), and the answer came back in the error text for free. A failed step's time here now counts, at the
    worker's rate for a CPU-second."""
    node = make_mesh(1, lambda i: ["--no-model", "--transport", "tcp", "--require-credit", "0.5"]).nodes[0]
    me = bytes.fromhex(status(node)["key"])
    ran, why = 0, ""
    with HostilePeer(node.listen, transport="tcp") as evil:
        evil.handshake(me)
        for i in range(STEPS):
            evil.send(evil.seal("step", me, StepRequest("spin", f"s{i}", "python", {"code": FAIL_CODE}, 30.0)))
            got = evil.expect(lambda f, s=f"s{i}": f["kind"] == "result" and f["payload"]["step"] == s, 60)
            assert got is not None and not got["payload"]["ok"], got
            why = got["payload"]["error"]
            if why.startswith("refused"):
                break
            assert "RESULT" in why, why  # (the answer in the error text: what made failing worth it)
            ran += 1
    assert why.startswith("refused: over this worker's credit line") and "for steps that failed" in why, (ran, why)
    assert ran <= 8, (ran, why)  # a line of 0.5 credits: a few steps of a few tenths of a second each
    print(f"refused after {ran} failed steps: {why}")
