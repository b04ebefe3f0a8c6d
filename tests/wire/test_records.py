"""Signed peer records and the peer table: verified before use, newest wins, expired ones forgotten."""

from __future__ import annotations

import dataclasses

import pytest

from mesh.errors import Rejected
from mesh.node.peers import PeerTable
from mesh.wire.identity import Identity
from mesh.wire.messages import Offer, PeerRecord
from mesh.wire.records import MAX_FETCH_MODELS, MAX_STEPS, RECORD_TTL_MS, check_record, make_record
from mesh.wire.schema import dump, parse

pytestmark = pytest.mark.timeout(30)
NET = "homemesh-test"
T0 = 1_700_000_000_000
ME, ALICE, MALLORY = (Identity.from_seed(bytes([i]) * 32) for i in (1, 2, 3))


def rec(who: Identity = ALICE, addr: str = "10.0.0.2:4750", at: int = T0, **kw):
    return make_record(who, NET, addr, kw.pop("kinds", ["python"]), kw.pop("models", []), True, at, **kw)


def test_honest_record_verifies():
    assert check_record(rec(), NET, T0) == ""


@pytest.mark.parametrize("change", [
    {"addr": "6.6.6.6:666"}, {"kinds": ["python", "llm"]}, {"models": ["f" * 64]}, {"sandbox": False},
    {"expires": T0 + 10 * RECORD_TTL_MS}, {"issued": T0 + 1}, {"alt": ["6.6.6.6:666"]}, {"fetch_models": 1 << 30},
    {"offer": Offer(paused=True)}, {"offer": Offer(steps=64, per_peer=64)},
])
def test_any_edit_by_a_relay_breaks_the_signature(change):
    forged = dataclasses.replace(rec(), **change)
    assert check_record(forged, NET, T0) == "bad-record"


def test_a_record_signed_for_another_network_or_by_another_key_is_refused():
    assert check_record(rec(), "other-net", T0) == "bad-record"
    stolen = dataclasses.replace(rec(MALLORY), key=ALICE.public_key.hex(), work=ALICE.work)
    assert check_record(stolen, NET, T0) == "bad-record"


def test_expired_future_and_version_checks():
    assert check_record(rec(), NET, T0 + RECORD_TTL_MS) == "expired-record"
    assert check_record(rec(at=T0 + 10 * 60_000), NET, T0) == "bad-record"
    wrong = rec()
    wrong = dataclasses.replace(wrong, version=99)
    wrong.sig = ALICE.sign(__import__("mesh.wire.records", fromlist=["record_bytes"]).record_bytes(NET, wrong)).hex()
    assert check_record(wrong, NET, T0) == "bad-version"
    assert check_record(rec(addr="no-port"), NET, T0) == "bad-record"


FORGED_LINE = "\n2099-01-01 00:00:00,000 WARNING mesh.node.gateway FORGED"


@pytest.mark.parametrize("fields", [
    {"addr": "evil" + FORGED_LINE + "\x1b[31m:4750"}, {"addr": "host name:4750"}, {"addr": "h\u202e:4750"},
    {"kinds": ["python" + FORGED_LINE + "\x1b]0;pwned\x07"]}, {"kinds": ["Python"]}, {"kinds": ["k" * 33]},
    {"models": ["not-a-digest"]}, {"models": ["F" * 64]}, {"alt": ["ok:1", "bad\n:2"]},
])
def test_a_record_whose_address_kinds_or_models_carry_more_than_names_is_refused_even_signed(fields):
    """A peer's record is logged and shown in `mesh status` (its address, its kinds): a newline in it
    forged a log line, an ESC reached the operator's terminal. Names and digests only, signed or not."""
    assert check_record(rec(addr="node-7.example.org:4750", kinds=["python", "ask-model"], models=["a" * 64]),
                        NET, T0) == ""
    assert check_record(rec(addr="[::1]:4750"), NET, T0) == ""
    fields = dict(fields)
    assert check_record(rec(addr=fields.pop("addr", "10.0.0.2:4750"), **fields), NET, T0) == "bad-record"


@pytest.mark.parametrize("allowance", [-1, MAX_FETCH_MODELS + 1, 1 << 80])
def test_a_fetch_allowance_out_of_bounds_is_refused_even_signed_by_its_own_key(allowance):
    """A peer advertising a negative or absurd --fetch-models allowance (to be offered every model's steps,
    or to break a comparison) is refused like any malformed record; a wire value of another type never
    becomes a record."""
    assert check_record(rec(fetch_models=MAX_FETCH_MODELS), NET, T0) == ""
    assert check_record(rec(fetch_models=allowance), NET, T0) == "bad-record"
    for wrong in (True, "1000000", 1e9, None):
        wire = {**dump(rec()), "fetch_models": wrong}
        with pytest.raises(Rejected, match="fetch_models"):
            parse(PeerRecord, wire)


def test_peer_table_keeps_the_newest_record_and_follows_address_changes():
    table = PeerTable(ME.public_key, NET)
    peer, why = table.learn(rec(), T0)
    assert why == "" and peer is not None and peer.addr == "10.0.0.2:4750"
    assert table.learn(rec(), T0) == (None, "")  # same record again: nothing new
    peer.next_dial, peer.failures = 1e12, 5
    moved, _ = table.learn(rec(addr="10.0.0.9:4750", at=T0 + 1000), T0 + 1000)
    assert moved is peer and peer.addr == "10.0.0.9:4750"
    assert peer.next_dial == 0.0 and peer.failures == 0  # dial the new address at once
    assert table.learn(rec(addr="10.0.0.2:4750", at=T0 + 500), T0 + 1000) == (None, "")  # older: ignored
    assert peer.addr == "10.0.0.9:4750"


C1 = "/ip4/198.18.0.10/tcp/4750/p2p/12D3KooWJnfdYWLjjt8zQc5ALYeMoPvCejY3mwbqG8WAE7hg6N4h/p2p-circuit/p2p/" \
     "12D3KooWKaqd6GLmus7vcb5v1Zo1gP3wvYvMy6Mqy1CJvwWDyooj"
C2 = C1.replace("198.18.0.10/tcp/4750", "198.18.0.11/tcp/4752")


def test_alternative_addresses_are_signed_bounded_and_checked_like_the_first():
    assert check_record(rec(addr=C1, alt=[C2]), NET, T0) == ""
    dropped = dataclasses.replace(rec(addr=C1, alt=[C2]), alt=[])  # a relay hides its rival
    assert check_record(dropped, NET, T0) == "bad-record"
    assert check_record(rec(addr=C1, alt=[C2, C2, C2]), NET, T0) == "bad-record"  # more than MAX_ALT
    assert check_record(rec(addr=C1, alt=["no-port"]), NET, T0) == "bad-record"
    assert check_record(rec(addr=C1, alt=[C2 + "x" * 300]), NET, T0) == "bad-record"


def test_a_failed_dial_moves_to_the_next_address_and_backs_off_once_all_failed():
    table = PeerTable(ME.public_key, NET)
    peer, _ = table.learn(rec(addr=C1, alt=[C2]), T0)
    assert peer.addrs == [C1, C2] and peer.addr == C1
    peer.dial_failed(C1, now=100.0, jitter=1.0)
    assert peer.addr == C2 and peer.next_dial == 100.0  # the other relay's circuit, at once
    peer.dial_failed(C2, now=101.0, jitter=1.0)
    assert peer.addr == C1 and peer.next_dial == 103.0  # both failed: back off (2 s after one round)
    peer.dial_failed("10.0.0.2:4750", now=104.0, jitter=1.0)  # an address it no longer names
    assert peer.addr == C1 and peer.next_dial == 103.0
    table.learn(rec(addr=C2, at=T0 + 1000), T0 + 1000)  # a relay lost: its new record names one circuit
    assert peer.addrs == [C2] and peer.addr == C2 and peer.next_dial == 0.0


def test_of_two_nodes_that_learn_of_each_other_the_smaller_key_dials_first():
    """One handshake per pair, not two; the larger key still dials if no link came in YIELD_S."""
    from mesh.node.peers import YIELD_S

    small, large = sorted((ME, ALICE), key=lambda i: i.public_key)
    at_small = PeerTable(small.public_key, NET).learn(rec(large), T0)[0]
    at_large = PeerTable(large.public_key, NET).learn(rec(small), T0)[0]
    now = at_large.since
    assert at_small.dials_first(small.public_key, now)
    assert not at_large.dials_first(large.public_key, now)
    assert not at_large.dials_first(large.public_key, now + YIELD_S - 0.1)
    assert at_large.dials_first(large.public_key, now + YIELD_S)


class Link:
    """A connection as `Peer.best_conn` sees one."""

    def __init__(self, label: str, kind: str = "direct", open: bool = True):
        self.label, self.kind, self.open = label, kind, open

    @property
    def outbound(self) -> bool:
        return self.label.startswith("out")


def test_both_ends_of_a_pair_send_on_the_link_the_smaller_key_opened():
    """Two links between a pair (both dialled at once): each end must pick the same one, or a frame on
    one overtakes a frame on the other."""
    from mesh.node.peers import Peer

    small, large = sorted((ME, ALICE), key=lambda i: i.public_key)
    at_small, at_large = Peer(large.public_key), Peer(small.public_key)
    at_small.conns = {Link("out:X"), Link("in:Y")}  # X: the smaller key dialled it
    at_large.conns = {Link("in:X"), Link("out:Y")}
    assert at_small.best_conn(small.public_key).label == "out:X"
    assert at_large.best_conn(large.public_key).label == "in:X"
    at_small.conns = {Link("out:X", "relayed"), Link("in:Y", "hole-punched")}  # direct before relayed
    at_large.conns = {Link("in:X", "relayed"), Link("out:Y", "hole-punched")}
    assert at_small.best_conn(small.public_key).label == "in:Y"
    assert at_large.best_conn(large.public_key).label == "out:Y"
    at_small.conns = {Link("out:X", open=False), Link("in:Y")}  # closed links are not picked
    assert at_small.best_conn(small.public_key).label == "in:Y"
    at_small.conns = set()
    assert at_small.best_conn(small.public_key) is None


def test_peer_table_refuses_forgeries_ignores_itself_and_forgets_expired_peers():
    table = PeerTable(ME.public_key, NET)
    assert table.learn(dataclasses.replace(rec(), addr="6.6.6.6:1"), T0) == (None, "bad-record")
    assert table.learn(rec(ME), T0) == (None, "")
    peer, _ = table.learn(rec(), T0)
    assert table.by_node(ALICE.node_id) is peer
    peer.state = "up"
    assert [r.key for r in table.records(T0)] == [ALICE.public_key.hex()]
    assert table.records(T0 + RECORD_TTL_MS) == []
    assert table.expire(T0 + RECORD_TTL_MS) == []  # still "up": liveness decides first
    peer.state = "down"
    assert table.expire(T0 + RECORD_TTL_MS) == [peer] and table.get(ALICE.public_key) is None


@pytest.mark.parametrize("offer", [
    Offer(steps=0), Offer(steps=MAX_STEPS + 1), Offer(per_peer=0), Offer(steps=2, per_peer=3),
    Offer(memory=-1), Offer(memory=1 << 60), Offer(cpu=-0.1), Offer(cpu=1.5),
])
def test_an_owners_offer_out_of_bounds_is_refused_even_signed_by_its_own_key(offer):
    """A record whose limits make no sense (no step slot, a requester's share above all of them, a CPU
    share past the machine) would mislead placement: refused, as `bad-offer`. A sane one verifies, and a
    wire value of another type never becomes a record."""
    assert check_record(rec(offer=Offer(steps=1, per_peer=1, memory=1 << 30, cpu=0.5, paused=True)), NET, T0) == ""
    assert check_record(rec(offer=offer), NET, T0) == "bad-offer"
    for field, wrong in (("steps", 1.5), ("steps", True), ("paused", 1), ("cpu", "0.5"), ("memory", None)):
        wire = dump(rec())
        wire["offer"] = {**wire["offer"], field: wrong}
        with pytest.raises(Rejected, match=field):
            parse(PeerRecord, wire)


def test_a_node_whose_clock_was_set_back_issues_a_record_peers_take_at_once():
    """A clock 10 minutes ahead, then set right: the record issued meanwhile is refused by every peer
    (issued past MAX_AHEAD_MS). "Newer than the last, always" kept the next ones that far ahead, and peers
    refused the node's hellos for 7 minutes more (this project's attack round on sleep and clocks)."""
    from mesh.wire.records import MAX_AHEAD_MS, RECORD_TTL_MS, next_issued

    now = T0
    assert next_issued(None, now) == now
    assert next_issued(now - 1000, now) is None  # the last one still serves
    assert next_issued(now - RECORD_TTL_MS // 3 - 1, now) == now
    assert next_issued(now + 60_000, now + 1) is None  # a little ahead (peers took it): kept, newer next time
    assert next_issued(now + 10 * 60_000, now) == now  # the jump's record: no peer holds it
    assert check_record(rec(at=next_issued(now + 10 * 60_000, now)), NET, now) == ""
    assert next_issued(now + MAX_AHEAD_MS, now) is None  # within what peers take: newer than it, later
