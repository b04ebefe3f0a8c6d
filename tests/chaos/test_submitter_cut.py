"""A submitter cut off mid-step (a laptop that sleeps, a Wi-Fi that drops) while its three workers run
the step: each worker ran it and keeps its answer, but the answers sent over the dead links are lost.
Once the links are back, every lost seat is asked again and answered from what its worker kept, so all
three workers are paid, and none is booked a no-show for the submitter's own absence."""

from __future__ import annotations

import os
import time

import pytest

from mesh.cli.local import LocalMesh

from ..conftest import wait_for
from .harness import http, node_env, port_of, read_entries, start_nodes, tree_of
from .links import LinkCutter
from .test_links import linked

pytestmark = [pytest.mark.mesh, pytest.mark.chaos, pytest.mark.timeout(300)]

BUSY = "import time\nt = time.time()\nx = 0\nwhile time.time() - t < 4:\n    x += 1\noutput = {'v': 7}"


def test_workers_whose_answers_were_lost_with_the_submitters_links_are_asked_again_and_all_paid(tmp_path):
    why = LinkCutter.unavailable()
    if why:
        pytest.skip(f"links cannot be cut here: {why}")
    cutter = LinkCutter(f"s{os.getpid()}")
    # --down-after 8: each side calls the other down after 8 s of silence instead of 20 (the same code)
    mesh = LocalMesh(tmp_path / "mesh", 4, lambda i: ["--no-model", "--no-scrape", "--down-after", "8"])
    for n in mesh.nodes:
        n.env = node_env()
    try:
        cutter.open()
        start_nodes(mesh, cutter, timeout=120)
        sub, workers = mesh.nodes[0], mesh.nodes[1:]
        api = (sub.api, sub.client.token)
        code, made = http(api, "POST", "/jobs", {"job": {"steps": [
            {"id": "a", "kind": "python", "params": {"code": BUSY}}]}, "redundancy": 3})
        assert code == 201, made
        job = made["job_id"]

        def asked() -> bool:
            c, rep = http(api, "GET", f"/jobs/{job}", timeout=5)
            return c == 200 and len(rep["steps"]["a"].get("replicas", [])) == 3

        wait_for(asked, 30, "the step's three replicas to be asked")
        cutter.cut(0, tree_of(sub), port_of(sub.listen), sub.api_port, [port_of(w.listen) for w in workers])
        wait_for(lambda: not any(linked(mesh, 0, i) for i in (1, 2, 3)), 60,
                 "the submitter to call its workers down")  # they answered (4 s) into the dead links meanwhile
        cutter.heal(0)
        t0 = time.monotonic()
        rep = wait_for(lambda: (r := http(api, "GET", f"/jobs/{job}?wait=5", timeout=15)[1])["status"] != "running"
                       and r, 120, "the job to end once the links are back")
        took = time.monotonic() - t0
        assert rep["status"] == "done" and rep["steps"]["a"]["output"] == {"v": 7}, rep
        replicas = {r["node"]: r for r in rep["steps"]["a"]["replicas"]}
        ids = {w.node_id for w in workers}
        assert set(replicas) == ids, "a lost seat went to someone else"
        assert all(replicas[n].get("agreed") and replicas[n].get("credit") for n in ids), replicas
        paid = {peer for kind, j, _, peer, _ in read_entries(sub.home) if kind == "paid" and j == job}
        assert paid == ids, f"paid {len(paid)} of the 3 workers that ran the step"
        print(f"links back: the job ended {took:.1f} s later, all 3 workers paid")
    finally:
        mesh.stop()
        left = cutter.close()
    assert not left, f"the cutter's chain or cgroups were left behind: {left}"
