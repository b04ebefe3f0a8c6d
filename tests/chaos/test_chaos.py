"""A CI-size chaos run (tests/chaos/harness.py): 4 nodes, 40 jobs of 3 steps from two submitters over ~40 s, while a
seeded schedule kills -9 and restarts, stops and continues, and cuts the links of nodes. The run happens
once (module fixture); each invariant is its own test, so a report names each one broken.

`make chaos` runs the longer one (200 jobs); `python -m tests.chaos --seed S` replays any seed."""

from __future__ import annotations

import dataclasses
import json

import pytest

from .harness import ChaosRun, Config, Result
from .schedule import ACTIONS

pytestmark = [pytest.mark.mesh, pytest.mark.chaos, pytest.mark.timeout(420)]
CI = Config(seed=1, jobs=40, nodes=4, rate=1.0, steps=3, drain_s=90, settle_s=75)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory) -> Result:
    run = ChaosRun(dataclasses.replace(CI, directory=tmp_path_factory.mktemp("chaos")))
    try:
        res = run.run()
    finally:  # run() stops what it started; this again, by pid, should it have been interrupted
        run.stop_client.set()
        run.stop_all()
        run.kill_seen()
        if run.cutter is not None:
            run.cutter.close()
    print(json.dumps(res.to_json(), indent=1))
    return res


def test_every_job_was_submitted(chaos):
    assert chaos.submitted == chaos.jobs_wanted, (
        f"only {chaos.submitted} of {chaos.jobs_wanted} jobs were accepted (failures: {chaos.submit_failures})")


def test_no_job_is_stuck(chaos):
    assert chaos.stuck == 0, f"{chaos.stuck} jobs were still running {CI.drain_s:g} s after the last fault: {chaos.stuck_jobs}"


def test_no_job_is_lost(chaos):
    assert chaos.lost == 0, (f"{chaos.lost} jobs accepted by a submitter were unknown to it at the end (404); "
                             f"by the submitter's fault after submission: {chaos.lost_by_submitter_fault}; "
                             f"{chaos.lost_jobs[:5]}")


def test_every_failed_job_has_a_reason(chaos):
    assert chaos.failed_without_reason == 0, f"{chaos.failed_without_reason} failed jobs give no reason"


def test_paid_equals_earned_once(chaos):
    led = chaos.ledgers
    problems = {k: led[k] for k in ("paid_not_earned", "earned_not_paid", "amount_mismatch", "duplicate_paid",
                                    "duplicate_earned") if led[k]}
    assert not problems, (f"paid vs earned per (job, step, worker): {problems} of {led['paid']} paid; by worker "
                          f"{led['paid_not_earned_by_worker']}; e.g. {json.dumps(led['examples'])[:600]}; notes: {chaos.notes}; "
                          f"refused by each node: {chaos.rejected}")


def test_every_ledger_verifies(chaos):
    bad = {n: r for n, r in chaos.verify.items() if not r.get("ok")}
    assert len(chaos.verify) == CI.nodes and not bad, f"ledgers that do not verify: {bad}"


def test_no_node_leaks_processes(chaos):
    assert not chaos.leaked, f"processes alive after their node was stopped: {chaos.leaked}"


def test_the_schedule_was_carried_out(chaos):
    kinds = {"kill9", "stop"} if any(n.startswith("link drops left out") for n in chaos.notes) else set(ACTIONS)
    assert {a["action"] for a in chaos.applied} == kinds, chaos.applied
    errors = [a for a in chaos.applied if "error" in a]
    assert not errors, f"faults the harness could not carry out: {errors}"
    drops = [a for a in chaos.applied if a["action"] == "drop"]
    assert all(a["packets_dropped"] > 0 for a in drops), f"a cut dropped nothing: {drops}"
