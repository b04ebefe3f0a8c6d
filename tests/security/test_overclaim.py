"""A worker that runs a step nobody else runs claims the whole time limit for it (found by an attack on the
core, 2026-12-05): nothing compared its claim, and it was paid 60 CPU-seconds for a sum that took
milliseconds — a trusted worker's lone steps under adaptive replication, or any step of a job at
redundancy 1. Over real connections, a node run with `--fault overclaim` answers right and claims every
step's whole timeout; what it is paid is at most what the submitter's wait for the answer allows
(mesh.core.pricing.observed; adaptive replication's lone steps: tests/core/test_claims.py)."""

from __future__ import annotations

import time

import pytest

from mesh.core.pricing import STEP_CPUS
from mesh.wire.records import DEFAULT_RATES

from ..conftest import cli_json, write_job


@pytest.mark.mesh
@pytest.mark.timeout(300)
def test_a_worker_running_a_step_alone_is_paid_no_more_than_the_wait_for_its_answer_allows(make_mesh, tmp_path):
    mesh = make_mesh(2, lambda i: ["--no-model"] + (["--fault", "overclaim"] if i == 1 else []))
    sub, cheat = mesh.nodes
    for i in range(3):
        job = write_job(tmp_path / f"j{i}.json", [{"id": "total", "kind": "python",
                                                   "params": {"code": f"output = sum(range({1000 + i}))"}}],
                        redundancy=1, timeout=60)
        began = time.monotonic()
        rep = cli_json("submit", job, "--home", str(sub.home), "--wait")
        took = time.monotonic() - began
        step = rep["steps"]["total"]
        assert rep["status"] == "done" and step["output"] == sum(range(1000 + i)), rep
        (mine,) = step["replicas"]
        assert mine["node"] == cheat.node_id and mine["work"]["cpu_s"] > 59.0, mine  # it claimed the whole timeout
        assert 0.01 <= mine["credit"] <= took * STEP_CPUS * DEFAULT_RATES.cpu_s + 1e-6, (took, mine)
