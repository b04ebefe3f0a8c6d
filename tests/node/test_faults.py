"""Each `--fault` mode on a real mesh of python-only nodes: node0 submits, nodes 1-3 are honest workers and
the last node(s) misbehave. Jobs run at a redundancy that gives every worker a replica, so the faulty node
is always asked. Whatever it does, every job must end 'done' with the honest answer, the faulty node must
earn nothing and rank below every honest worker, and the honest workers must be paid."""

from __future__ import annotations

import signal
import time

import pytest

from ..conftest import cli_json, wait_for

pytestmark = pytest.mark.mesh

SUM = {"id": "sum", "kind": "python", "params": {"code": "output = sum(range(10)) * 2"}}  # → 90
SHORT_TIMEOUT = 4  # seconds per step: a python step answers in well under a second


def fault_mesh(make_mesh, faults: dict[int, str], n: int = 5):
    return make_mesh(n, lambda i: ["--no-model"] + (["--fault", faults[i]] if i in faults else []))


def run_job(mesh, redundancy: int, steps: list[dict] | None = None, **fields) -> tuple[dict, float]:
    """Submit through node0's API and wait for the end: (report, seconds from submission to the end)."""
    client = mesh.nodes[0].client
    job = {"name": "faults", "steps": steps or [SUM], **fields}
    t0 = time.monotonic()
    job_id = client.request("POST", "/jobs", {"job": job, "redundancy": redundancy})["job_id"]
    rep = wait_for(lambda: (r := client.request("GET", f"/jobs/{job_id}?wait=2")) and r["status"] != "running" and r,
                   60, f"job {job_id} to end")
    return rep, time.monotonic() - t0


def check_done(mesh, rep: dict, bad: set[str], error: str | None = None) -> dict:
    """The job is done with the honest answer; every worker held a replica; exactly the bad ones disagree
    or failed (with `error`, when given). Returns the bad nodes' replicas."""
    assert rep["status"] == "done", rep
    step = rep["steps"]["sum"]
    assert step["status"] == "done" and step["output"] == 90, step
    replicas = {r["node"]: r for r in step["replicas"]}
    assert set(replicas) == {n.node_id for n in mesh.nodes[1:]}, "every worker gets a replica, node0 none"
    for node, r in replicas.items():
        assert r["agreed"] == (node not in bad), r
        if node not in bad:
            assert r["digest"] == step["digest"] and "error" not in r, r
        elif error is not None:
            assert r.get("error") == error and r["digest"] == "", r
    return {n: replicas[n] for n in bad}


def balance(node) -> float:
    return cli_json("ledger", "balance", "--home", str(node.home))["balance"]


def check_ledgers(mesh, bad_idx: set[int], kind: str, jobs: int = 1) -> None:
    """Honest workers are paid (and node0 paid exactly that), the bad nodes earn nothing, node0 recorded
    `jobs` × `kind` against each bad node and ranks it below every honest worker."""
    honest_idx = [i for i in range(1, len(mesh.nodes)) if i not in bad_idx]

    def settled():
        b = [balance(n) for n in mesh.nodes]
        return all(b[i] > 0 for i in honest_idx) and abs(sum(b)) < 1e-5 and b

    bal = wait_for(settled, 30, "the honest workers' receipts to land")
    assert bal[0] < 0
    for i in bad_idx:
        assert bal[i] == 0, f"faulty node{i} earned {bal[i]}"
    ranking = cli_json("ledger", "peers", "--home", str(mesh.nodes[0].home))
    order = [p["node"] for p in ranking]
    rows = {p["node"]: p for p in ranking}
    honest = [mesh.nodes[i].node_id for i in honest_idx]
    assert set(order) == {n.node_id for n in mesh.nodes[1:]}, ranking
    for h in honest:
        assert (rows[h]["agreed"], rows[h]["disagreed"], rows[h]["no_show"], rows[h]["penalty"]) == (jobs, 0, 0, 0)
    for i in bad_idx:
        row = rows[mesh.nodes[i].node_id]
        assert row["agreed"] == 0 and row[kind] == jobs, row
        assert order.index(row["node"]) > max(order.index(h) for h in honest), ranking
        assert row["reputation"] < min(rows[h]["reputation"] for h in honest), ranking


@pytest.mark.timeout(60)
def test_wrong_answer_is_outvoted_and_recorded_as_disagreed(make_mesh):
    mesh = fault_mesh(make_mesh, {4: "wrong"})
    bad = mesh.nodes[4].node_id
    rep, _ = run_job(mesh, 4)  # majority of 4 needs 3: the honest three
    mine = check_done(mesh, rep, {bad})[bad]
    assert mine["digest"] and mine["digest"] != rep["steps"]["sum"]["digest"] and "error" not in mine
    check_ledgers(mesh, {4}, "disagreed")


@pytest.mark.timeout(60)
def test_silent_node_times_out_as_a_no_show(make_mesh):
    mesh = fault_mesh(make_mesh, {4: "silent"})
    bad = mesh.nodes[4].node_id
    rep, took = run_job(mesh, 4, timeout=SHORT_TIMEOUT)
    check_done(mesh, rep, {bad}, error="timeout")
    # the job waited for the silent replica until its deadline, then settled without it: within the 1 s deadline
    # sweep and a loaded machine's slack (CI on 5ecd487: 7.16 s), far from the 60 s a link takes to go idle
    assert SHORT_TIMEOUT - 0.5 <= took < SHORT_TIMEOUT + 6, took
    check_ledgers(mesh, {4}, "no_show")


@pytest.mark.timeout(60)
def test_slow_node_is_a_no_show_and_its_late_answer_is_refused(make_mesh):
    """fault=slow answers once its step's timeout has passed. The step itself takes `slow_step` s, so that
    answer lands that long after the deadline, longer than the submitter's 1 s deadline sweep: the
    replica has already timed out. (An answer only a few ms late is refused too: see the test below.)
    A 4 s step: the job ends within the sweep after the deadline, and the slow answer comes a step's time after
    it, so 3 s apart (a 2 s step left 1 s, and a loaded CI machine took 7.26 s against the bound of 7)."""
    slow_step = 4.0
    step = {"id": "sum", "kind": "python",
            "params": {"code": f"import time\ntime.sleep({slow_step})\noutput = sum(range(10)) * 2"}}
    timeout = slow_step + 3
    mesh = fault_mesh(make_mesh, {4: "slow"})
    bad = mesh.nodes[4].node_id
    rep, _ = run_job(mesh, 4, [step], timeout=timeout)
    client = mesh.nodes[0].client
    # the job did not wait for the slow node: its answer, a step's time after the deadline, has not come (a
    # bound on the job's time from submission, 11 s, read 11.37 s on a loaded CI machine: the sandboxes'
    # start, the sweep and the polling count there, and none of them here)
    assert not client.request("GET", "/status")["rejected"].get("unexpected-result")
    done_at = time.monotonic()
    check_done(mesh, rep, {bad}, error="timeout")
    # ... and its answer, when it comes, is refused as unexpected
    wait_for(lambda: client.request("GET", "/status")["rejected"].get("unexpected-result"), 20,
             "the slow node's late answer")
    assert time.monotonic() > done_at
    assert client.request("GET", "/status")["rejected"]["unexpected-result"] == 1
    check_ledgers(mesh, {4}, "no_show")


@pytest.mark.timeout(60)
def test_answer_just_past_its_deadline_is_not_accepted(make_mesh):
    """fault=slow with a fast step answers a few ms after the deadline; it must still be a no-show."""
    mesh = fault_mesh(make_mesh, {4: "slow"})
    bad = mesh.nodes[4].node_id
    late = []
    for _ in range(4):
        rep, _ = run_job(mesh, 4, timeout=2)
        assert rep["status"] == "done" and rep["steps"]["sum"]["output"] == 90, rep
        mine = next(r for r in rep["steps"]["sum"]["replicas"] if r["node"] == bad)
        late.append(mine["agreed"])
    assert not any(late), f"the slow node's late answer was accepted in {sum(late)} of {len(late)} jobs"


@pytest.mark.timeout(60)
def test_crashing_node_dies_and_is_recorded_as_a_no_show(make_mesh):
    mesh = fault_mesh(make_mesh, {4: "crash"})
    victim = mesh.nodes[4]
    bad = victim.node_id
    rep, _ = run_job(mesh, 4)
    assert victim.proc.wait(timeout=20) == -signal.SIGKILL  # it killed its own process group
    check_done(mesh, rep, {bad}, error="connection lost")
    check_ledgers(mesh, {4}, "no_show")  # node4's ledger is read from its file: it is dead


@pytest.mark.timeout(60)
def test_forged_results_are_rejected_and_the_node_is_a_no_show(make_mesh):
    mesh = fault_mesh(make_mesh, {4: "forge"})
    bad = mesh.nodes[4].node_id
    rep, _ = run_job(mesh, 4, timeout=SHORT_TIMEOUT)
    # its result never counts: node0 drops the envelope, so the replica times out
    check_done(mesh, rep, {bad}, error="timeout")
    rejected = mesh.nodes[0].client.request("GET", "/status")["rejected"]
    assert rejected.get("bad-signature", 0) >= 1, rejected
    check_ledgers(mesh, {4}, "no_show")


@pytest.mark.timeout(60)
def test_two_wrong_nodes_among_six_are_outvoted(make_mesh):
    """node0 + 3 honest + 2 wrong at redundancy 5: majority needs 3, which only the honest three give."""
    mesh = fault_mesh(make_mesh, {4: "wrong", 5: "wrong"}, n=6)
    bad = {mesh.nodes[4].node_id, mesh.nodes[5].node_id}
    for _ in range(2):
        rep, _ = run_job(mesh, 5)
        mine = check_done(mesh, rep, bad)
        digests = {r["digest"] for r in mine.values()}
        assert len(digests) == 2 and rep["steps"]["sum"]["digest"] not in digests  # each lies its own way
    check_ledgers(mesh, {4, 5}, "disagreed", jobs=2)
