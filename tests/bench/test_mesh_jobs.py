"""bench/mesh_jobs.py: what a job is measured against — its slowest replica's own step time, read from the
job's report as the node serves it."""

from __future__ import annotations

import pytest

from bench.mesh_jobs import slowest_replica

pytestmark = pytest.mark.timeout(30)


def test_the_slowest_replica_is_the_longest_step_time_any_replica_reported():
    report = {"steps": {"s": {"replicas": [{"node": "a", "work": {"seconds": 0.012}},
                                           {"node": "b", "work": {"seconds": 0.031}},
                                           {"node": "c", "error": "busy"}]}}}
    assert slowest_replica(report) == 0.031


def test_a_job_no_replica_reported_a_time_for_has_none():
    assert slowest_replica({"steps": {"s": {"replicas": [{"node": "a", "error": "busy"}]}}}) == 0.0
    assert slowest_replica({"steps": {"s": {"replicas": []}}}) == 0.0
