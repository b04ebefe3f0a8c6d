"""Discovery through the Kademlia DHT on real nodes: with gossip allowed to link no more than one peer
(--max-links 1), a node still finds workers for its jobs by looking up who provides what in the DHT,
and every node's record and offers are in it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mesh.cli.local import LocalMesh

from ..conftest import cli_json, wait_for, write_job

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180)]
PY_STEP = {"id": "sum", "kind": "python", "params": {"code": "output = sum(range(10)) * 2"}}


def test_workers_are_found_in_the_dht_when_gossip_links_one_peer(make_mesh, tmp_path: Path):
    t0 = time.monotonic()
    mesh = make_mesh(5, lambda i: ["--no-model", "--no-scrape", "--max-links", "1"])  # ready = all linked
    formed = time.monotonic() - t0
    last = mesh.nodes[4]
    st = cli_json("status", "--home", str(last.home))
    assert st["discovery"]["routing_table"] >= 1 and "python" in st["discovery"]["capabilities"]
    assert not st["discovery"]["refused"]
    rep = cli_json("submit", write_job(tmp_path / "job.json", [PY_STEP]), "--home", str(last.home),
                   "--redundancy", "3", "--wait")
    assert rep["status"] == "done" and rep["steps"]["sum"]["output"] == 90
    assert len({r["node"] for r in rep["steps"]["sum"]["replicas"] if r["agreed"]}) == 3
    print(f"5 nodes with --max-links 1 linked up through the DHT in {formed:.1f} s")


def test_gossip_alone_links_no_more_than_max_links(tmp_path: Path):
    """The control: plain TCP has no DHT, so with --max-links 1 the last node stays linked to its
    bootstrap alone while the heartbeats pass records around (which is what made the test above pass)."""
    mesh = LocalMesh(tmp_path / "tcp", 5, lambda i: ["--no-model", "--no-scrape", "--transport", "tcp",
                                                     "--max-links", "1"])
    try:
        mesh.start()
        last = mesh.nodes[4]
        wait_for(lambda: linked(last) == 1, 60, "the last node to link its bootstrap")
        counts = []
        deadline = time.monotonic() + 3 * 2.0 + 2  # three heartbeats of gossip
        while time.monotonic() < deadline:
            counts.append(linked(last))
            time.sleep(0.5)
        assert max(counts) == 1, counts
        known = len(cli_json("status", "--home", str(last.home))["peers"])
        assert known >= 2, "gossip did not even pass records around: the control shows nothing"
    finally:
        mesh.stop()


def linked(node) -> int:
    try:
        st = cli_json("status", "--home", str(node.home), timeout=20)
    except AssertionError:
        return 0
    return sum(p["connected"] and p["state"] == "up" for p in st["peers"])
