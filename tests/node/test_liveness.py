"""Liveness on a real mesh: a clean leave is seen as 'left', a crash as 'down', and a restarted node
(same key, new port) comes back 'up' at the address in its new signed record."""

from __future__ import annotations

import signal

import pytest

from ..conftest import cli_json, wait_for

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120)]


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
