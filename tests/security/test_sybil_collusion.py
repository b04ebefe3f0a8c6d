"""The attack issue 21 opens with, replayed on real processes: one machine runs 20 colluding ids that all
return the same wrong answer, against three honest workers, each on a network prefix of its own. Before
placement capped what one observed prefix may supply, 12 of 12 steps at r=3 were answered wrong and the
sybils took every credit. Now every step is answered right, the sybils are paid nothing and are booked as
having disagreed, and the honest workers are paid."""

from __future__ import annotations

import pytest

from mesh.wire.canonical import digest
from mesh.wire.envelope import ANYONE
from mesh.wire.messages import Hello, StepResult, Work
from mesh.wire.records import make_record

from ..conftest import wait_for
from .hostile import HostilePeer, asked_of, ledger_rows, now_ms, status, wait_paid

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180)]

SYBILS, STEPS = 20, 12
WRONG = "pwned"


def test_twenty_colluding_ids_on_one_machine_get_no_wrong_answer_through_and_earn_nothing(make_mesh):
    # the submitter and three honest workers, each listening (and dialling) from its own loopback /24
    mesh = make_mesh(4, lambda i: ["--no-model", "--listen", f"127.0.{10 if i == 0 else i}.1:0"])
    node = mesh.nodes[0]
    me = bytes.fromhex(status(node)["key"])
    sybils = [HostilePeer(node.listen) for _ in range(SYBILS)]  # all from 127.0.0.1
    try:
        for i, s in enumerate(sybils):  # each advertises a /24 of its own: what it claims is not what counts
            rec = make_record(s.identity, s.network, f"10.{i + 1}.0.1:4750", ["python"], [], True, now_ms())
            s.send(s.seal("hello", ANYONE, Hello(rec, [])))
        wait_for(lambda: sum(p["state"] == "up" for p in status(node)["peers"]) == SYBILS + 3, 30,
                 f"{SYBILS + 3} workers up")
        steps = [{"id": f"s{k}", "kind": "python", "params": {"code": f"output = {k} * 2"}} for k in range(STEPS)]
        job_id = node.client.request("POST", "/jobs", {"job": {"name": "sybil", "redundancy": 3, "timeout": 30,
                                                               "steps": steps}})["job_id"]
        answered: set[tuple[str, str]] = set()

        def collude() -> dict | None:
            """Every sybil answers each step it is given with the group's one wrong answer, at once."""
            for s in sybils:
                s.expect(lambda f: False, 0.01)  # read what arrived
                for f in s.received:
                    if f["kind"] == "step" and (s.node_id, f["payload"]["step"]) not in answered:
                        answered.add((s.node_id, f["payload"]["step"]))
                        s.send(s.seal("result", me, StepResult(f["payload"]["job"], f["payload"]["step"], True,
                                                               WRONG, digest(WRONG), "python:bwrap",
                                                               Work(cpu_s=0.01), asked=asked_of(f))))
            r = node.client.request("GET", f"/jobs/{job_id}")
            return r if r["status"] != "running" else None

        report = wait_for(collude, 90, "the job to end while the sybils answer")
    finally:
        for s in sybils:
            s.close()
    assert answered, "no sybil was ever given a step: the attack was not tried"
    assert report["status"] == "done", report
    outputs = {sid: st["output"] for sid, st in report["steps"].items()}
    assert outputs == {f"s{k}": k * 2 for k in range(STEPS)}  # every step answered right
    sybil_ids = {s.node_id for s in sybils}
    honest = {n.node_id for n in mesh.nodes[1:]}
    for sid, st in report["steps"].items():
        agreed = {r["node"] for r in st["replicas"] if r["agreed"]}
        assert agreed <= honest and len(agreed) >= 2, (sid, st["replicas"])
    rows = ledger_rows(node.home)
    assert not [r for r in rows if r["peer"] in sybil_ids and r["kind"] == "paid"], "a sybil was paid"
    booked = {r["peer"] for r in rows if r["kind"] == "disagreed"}
    assert booked & sybil_ids, "the sybils' wrong answers were not booked against them"
    assert booked <= sybil_ids, "an honest worker was booked as disagreeing"
    wait_paid(mesh, report)  # and the honest workers were paid
