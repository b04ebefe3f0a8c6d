"""Ledger heads a node keeps for its peers (mesh/node/heldheads.py): only an owner's own signature, never
a lower count, one per MIN_GAP_S, a bounded number of owners, and they survive a restart. The whole
path, a rewritten ledger caught by `mesh ledger verify --peers`, is in tests/security/test_economy.py."""

from __future__ import annotations

import pytest

from ledger.heads import Head
from mesh.node import heldheads
from mesh.node.heldheads import KEEP_PER_OWNER, MIN_GAP_S, HeldHeads
from mesh.wire.identity import Identity
from mesh.wire.messages import LedgerHead

pytestmark = pytest.mark.timeout(30)


def head(owner: Identity, n: int, signer: Identity | None = None) -> LedgerHead:
    h = Head.sign((signer or owner).sign, owner.node_id, n, f"{n:064x}")
    return LedgerHead(h.n, h.hash, h.sig)


def test_an_owners_heads_are_kept_in_order_the_last_few_only(tmp_path):
    owner, held = Identity.generate(), HeldHeads(tmp_path)
    for i in range(KEEP_PER_OWNER + 2):
        assert held.take(owner.public_key, head(owner, 64 * i), i * MIN_GAP_S) == ""
    assert [h.n for h in held.of(owner.public_key)] == [64 * i for i in range(2, KEEP_PER_OWNER + 2)]


def test_a_head_signed_by_another_key_a_lower_count_or_too_soon_is_refused(tmp_path):
    owner, mallory, held = Identity.generate(), Identity.generate(), HeldHeads(tmp_path)
    assert held.take(owner.public_key, head(owner, 10, signer=mallory), 0.0) == "bad-head"
    assert held.take(owner.public_key, head(owner, 10), 0.0) == ""
    assert held.take(owner.public_key, head(owner, 11), 1.0) == "head-rate"
    assert held.take(owner.public_key, head(owner, 5), MIN_GAP_S) == "head-regressed"  # a history cut short
    rewritten = LedgerHead(10, "f" * 64, head(owner, 10).sig)
    assert held.take(owner.public_key, rewritten, 2 * MIN_GAP_S) == "head-regressed"
    assert held.take(owner.public_key, head(owner, 10), 3 * MIN_GAP_S) == ""  # the same again: nothing new
    assert [h.n for h in held.of(owner.public_key)] == [10]
    # a key's heads are only its own: mallory's name on the owner's head does not verify
    assert held.take(mallory.public_key, head(owner, 20), 0.0) == "bad-head"


def test_owners_are_bounded_and_the_heads_survive_a_restart(tmp_path, monkeypatch):
    monkeypatch.setattr(heldheads, "MAX_OWNERS", 5)
    held = HeldHeads(tmp_path)
    owners = [Identity.generate() for _ in range(8)]
    for o in owners:
        held.take(o.public_key, head(o, 3), 0.0)
    assert len(held.owners) == 5 and not held.of(owners[0].public_key)
    held.save()
    again = HeldHeads(tmp_path)
    again.load()
    assert again.of(owners[-1].public_key) == held.of(owners[-1].public_key)
    assert (tmp_path / heldheads.HELD_FILE).stat().st_mode & 0o077 == 0


def test_a_damaged_file_costs_only_what_does_not_parse(tmp_path):
    owner = Identity.generate()
    good = head(owner, 7)
    (tmp_path / heldheads.HELD_FILE).write_text(
        '{"%s": [[7, "%s", "%s"]], "zz": [[1, "x", "y"]], "%s": [[1, "bad", "sig"]]}'
        % (owner.public_key.hex(), good.hash, good.sig, "ab" * 32))
    held = HeldHeads(tmp_path)
    held.load()
    assert held.of(owner.public_key) == [good] and list(held.owners) == [owner.public_key.hex()]
    (tmp_path / heldheads.HELD_FILE).write_text("not json")
    HeldHeads(tmp_path).load()


def test_keys_from_one_network_prefix_cannot_push_other_owners_heads_out(tmp_path, monkeypatch):
    """1,091 fresh keys, each giving one head, pushed every other owner out of the 1,024 a holder keeps:
    an owner about to rewrite its ledger could first erase what its peers held of it (found by this
    session's p2p attacker). Now one network prefix holds at most PER_PREFIX owners here; past that, its
    least recently updated owner goes, never another prefix's."""
    monkeypatch.setattr(heldheads, "MAX_OWNERS", 40)
    held = HeldHeads(tmp_path)
    honest = [Identity.generate() for _ in range(5)]
    for i, o in enumerate(honest):
        assert held.take(o.public_key, head(o, 3), 0.0, f"198.51.{i}") == ""
    sybils = [Identity.generate(bits=0) for _ in range(100)]
    for s in sybils:
        held.take(s.public_key, head(s, 1), 0.0, "203.0.113")
    assert all(held.of(o.public_key) for o in honest)
    assert sum(1 for s in sybils if held.of(s.public_key)) == heldheads.PER_PREFIX
    assert held.of(sybils[-1].public_key)  # the newest of that prefix kept, its oldest gone
