"""A wrong answer one submitter catches is acted on by the others (Submission.on_reported), on real
processes: a worker that cheats on every step is accepted running steps alone for n0 (r=1, nobody to
contradict it); n1 catches it outvoted at r=3; n1's testimony reaches n0, which weighs n1 by the verified
work n1 did for it, and n0 runs again the steps the cheater answered alone, overturning its answers."""

from __future__ import annotations

import pytest

from mesh.cli.local import LocalNode

from ..conftest import wait_for
from .hostile import PY_JOB, lone_answer_by, status, submit, wait_job

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(300)]
FAST = ["--no-model", "--testimony-every", "1"]
RIGHT = 90  # PY_JOB's answer


def up(node, who: str) -> bool:
    return any(p["node"] == who and p["state"] == "up" and p["connected"] for p in status(node)["peers"])


def test_a_cheater_caught_by_one_submitter_has_its_lone_answers_rerun_by_another(make_mesh, tmp_path, fork_node):
    mesh = make_mesh(3, lambda i: FAST)
    n0, n1, n2 = mesh.nodes
    for _ in range(7):  # n0 and n1 each see the other do verified work (r=2 on three nodes: both others);
        # an issuer counts in full at 10 verified results (trust.FULL_FLOW), and reports at half that
        for submitter in (n0, n1):
            rep = wait_job(submitter, submit(submitter, PY_JOB, 2))
            assert rep["status"] == "done" and rep["steps"]["sum"]["output"] == RIGHT, rep
    wait_for(lambda: status(n0)["testimony"]["issuers"].get(n1.node_id[:12], 0) >= 0.5, 60,
             "n0 to weigh n1's testimony fully")

    cheat = LocalNode(tmp_path / "cheat", FAST + ["--fault", "wrong"], launch=fork_node)
    try:
        cheat.start([n0.listen])
        cheat.wait_started(60)
        wait_for(lambda: up(n0, cheat.node_id) and up(n1, cheat.node_id), 60, "the cheater linked to n0 and n1")
        # n0 runs steps alone (r=1) until the cheater has answered one: accepted, wrong, nobody to object
        fooled = lone_answer_by(n0, cheat.node_id, RIGHT)
        # n1 asks three workers: the cheater is outvoted there, and n1 testifies so
        caught = wait_job(n1, submit(n1, PY_JOB, 3))
        assert caught["steps"]["sum"]["output"] == RIGHT, caught
        assert cheat.node_id in {r["node"] for r in caught["steps"]["sum"]["replicas"] if not r["agreed"]}

        def rerun() -> dict | None:
            r = n0.client.request("GET", f"/jobs/{fooled['job_id']}")
            verdict = r.get("rechecks", {}).get("sum", {}).get("verdict")
            return r if verdict not in (None, "running") else None
        after = wait_for(rerun, 90, "n0 to rerun the step the cheater answered alone")
    finally:
        cheat.stop()
    check = after["rechecks"]["sum"]
    assert check["cause"] == cheat.node_id and check["verdict"] == "overturned", after
    assert after["steps"]["sum"]["output"] == RIGHT, after  # the wrong answer n0 had accepted is replaced
