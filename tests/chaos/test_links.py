"""A cut cuts: with node2 of three cut off (tests/chaos/links.py), nobody can dial its peer port, the others
call it down and it calls them down, while its API still answers; after the heal the mesh links up again."""

from __future__ import annotations

import os
import socket
import time

import pytest

from mesh.cli.local import LocalMesh

from ..conftest import wait_for
from .harness import http, node_env, port_of, start_nodes, tree_of
from .links import LinkCutter

pytestmark = [pytest.mark.mesh, pytest.mark.chaos, pytest.mark.timeout(300)]


def linked(mesh: LocalMesh, a: int, b: int) -> bool:
    node = mesh.nodes[a]
    code, st = http((node.api, node.client.token), "GET", "/status", timeout=5)
    assert code == 200, st
    peer = next((p for p in st["peers"] if p["node"] == mesh.nodes[b].node_id), None)
    return bool(peer and peer["state"] == "up" and peer["connected"])


def dial_fails(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except TimeoutError:  # the SYN was dropped: no answer at all (a refusal would be a RST)
        return True
    return False


def test_a_cut_node_is_cut_off_both_ways_and_heals(tmp_path):
    why = LinkCutter.unavailable()
    if why:
        pytest.skip(f"links cannot be cut here: {why}")
    cutter = LinkCutter(f"t{os.getpid()}")
    # --down-after 8: each side calls the other down after 8 s of silence instead of 20 (the same code)
    mesh = LocalMesh(tmp_path / "mesh", 3, lambda i: ["--no-model", "--down-after", "8"])
    for n in mesh.nodes:
        n.env = node_env()
    try:
        cutter.open()
        start_nodes(mesh, cutter, timeout=120)
        victim = mesh.nodes[2]
        others = [port_of(n.listen) for n in mesh.nodes[:2]]
        cutter.cut(2, tree_of(victim), port_of(victim.listen), victim.api_port, others)
        t0 = time.monotonic()
        assert dial_fails(port_of(victim.listen)), "a dial to the cut node's peer port was answered"
        # the same port on another loopback address (another test's node) is not cut
        with socket.create_server(("127.0.55.1", port_of(victim.listen))):
            assert not dial_fails(port_of(victim.listen), "127.0.55.1"), "a cut dropped another address's SYN"
        wait_for(lambda: not any(linked(mesh, a, b) for a, b in ((0, 2), (1, 2), (2, 0), (2, 1))), 60,
                 "node2 and the others to call each other down")
        took = time.monotonic() - t0
        dropped = cutter.dropped(2)
        assert dropped > 0, "the cut's rules dropped nothing"
        assert linked(mesh, 0, 1) and linked(mesh, 1, 0), "the cut took nodes 0 and 1 apart too"
        print(f"node2 cut: called down both ways after {took:.1f} s; {dropped} packets dropped")
        cutter.heal(2)
        took = mesh.wait_ready(90)
        print(f"healed: the mesh linked up again in {took:.1f} s")
    finally:
        mesh.stop()
        left = cutter.close()
    assert not left, f"the cutter's chain or cgroups were left behind: {left}"
