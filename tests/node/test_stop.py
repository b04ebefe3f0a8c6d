"""A node stops promptly when asked, even with a step running: Ctrl-C in a terminal (or SIGTERM to the
process group, as `mesh up` and service managers send it) reaches the node's actors too, and questions
the node had put to them must not hold its exit for as long as their timeouts (up to a step's whole
timeout: an hour)."""

from __future__ import annotations

import signal
import time

import pytest

from ..conftest import wait_for

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120)]

SLOW = {"name": "slow", "timeout": 90, "steps": [{"id": "nap", "kind": "python",
                                                  "params": {"code": "import time\ntime.sleep(80)\noutput = 1"}}]}


def test_a_node_stops_within_seconds_while_a_step_runs_on_it(make_mesh):
    mesh = make_mesh(2, lambda i: ["--no-model"])
    submitter, worker = mesh.nodes
    submitter.client.request("POST", "/jobs", {"job": SLOW, "redundancy": 1})
    wait_for(lambda: (u := worker.client.request("GET", "/status")["worker"])["known"] + u["stranger"] >= 1, 30,
             "the step running on the worker")
    t0 = time.monotonic()
    worker.kill(signal.SIGTERM)  # the whole process group, as a terminal's Ctrl-C reaches it
    worker.proc.wait(60)
    took = time.monotonic() - t0
    assert took < 10, f"the node took {took:.1f} s to stop"
    assert worker.proc.returncode == 0
    assert not (worker.home / "node.json").exists()  # it cleaned up as on any clean stop
