"""Liveness on a real mesh: a clean leave is seen as 'left', a crash as 'down', and a restarted node
(same key, new port) comes back 'up' at the address in its new signed record."""

from __future__ import annotations

import signal
import time

import pytest

from ..conftest import cli_json, wait_for

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120)]
DOWN_AFTER = 8  # seconds of silence before a peer is down (the node's default is 20)


def peer_view(observer, node_id: str) -> dict:
    st = cli_json("status", "--home", str(observer.home))
    return next((p for p in st["peers"] if p["node"] == node_id), {})


def test_leave_crash_and_restart_are_seen_by_peers(make_mesh):
    mesh = make_mesh(3, lambda i: ["--no-model"])
    n0, n1, n2 = mesh.nodes
    id1, id2 = n1.node_id, n2.node_id

    n2.kill(signal.SIGTERM)
    wait_for(lambda: peer_view(n0, id2).get("state") == "left", 15, "a clean leave to be seen")

    n1.kill(signal.SIGKILL)
    wait_for(lambda: peer_view(n0, id1).get("state") == "down", 15, "a crash to be seen")
    n1.proc.wait(10)

    n1.start([n0.listen])
    n1.wait_started(60)
    n1.info = None
    assert n1.node_id == id1  # same key after a restart
    seen = wait_for(lambda: (p := peer_view(n0, id1)).get("state") == "up" and p, 30, "the restarted node")
    assert seen["address"] == n1.listen
    assert peer_view(n1, n0.node_id).get("state") == "up"


def test_a_node_that_sleeps_is_let_go_and_its_replica_moves(make_mesh):
    """A laptop that sleeps says nothing and closes nothing (SIGSTOP: its sockets stay open). Its peers
    stop hearing its hellos; after --down-after seconds of silence they close its links, so a replica waiting
    on it moves to another worker then, not at the job's deadline or the links' 60 s idle limit. When
    it wakes, it links up again."""
    # --down-after 8 (hellos every ~2.4 s): the same mechanism as the default 20 s, sooner; the links'
    # 60 s idle limit and the job's deadline stay where they were
    mesh = make_mesh(4, lambda i: ["--no-model", "--no-scrape", "--down-after", str(DOWN_AFTER)])
    n0, sleeper = mesh.nodes[0], mesh.nodes[3]
    client = n0.client
    job = {"name": "job", "redundancy": 3, "timeout": 300,  # the replica deadline is far: only liveness can
           "steps": [{"id": "s", "kind": "python", "params": {"code": "output = 6 * 7"}}]}  # free the step early
    sleeper.kill(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        # through the API at once, not a CLI process: under load a CLI took 9 s to start, the sleeper was
        # already down (--down-after 8) when the job was placed, and r=3 had two workers left
        job_id = client.request("POST", "/jobs", {"job": job})["job_id"]
        rep = wait_for(lambda: (r := client.request("GET", f"/jobs/{job_id}?wait=20", timeout=40))["status"]
                       != "running" and r, 200, "the job to end")
        took = time.monotonic() - t0
        assert rep["status"] == "done" and rep["steps"]["s"]["output"] == 42, rep
        replicas = rep["steps"]["s"]["replicas"]
        assert sleeper.node_id in {r["node"] for r in replicas}, "the sleeper got no replica: nothing was tested"
        assert sleeper.node_id not in {r["node"] for r in replicas if r["agreed"]}
        assert took < 45, f"the replica on the sleeping node moved only after {took:.1f} s"
        view = peer_view(n0, sleeper.node_id)
        assert view["state"] == "down" and not view["connected"]
    finally:
        sleeper.kill(signal.SIGCONT)
    wait_for(lambda: (p := peer_view(n0, sleeper.node_id)).get("state") == "up" and p.get("connected"), 60,
             "the woken node to link up again")
    print(f"a job at r=3 with one worker asleep took {took:.1f} s")
