"""What bounds the work a stranger's gossip makes a node do (issue 19 item 4), sans-I/O: the dial budget
(mesh/node/dialbudget.py), the per-source limit on new records and the peer table's own limits
(mesh/node/peers.py), and the record lifetime (mesh/wire/records.py). The attacks through a real node
are in tests/security/test_gossip_weapon.py."""

from __future__ import annotations

import pytest

from mesh.node import dialbudget
from mesh.node.dialbudget import BACKOFF_S, HOST_GAP_S, UNPROVEN_BURST, DialBudget
from mesh.node.dialscope import AddressRefused, Gate
from mesh.node.peers import CHOSEN_LINKS, MAX_PEERS, GossipLimit, Peer, PeerTable, room_to_dial
from mesh.wire.identity import Identity
from mesh.wire.records import MAX_LIFETIME_MS, RECORD_TTL_MS, check_record, make_record

pytestmark = pytest.mark.timeout(30)
NET = "homemesh-test"
T0 = 1_700_000_000_000
K1, K2, K3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
VICTIM = ("203.0.113.9", "80")


def test_a_failed_address_waits_for_every_key_that_names_it_and_the_wait_doubles():
    b = DialBudget()
    assert b.admit(VICTIM, K1, 0.0) == ""
    b.failed(VICTIM, K1, 0.0)
    assert b.admit(VICTIM, K2, 1.0) == "dial-backoff"  # another key naming the same address
    assert b.admit(VICTIM, K2, BACKOFF_S + 0.1) == ""
    b.failed(VICTIM, K2, BACKOFF_S + 0.1)
    assert b.admit(VICTIM, K3, BACKOFF_S + 0.1 + BACKOFF_S * 1.5) == "dial-backoff"
    assert b.admit(VICTIM, K3, BACKOFF_S + 0.1 + BACKOFF_S * 2 + 0.1) == ""


def test_a_host_where_no_key_lives_gets_one_unproven_dial_per_gap_whatever_the_port():
    b = DialBudget()
    assert b.admit(("203.0.113.9", "1"), K1, 0.0) == ""
    assert b.admit(("203.0.113.9", "2"), K2, 1.0) == "dial-host-gap"
    assert b.admit(("203.0.113.9", "3"), K3, HOST_GAP_S + 0.1) == ""
    b.connected_in("203.0.113.9", None, K1)  # a peer connected in from it: a host where peers live
    assert b.admit(("203.0.113.9", "4"), K2, HOST_GAP_S + 0.2) == ""
    assert b.admit(("203.0.113.9", "5"), K3, HOST_GAP_S + 0.3) == ""
    b.succeeded(("198.51.100.1", "4750"), K1)  # a key answered there: a host where peers live, too
    assert b.admit(("198.51.100.1", "1"), K2, 0.0) == "" and b.admit(("198.51.100.1", "2"), K3, 0.0) == ""


def test_unproven_dials_together_spend_a_burst_then_a_rate():
    b = DialBudget()
    b.connected_in("127.0.0.1", None, K1)
    got = [b.admit(("127.0.0.1", str(p)), K2, 0.0) for p in range(UNPROVEN_BURST + 5)]
    assert got.count("") == UNPROVEN_BURST and got[-1] == "dial-budget"
    assert b.admit(("127.0.0.1", "9999"), K2, 1.0 / dialbudget.UNPROVEN_RATE + 0.01) == ""


def test_a_proven_pair_is_not_budgeted_and_survives_a_failed_connect_but_not_a_silent_link():
    b = DialBudget()
    b.connected_in("127.0.0.1", None, K1)
    for p in range(UNPROVEN_BURST):
        b.admit(("127.0.0.1", str(p)), K2, 0.0)  # the budget spent
    home = ("127.0.0.1", "4750")
    b.succeeded(home, K1)
    assert b.admit(home, K1, 0.0) == ""  # proven: no budget needed
    b.failed(home, K1, 0.0)  # a laptop asleep: still that key at that address
    assert b.admit(home, K1, 0.1) == ""
    assert b.admit(home, K3, 0.1) == "dial-budget"  # another key naming the same address is not proven
    wait = b.silent(home, K1, 1.0)  # it took the link and never said hello
    assert wait == BACKOFF_S
    assert b.admit(home, K1, 2.0) == "dial-backoff"


def test_connecting_in_from_the_host_a_record_names_proves_that_address():
    b = DialBudget()
    b.connected_in("198.51.100.4", ("198.51.100.4", "4750"), K1)
    b.connected_in("198.51.100.5", ("203.0.113.9", "4750"), K2)  # a record naming another host: not proven
    for p in range(UNPROVEN_BURST):
        b.admit(("198.51.100.4", str(p)), K3, 0.0)
    assert b.admit(("198.51.100.4", "4750"), K1, 0.0) == ""
    assert b.admit(("203.0.113.9", "4750"), K2, 0.0) == "dial-budget"


def test_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(dialbudget, "MEMORY", 10)
    b = DialBudget()
    for i in range(100):
        b.failed(("203.0.113.9", str(i)), K1, float(i))
        b.succeeded(("127.0.0.1", str(i)), K1)
        b.connected_in(f"10.0.0.{i}", None, K1)
    assert len(b.failures) == len(b.proven) == len(b.vouched) == 10


def test_the_gate_counts_budget_refusals_and_lets_the_owners_addresses_through():
    gate = Gate("global", frozenset({VICTIM}))
    gate.dialled(f"{VICTIM[0]}:{VICTIM[1]}", K1, False, 0.0)
    gate.admit(f"{VICTIM[0]}:{VICTIM[1]}", K2, 1.0)  # a bootstrap the owner named: always
    gate.dialled("/ip4/203.0.113.10/tcp/80", K1, False, 0.0)
    with pytest.raises(AddressRefused) as err:
        gate.admit("203.0.113.10:80", K2, 1.0)  # HOST:PORT and multiaddr are one address
    assert err.value.reason == "dial-backoff" and gate.refused == {"dial-backoff": 1}


def test_a_source_teaches_a_burst_of_new_peers_then_a_trickle_per_key_and_per_prefix():
    lim = GossipLimit()
    burst, rate = GossipLimit.PER_KEY
    assert sum(lim.take(K1, "10.0.0.0/24", 0.0) for _ in range(burst + 10)) == burst
    assert not lim.take(K1, "10.0.0.0/24", 1.0 / rate - 0.01)
    assert lim.take(K1, "10.0.0.0/24", 1.0 / rate + 0.01)
    # Fresh keys from the same prefix share the prefix's bucket.
    pburst = GossipLimit.PER_PREFIX[0]
    taken = sum(lim.take(bytes([i]) * 32, "10.0.0.0/24", 2.0 / rate) for i in range(2, 2 + 10 * pburst // burst))
    assert taken <= pburst
    assert lim.take(K2, "10.9.9.0/24", 2.0 / rate)  # another prefix is not held back


def test_the_source_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(GossipLimit, "MEMORY", 50)
    lim = GossipLimit()
    for i in range(500):
        lim.take(i.to_bytes(32, "big"), f"10.{i // 256}.{i % 256}.0/24", 0.0)
    assert len(lim.buckets) == 50


def test_a_full_table_refuses_before_checking_any_signature(monkeypatch):
    table = PeerTable(b"\x00" * 32, NET)
    for i in range(MAX_PEERS):
        table.peers[i.to_bytes(32, "big")] = Peer(i.to_bytes(32, "big"))
    checked = []
    monkeypatch.setattr("mesh.node.peers.check_record", lambda *a: checked.append(a) or "")
    rec = make_record(Identity.generate(), NET, "10.0.0.2:4750", ["python"], [], False, T0)
    assert table.learn(rec, T0) == (None, "peer-table-full")
    assert checked == []


def test_a_full_table_still_takes_a_peers_own_hello_in_place_of_one_only_heard_of(monkeypatch):
    """Made-up records gossiped from many prefixes filled the table, and a newcomer that linked to the
    node and said hello was refused ("peer-table-full") until they expired (the README's open list, from a
    p2p attacker). Its own record now takes the place of the peer heard of longest ago and never reached;
    gossip is still refused, and when every peer in the table was met, nobody is pushed out."""
    monkeypatch.setattr("mesh.node.peers.MAX_PEERS", 20)
    monkeypatch.setattr("mesh.node.peers.check_record", lambda *a: "")  # (ids without their work: quick keys)
    table = PeerTable(b"\x00" * 32, NET)
    fakes = [Identity.generate(0) for _ in range(20)]
    for i, f in enumerate(fakes):
        assert table.learn(make_record(f, NET, f"10.{i}.0.2:4750", ["python"], [], False, T0), T0)[1] == ""
    newcomer = make_record(Identity.generate(0), NET, "198.51.100.7:4750", ["python"], [], False, T0)
    assert table.learn(newcomer, T0) == (None, "peer-table-full")  # heard of by gossip: refused
    peer, why = table.learn(newcomer, T0, own=True)
    assert why == "" and peer is not None and len(table.peers) == 20
    assert fakes[0].public_key not in table.peers  # the one heard of longest ago went
    for p in table.peers.values():
        p.state = "up"
    other = make_record(Identity.generate(0), NET, "198.51.100.8:4750", ["python"], [], False, T0)
    assert table.learn(other, T0, own=True) == (None, "peer-table-full")


def test_a_peer_only_heard_of_is_forgotten_once_each_address_failed_twice():
    ident = Identity.generate()
    table = PeerTable(b"\x00" * 32, NET)
    rec = make_record(ident, NET, "10.0.0.2:4750", ["python"], [], False, T0, alt=["10.0.0.3:4750"])
    peer, _ = table.learn(rec, T0)
    for _ in range(3):
        peer.dial_failed(peer.addr, 0.0, 1.0)
        assert table.expire(T0) == []
    peer.dial_failed(peer.addr, 0.0, 1.0)
    assert table.expire(T0) == [peer] and table.get(ident.public_key) is None
    # One that was up once is kept (asleep, it may come back) until its record expires.
    peer, _ = table.learn(rec, T0)
    peer.state = "down"
    for _ in range(10):
        peer.dial_failed(peer.addr, 0.0, 1.0)
    assert table.expire(T0) == []


def test_a_record_valid_longer_than_the_maximum_lifetime_is_refused():
    ident = Identity.generate()
    ok = make_record(ident, NET, "10.0.0.2:4750", [], [], False, T0, ttl_ms=MAX_LIFETIME_MS)
    too_long = make_record(ident, NET, "10.0.0.2:4750", [], [], False, T0, ttl_ms=MAX_LIFETIME_MS + 1)
    assert MAX_LIFETIME_MS == 2 * RECORD_TTL_MS
    assert check_record(ok, NET, T0) == ""
    assert check_record(too_long, NET, T0) == "bad-record"


def test_the_host_gap_spares_loopback_and_hole_punches():
    gate = Gate("loopback")
    for port in (1, 2, 3):
        gate.admit(f"127.0.0.1:{port}", K1, 0.0)  # a loopback mesh: every node on one host
    gate = Gate("global")
    gate.admit("203.0.113.9:1", K1, 0.0)
    gate.admit("/ip4/203.0.113.9/tcp/2", K2, 0.1, punch=True)
    with pytest.raises(AddressRefused):
        gate.admit("203.0.113.9:3", K3, 0.2)



def test_links_strangers_open_leave_room_for_links_a_node_chooses():
    """Found by this project's red team (2026-12-06): --max-links counted every link, and 64 keys linking in
    took all of it: the node dialled nobody after, not even an honest peer back from a restart, and 18 of 18
    steps at r=2 went to the strangers. It may still dial while fewer than min(CHOSEN_LINKS, --max-links) of
    its links are its own."""
    assert room_to_dial(66, 1, 64) and room_to_dial(66, CHOSEN_LINKS - 1, 64)
    assert not room_to_dial(66, CHOSEN_LINKS, 64)
    assert room_to_dial(3, 0, 64)
    assert not room_to_dial(5, 1, 1) and room_to_dial(5, 0, 1)  # --max-links 1: one of its own, as before

    class Link:
        def __init__(self, dialled: str):
            self.open, self.dialled = True, dialled

    peer = Peer(b"\x01" * 32)
    peer.conns = [Link("")]  # it dialled us
    assert peer.connected and not peer.chosen
    peer.conns.append(Link("10.0.0.2:4750"))
    assert peer.chosen


def test_a_peer_that_said_bye_is_dialled_again_once_it_publishes_a_newer_record():
    """Found by this project's red team (2026-12-06): a peer that said bye stayed `left` through every newer
    record of it, and was never dialled again after a clean restart."""
    ident = Identity.generate()
    table = PeerTable(b"\x00" * 32, NET)
    peer, _ = table.learn(make_record(ident, NET, "10.0.0.2:4750", ["python"], [], False, T0), T0)
    peer.state = "left"  # (its bye)
    assert table.learn(make_record(ident, NET, "10.0.0.2:4750", ["python"], [], False, T0), T0) == (None, "")
    assert peer.state == "left"  # the same record again: still gone
    again, why = table.learn(make_record(ident, NET, "10.0.0.2:4751", ["python"], [], False, T0 + 1000), T0 + 1000)
    assert why == "" and again is peer and peer.state == "new"


def test_circuit_addresses_of_different_ids_through_different_relays_are_one_group():
    """Red team H (F1): a circuit address ends in the peer's own id; taken as its group, every relayed id
    was a network prefix of its own. All are now one group, never that of the relay or of a direct peer."""
    from mesh.core.trust import UNKNOWN_PREFIX
    from mesh.node.peers import prefix_of
    a = "/ip4/203.0.113.5/tcp/4750/p2p/12D3KooWRelayA/p2p-circuit/p2p/12D3KooWSybilOne"
    b = "/ip4/198.51.100.9/tcp/4750/p2p/12D3KooWRelayB/p2p-circuit/p2p/12D3KooWSybilTwo"
    assert prefix_of(a) == prefix_of(b) == UNKNOWN_PREFIX
    assert prefix_of("/ip4/203.0.113.5/tcp/4750") == "203.0.113.0/24" != UNKNOWN_PREFIX
