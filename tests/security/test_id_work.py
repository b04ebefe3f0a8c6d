"""Against real nodes of a network demanding 16 bits of work per id: a stranger whose id lacks it is
refused at its hello (counted as weak-id, logged, its link closed, never a peer, its work never run), the
same stranger with the work done is taken, and the nodes proved their own ids' work at their first start.
The link used to stay open, counted as a proven peer's: 519 such links (one key, no work, a hello every
30 s) kept every newcomer out of a node on the TCP transport (this project's attack round, 2026-12-06)."""

from __future__ import annotations

import pytest

from mesh.wire.identity import WORK_FILE, Identity, load
from mesh.wire.idwork import work_bits

from .hostile import HostilePeer, ledger_count, peer_ids, rejected, status, wait_rejection

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120)]


def test_an_id_without_its_work_is_refused_and_one_with_it_is_taken(make_mesh, monkeypatch):
    monkeypatch.setenv("MESH_ID_BITS", "16")  # inherited by the nodes started below
    mesh = make_mesh(2, lambda i: ["--no-model"])
    node = mesh.nodes[1]
    me = bytes.fromhex(status(node)["key"])
    for n in mesh.nodes:  # each node found its own work at start, kept it, and its peers took its record
        assert (n.home / WORK_FILE).exists() and load(n.home).work_bits() >= 16
    entries, before = ledger_count(node.home), rejected(node)
    weak = HostilePeer(node.listen, identity=_weak())
    with weak:
        weak.send(weak.hello_frame(me))
        wait_rejection(node, "weak-id", before, weak.label)
        assert weak.closed_by_node(10.0), "the link of a key without its work stayed open"
    assert weak.node_id not in peer_ids(node)
    assert ledger_count(node.home) == entries
    with HostilePeer(node.listen) as strong:  # a fresh key, its 16 bits found (about 0.1 s here)
        assert strong.identity.work_bits() >= 16
        strong.handshake(me)
        assert strong.node_id in peer_ids(node)


def _weak() -> Identity:
    """A key with 8 bits of work, short of the 16 asked."""
    while True:
        ident = Identity.generate(bits=8)
        if work_bits(ident.public_key, ident.work) < 16:
            return ident
