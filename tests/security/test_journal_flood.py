"""The job journal is not a stranger's disk: a peer with a valid key that sends a node results it never
asked for (each as large as a frame allows) must not get them written to the node's journal — only an
answer to a request the node has out is an input of its core. Nor may a peer that links and unlinks
over and over grow the journal with losses of nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mesh.wire.canonical import digest
from mesh.wire.messages import StepResult, Work

from ..conftest import wait_for
from .hostile import HostilePeer, rejected, wait_rejection

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180)]
RESULTS = 20
BIG = "x" * (600 << 10)  # under the 1 MiB frame cap once signed


def journal_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in home.glob("journal.db*"))


def key_of(node) -> bytes:
    return bytes.fromhex(node.client.request("GET", "/status")["key"])


def test_unasked_results_and_empty_losses_are_not_journaled(make_mesh):
    mesh = make_mesh(2, lambda i: ["--no-model"])
    node = mesh.nodes[0]
    before_bytes, before = journal_bytes(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        evil.handshake(key_of(node))
        for i in range(RESULTS):
            out = [BIG, i]
            evil.send(evil.seal("result", key_of(node), StepResult(f"job{i:04d}", "s", True, out, digest(out),
                                                                   "python:bwrap", Work())))
        wait_rejection(node, "unexpected-result", before, evil.node_id[:12])
        wait_for(lambda: rejected(node).get("unexpected-result", 0) - before.get("unexpected-result", 0) >= RESULTS,
                 60, "every unasked result refused")
    for _ in range(10):  # link, introduce itself, go: a loss of a peer that holds nothing of ours
        with HostilePeer(node.listen) as again:
            again.handshake(key_of(node))
    grown = journal_bytes(node.home) - before_bytes
    assert grown < 256 << 10, f"the journal grew by {grown} bytes for {RESULTS} unasked results of 600 KiB"
    assert os.path.exists(node.home / "journal.db")
