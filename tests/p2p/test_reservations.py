"""Relay reservations cannot all be taken by one machine (issue 19: relay reservations can be flooded):
py-libp2p's own RelayResourceManager with the gate installed, peers placed on addresses by a table."""

from __future__ import annotations

from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.resources import RelayResourceManager

from mesh.node.p2p.addresses import peer_id_of
from mesh.node.p2p.nat import RELAY_LIMITS
from mesh.node.p2p.reservations import PER_PREFIX, PER_WIDE, ReservationGate, asked_by, install
from mesh.wire.identity import Identity


def peer() -> ID:
    return peer_id_of(Identity.generate().public_key)


def manager(where: dict) -> tuple[RelayResourceManager, ReservationGate]:
    mgr = RelayResourceManager(RELAY_LIMITS, None)
    gate = ReservationGate(lambda p: where.get(p, ""))
    install(mgr, gate)
    return mgr, gate


def take(mgr: RelayResourceManager, p: ID) -> bool:
    with asked_by(p):  # (as the relay's RESERVE handler does: the peer asking)
        if not mgr.can_accept_reservation(p):
            return False
    mgr.reserve(p)
    return True


def test_one_machine_with_many_keys_holds_only_a_few_reservations_and_others_still_get_theirs():
    where: dict = {}
    mgr, gate = manager(where)
    attackers = [peer() for _ in range(RELAY_LIMITS.max_reservations + 2)]
    for i, p in enumerate(attackers):
        where[p] = f"203.0.113.{i % 250 + 1}"  # one /24, many addresses
    granted = [p for p in attackers if take(mgr, p)]
    assert len(granted) == PER_PREFIX and gate.refused == len(attackers) - PER_PREFIX
    homes = [peer() for _ in range(20)]
    for i, p in enumerate(homes):
        where[p] = f"198.51.{i}.7"
    assert all(take(mgr, p) for p in homes)  # every other home still gets a slot
    assert all(take(mgr, p) for p in granted)  # a holder renews its own


def test_a_holder_that_left_gives_its_slot_back():
    where: dict = {}
    mgr, _ = manager(where)
    first = [peer() for _ in range(PER_PREFIX)]
    for p in first:
        where[p] = "192.0.2.10"
    assert all(take(mgr, p) for p in first)
    late = peer()
    where[late] = "192.0.2.11"
    assert not take(mgr, late)
    del where[first[0]]  # disconnected: its circuit address is dead
    assert take(mgr, late) and first[0] not in mgr._reservations


def test_one_network_block_holds_only_a_share_of_the_reservations():
    """Found by this project's red team (2026-12-06): addresses in 32 /24s (4 reservations each) held all
    128. One /16 now holds PER_WIDE: a home elsewhere still gets a slot."""
    where: dict = {}
    mgr, gate = manager(where)
    attackers = [peer() for _ in range(RELAY_LIMITS.max_reservations)]
    for i, p in enumerate(attackers):
        where[p] = f"203.0.{i // PER_PREFIX}.{i % PER_PREFIX + 1}"  # 32 /24s of one /16, 4 each
    granted = [p for p in attackers if take(mgr, p)]
    assert len(granted) == PER_WIDE, len(granted)
    late = peer()
    where[late] = "198.51.100.7"
    assert take(mgr, late)


def test_a_reservation_is_held_by_the_peer_that_asks_and_only_one_with_a_direct_link():
    """Found by this project's red team (2026-12-06): py-libp2p takes RESERVE's `peer` field as the holder,
    so one key reserved in the names of bystanders on a victim's /24. A slot goes only to the asker."""
    where: dict = {}
    mgr, gate = manager(where)
    asker, bystander = peer(), peer()
    where[asker], where[bystander] = "203.0.113.7", "198.51.100.7"
    with asked_by(asker):
        assert not mgr.can_accept_reservation(bystander)
    assert not mgr.can_accept_reservation(asker)  # asked outside a RESERVE: nobody known to ask
    assert take(mgr, asker)
    ghost = peer()  # no direct link here: no circuit could reach it, and no prefix to charge
    assert not take(mgr, ghost)
