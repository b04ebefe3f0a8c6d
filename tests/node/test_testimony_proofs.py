"""The node's side of outvote proofs (mesh.node.testimony.Testimonies.proof), with real sealed answers:
what a linked peer's `outvoted` message may cost and change. Each refusal is counted by its reason."""

from __future__ import annotations

import dataclasses

import pytest

from mesh.core.policy import Reputations
from mesh.node.testimony import MAX_PREFIXES
from mesh.node.testimony import Testimonies as NodeTestimony  # (not named Test*: pytest would collect it)
from mesh.wire.messages import Outvoted

from ..wire.test_proof import NET, T0, W1, W2, W3, Link

pytestmark = pytest.mark.timeout(30)


def node_with(trusted: list[str]) -> tuple[NodeTestimony, list[str]]:
    """A node that saw each of `trusted` do 6 verified results (first-hand, on prefixes of their own)."""
    own = Reputations()
    for peer in trusted:
        for k in range(6):
            own.fold("agreed", peer, T0 - 10_000 + k, None)
    counted: list[str] = []
    t = NodeTestimony("me", own, counted.append)
    t.shared.prefix_of = {p: f"p{i}" for i, p in enumerate(trusted)}
    return t, counted


def test_a_proof_counts_only_about_a_known_worker_and_by_trusted_signers():
    accused, majority = Link().honest()  # W1 answered wrong; W2, W3 and W4 agreed
    proof = Outvoted(accused, majority)
    accused_id, w2, w3 = W1.node_id, W2.node_id, W3.node_id

    stranger, counted = node_with([])  # knows the accused, trusts nobody in the majority
    assert not stranger.proof("peer", proof, NET, {accused_id}, T0)
    assert counted == ["proof-untrusted"] and stranger.shared.proven == {}

    node, counted = node_with([w2, w3])
    assert not node.proof("peer", proof, NET, set(), T0)  # an id not in its table: memory it need not spend
    assert counted == ["proof-unknown-worker"]
    forged = Outvoted(accused, [dataclasses.replace(majority[0], sig=majority[1].sig), *majority[1:]])
    assert not node.proof("peer", forged, NET, {accused_id}, T0)
    assert counted[-1] == "bad-proof" and node.shared.proven == {}
    assert not node.proof("peer", proof, "another-net", {accused_id}, T0)
    assert counted[-1] == "bad-proof"

    assert node.proof("peer", proof, NET, {accused_id}, T0)  # the same proof, from anyone
    assert list(node.shared.proven) == [accused_id] and node.proofs == 1
    assert node.reported() == [accused_id]
    assert not node.proof("peer", proof, NET, {accused_id}, T0)  # held: not kept (nor passed on) twice
    assert node.status()["proven"] == {accused_id[:12]: 1}


def test_an_issuers_prefix_is_kept_after_it_hangs_up():
    """Only linked peers' prefixes were known: two ids on one machine that hung up before the receiver
    weighed its issuers again each counted as a prefix of its own (found by this session's reputation
    attacker). The prefix last observed stays; the oldest go past the peer table's size."""
    node = NodeTestimony("R", Reputations(), lambda reason: None)
    node.refresh({"S1": "203.0.113", "S2": "203.0.113", "H": "198.51.100"}, T0)
    node.refresh({"H": "198.51.100"}, T0 + 60_000)  # S1 and S2 hung up
    assert node.shared.prefix_of == {"S1": "203.0.113", "S2": "203.0.113", "H": "198.51.100"}
    node.refresh({"S1": "192.0.2"}, T0 + 120_000)  # back from elsewhere: its newest prefix
    assert node.shared.prefix_of["S1"] == "192.0.2"
    node.refresh({f"n{i}": "10.0.0" for i in range(MAX_PREFIXES)}, T0 + 180_000)
    assert len(node.shared.prefix_of) == MAX_PREFIXES and "S2" not in node.shared.prefix_of
