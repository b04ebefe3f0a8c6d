"""Ledger heads a node keeps for its peers (mesh/node/heldheads.py): only an owner's own signature, never
a lower count, one per MIN_GAP_S, a bounded number of owners, and they survive a restart. The whole
path, a rewritten ledger caught by `mesh ledger verify --peers`, is in tests/security/test_economy.py."""

from __future__ import annotations

import pytest

from ledger.heads import Head, against_chain
from mesh.node import heldheads
from mesh.node.heldheads import KEEP_PER_OWNER, MIN_GAP_S, HeldHeads
from mesh.wire.identity import Identity
from mesh.wire.messages import LedgerHead

pytestmark = pytest.mark.timeout(30)


def head(owner: Identity, n: int, signer: Identity | None = None) -> LedgerHead:
    h = Head.sign((signer or owner).sign, owner.node_id, n, f"{n:064x}")
    return LedgerHead(h.n, h.hash, h.sig)


def test_an_owners_first_head_stays_and_the_rest_spread_over_its_history(tmp_path):
    owner, held = Identity.generate(), HeldHeads(tmp_path)
    for i in range(40):
        assert held.take(owner.public_key, head(owner, 64 * i), i * MIN_GAP_S) == ""
    kept = [h.n for h in held.of(owner.public_key)]
    assert len(kept) == KEEP_PER_OWNER and kept[0] == 0 and kept[-1] == 64 * 39 and kept == sorted(kept)
    assert kept[1] < 64 * 30  # not just the newest: what is kept reaches back


def test_a_burst_of_new_heads_cannot_wash_out_the_one_a_rewrite_contradicts(tmp_path):
    """Found by this project's attack round on held heads: whoever holds an owner's key rewrote its ledger
    from entry 10 on and sent four new heads 5 s apart; the holder kept the last four, so the head at 10
    that the rewrite contradicts was gone in 21 s and the rewritten ledger matched everything held."""
    owner, held = Identity.generate(), HeldHeads(tmp_path)
    assert held.take(owner.public_key, head(owner, 10), 0.0) == ""
    for i, n in enumerate((11, 12, 13, 14, 1000, 2000, 3000, 4000, 5000), start=1):
        assert held.take(owner.public_key, LedgerHead(*_signed(owner, n, "e" * 64)), i * MIN_GAP_S) == ""
    assert held.of(owner.public_key)[0] == head(owner, 10)


def _signed(owner: Identity, n: int, h: str) -> tuple[int, str, str]:
    signed = Head.sign(owner.sign, owner.node_id, n, h)
    return signed.n, signed.hash, signed.sig


def test_a_head_signed_by_another_key_or_too_soon_is_refused_and_one_off_the_line_is_kept_apart(tmp_path):
    owner, mallory, held = Identity.generate(), Identity.generate(), HeldHeads(tmp_path)
    assert held.take(owner.public_key, head(owner, 10, signer=mallory), 0.0) == "bad-head"
    assert held.take(owner.public_key, head(owner, 10), 0.0) == ""
    assert held.take(owner.public_key, head(owner, 11), 1.0) == "head-rate"
    forged = LedgerHead(10, "f" * 64, head(owner, 10).sig)  # another hash under the old signature
    assert held.take(owner.public_key, forged, MIN_GAP_S) == "bad-head"
    assert held.take(owner.public_key, head(owner, 10), 2 * MIN_GAP_S) == ""  # the same again: nothing new
    assert held.of(owner.public_key) == [head(owner, 10)]
    # signed by the owner's key, but off its line: a lower count (a history cut short), then another hash
    # at a count held (two histories): kept apart and handed back, the contradiction first
    late = head(owner, 5)
    assert held.take(owner.public_key, late, 3 * MIN_GAP_S) == "head-conflict"
    assert held.of(owner.public_key) == [head(owner, 10), late]
    rewritten = LedgerHead(*_signed(owner, 10, "f" * 64))
    assert held.take(owner.public_key, rewritten, 4 * MIN_GAP_S) == "head-conflict"
    assert held.of(owner.public_key) == [head(owner, 10), rewritten]
    assert held.take(owner.public_key, head(owner, 6), 5 * MIN_GAP_S) == "head-conflict"
    assert held.of(owner.public_key)[-1] == rewritten  # a mere late head does not replace a contradiction
    assert against_chain(Head(rewritten.n, rewritten.hash, rewritten.sig), {10: "%064x" % 10}, 12)
    # and even n = 2**53 - 1 locks nobody out quietly: the owner's next heads are kept apart and shown
    assert held.take(owner.public_key, head(owner, 2**53 - 1), 6 * MIN_GAP_S) == ""
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
    """1,091 fresh keys, each giving one head, pushed every other owner out of the 1,024 a holder keeps (found
    by a p2p attacker); then 16 fresh keys on an honest owner's own prefix pushed it out in 2.6 s (found by
    this project's attack round on held heads: the same LAN, carrier-grade NAT or cloud /24). Now a prefix
    past its PER_PREFIX share is refused new owners unless one of its own has been silent for STALE_S, and
    past MAX_OWNERS the prefix holding the most gives one up."""
    monkeypatch.setattr(heldheads, "MAX_OWNERS", 40)
    held = HeldHeads(tmp_path)
    honest = [Identity.generate() for _ in range(5)]
    for i, o in enumerate(honest):
        assert held.take(o.public_key, head(o, 3), 0.0, f"198.51.{i}", wall=1000.0) == ""
    neighbour = Identity.generate()  # an honest owner on the sybils' prefix, there first
    assert held.take(neighbour.public_key, head(neighbour, 3), 0.0, "203.0.113", wall=1000.0) == ""
    sybils = [Identity.generate(bits=0) for _ in range(100)]
    said = [held.take(s.public_key, head(s, 1), 0.0, "203.0.113", wall=1001.0) for s in sybils]
    assert said.count("") == heldheads.PER_PREFIX - 1 and said.count("head-full") == 100 - said.count("")
    assert all(held.of(o.public_key) for o in (*honest, neighbour))
    # more prefixes than room: the biggest gives up its least recently updated, never a lone honest owner
    others = [Identity.generate(bits=0) for _ in range(60)]
    for i, s in enumerate(others):
        held.take(s.public_key, head(s, 1), 0.0, f"192.0.{i // 16}", wall=1002.0)
    assert len(held.owners) == 40 and all(held.of(o.public_key) for o in honest)
    # an owner silent past STALE_S may give its place to a newcomer of its prefix
    late = Identity.generate()
    assert held.take(late.public_key, head(late, 1), 0.0, "203.0.113", wall=1001.0 + heldheads.STALE_S) == ""
    assert held.of(late.public_key) and not held.of(neighbour.public_key)


def test_prefixes_and_kept_apart_heads_survive_a_restart_and_the_older_file_still_loads(tmp_path):
    owner, held = Identity.generate(), HeldHeads(tmp_path)
    held.take(owner.public_key, head(owner, 10), 0.0, "198.51.100", wall=5.0)
    held.take(owner.public_key, head(owner, 4), MIN_GAP_S, "198.51.100", wall=10.0)
    held.save()
    again = HeldHeads(tmp_path)
    again.load()
    assert again.of(owner.public_key) == [head(owner, 10), head(owner, 4)]
    assert again.prefix[owner.public_key.hex()] == "198.51.100" and again.seen[owner.public_key.hex()] == 10.0
    old = head(owner, 7)  # the form before: owner → [[n, hash, sig], ...]
    (tmp_path / heldheads.HELD_FILE).write_text('{"%s": [[7, "%s", "%s"]]}' % (owner.public_key.hex(), old.hash, old.sig))
    older = HeldHeads(tmp_path)
    older.load()
    assert older.of(owner.public_key) == [old]
