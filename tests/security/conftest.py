"""One real 4-node mesh (node0 submits, nodes 1-3 work; no model) shared by the tests of a module that do
not need a fresh one. Each module gets its own, stopped (process groups, then leftovers) at its end."""

from __future__ import annotations

import psutil
import pytest

from mesh.cli.local import LocalMesh

from ..conftest import tree_pids


def remember(procs: dict, node) -> None:
    for pid in tree_pids(node.proc.pid):
        try:
            procs.setdefault(pid, psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass


def local_mesh(tmp_path_factory, extra: list[str], nodes: int = 4):
    """A loopback mesh of `nodes` nodes without a model, every process of it stopped by pid after."""
    mesh = LocalMesh(tmp_path_factory.mktemp("secmesh"), nodes, lambda i: ["--no-model", *extra])
    procs: dict[int, psutil.Process] = {}
    try:
        mesh.start()
        for node in mesh.nodes:
            node.wait_started(60)
            remember(procs, node)
        mesh.wait_ready(timeout=120)
        for node in mesh.nodes:  # the actors are up by now: remember them too
            remember(procs, node)
        yield mesh
    finally:
        mesh.stop()
        for proc in procs.values():  # psutil refuses to signal a pid that was reused since
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture(scope="module")
def mesh4(tmp_path_factory):
    """Nodes on their default transport, libp2p."""
    yield from local_mesh(tmp_path_factory, [])


@pytest.fixture(scope="module")
def tcp_mesh4(tmp_path_factory):
    """Nodes on plain TCP: the gateway's own limits, reached by raw sockets without a Noise handshake."""
    yield from local_mesh(tmp_path_factory, ["--transport", "tcp"])
