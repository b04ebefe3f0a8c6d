"""The node's own counts for /metrics (mesh.node.tally): buckets are cumulative as Prometheus wants them,
replica outcomes are told apart, and a peer cannot grow the step kinds it is counted under."""

from __future__ import annotations

import random

import pytest

from mesh.core.dag import parse_job
from mesh.core.jobrun import JobRun, Replica
from mesh.node.tally import Histogram, Tally, replica_outcome

pytestmark = pytest.mark.timeout(30)


def test_histogram_buckets_are_cumulative_with_sum_and_count():
    h = Histogram((1.0, 5.0))
    for v in (0.5, 1.0, 3.0, 9.0):
        h.observe(v)
    assert h.to_json() == {"buckets": [["1.0", 2], ["5.0", 3], ["+Inf", 4]], "sum": 13.5, "count": 4}


def test_replica_outcomes():
    assert replica_outcome("k", "k", "d", "") == "agreed"
    assert replica_outcome("k", "j", "d", "") == "disagreed"
    assert replica_outcome("k", "", "", "timed out") == "failed"
    assert replica_outcome("", "", "", "") == "unanswered"


def test_a_finished_job_is_counted_by_step_and_replica():
    job = parse_job({"name": "t", "steps": [{"id": "a", "kind": "python", "params": {"code": "output = 1"}}]},
                    "t", 3, None)
    run = JobRun("j1", job, random.Random(1))
    step = run.steps["a"]
    step.status, step.key = "done", "x"
    step.replicas = {"n1": Replica("n1", "d1", "x"), "n2": Replica("n2", "d1", "x"),
                     "n3": Replica("n3", "d2", "y"), "n4": Replica("n4", error="timed out")}
    tally = Tally()
    tally.job_ended(run, 2.0)
    snap = tally.snapshot()
    assert snap["jobs_ended"] == {"done": 1}
    assert snap["steps"] == [["python", "done", 1]]
    assert snap["replicas"] == [["python", "agreed", 2], ["python", "disagreed", 1], ["python", "failed", 1]]
    assert snap["job_seconds"]["count"] == 1 and snap["job_seconds"]["sum"] == 2.0


def test_a_peer_cannot_invent_step_kinds():
    tally = Tally()
    for i in range(100):
        tally.step_worked(f"kind-{i}", "refused", None)
    tally.step_worked("python", "ok", 0.2)
    snap = tally.snapshot()
    assert snap["worked"] == [["other", "refused", 100], ["python", "ok", 1]]
    assert list(snap["step_seconds"]) == ["python"]
