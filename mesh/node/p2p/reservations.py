"""Who may hold a relay reservation here. py-libp2p's relay grants reservations first come, first served
up to `max_reservations` (128) for an hour each, with no regard for who asks: one machine with 128 fresh
keys would hold every slot for an hour and no node behind a NAT could reserve here. So a reservation is
granted only while its network prefix (/24, /48: of the address the client connects from) holds fewer
than PER_PREFIX, and its wider prefix (/16, /32) fewer than PER_WIDE, and one held by a client no longer connected is dropped first (its circuit address is
dead anyway). Loopback counts like any prefix: nodes on one machine reach each other directly and never
need a relay there.

The holder of a reservation is the peer whose connection asked for it (`asked_by`, set by the relay's
RESERVE handler): py-libp2p took it from the request's optional `peer` field, so one key could reserve in
the names of others (and charge their network prefix). A peer with no direct link here gets none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from mesh.node.p2p.addresses import components
from mesh.node.peers import prefix_of_ip

PER_PREFIX = 4  # reservations one network prefix may hold on this relay
# ... and one wider prefix (/16, /32): addresses in 32 /24s held all 128 reservations (found by this project's
# red team, 2026-12-06); it now takes 4 /16s, and 8 /24s in each (an ISP's /16 holds many honest homes)
PER_WIDE = 32


class ReservationGate:
    """The rule, sans-I/O: `where(peer)` is the IP a peer connects from ('' when not connected)."""

    def __init__(self, where: Callable[[object], str], per_prefix: int = PER_PREFIX, per_wide: int = PER_WIDE):
        self.where, self.per_prefix, self.per_wide = where, per_prefix, per_wide
        self.refused = 0

    def stale(self, holders: Iterable[object]) -> list[object]:
        """Holders no longer connected: their reservations can go."""
        return [p for p in holders if not self.where(p)]

    def admits(self, peer: object, holders: Iterable[object]) -> bool:
        """Whether `peer` may take a new reservation while `holders` hold theirs."""
        ip = self.where(peer)
        if not ip:  # no direct link: nothing could reach it through here (and no prefix to charge)
            self.refused += 1
            return False
        prefix, wide = prefix_of_ip(ip), wide_prefix_of_ip(ip)
        others = [at for p in holders if p != peer and (at := self.where(p))]
        if sum(prefix_of_ip(at) == prefix for at in others) >= self.per_prefix or \
                sum(wide_prefix_of_ip(at) == wide for at in others) >= self.per_wide:
            self.refused += 1
            return False
        return True


def wide_prefix_of_ip(host: str) -> str:
    """The /16 of an IPv4 address, the /32 of IPv6 (a provider's block)."""
    return prefix_of_ip(host, 16, 32)


_asker: ContextVar[object | None] = ContextVar("reservation_asker", default=None)


@contextmanager
def asked_by(peer: object) -> Iterator[None]:
    """Within it, reservations are being asked for by `peer` (the remote peer of the RESERVE stream)."""
    token = _asker.set(peer)
    try:
        yield
    finally:
        _asker.reset(token)


def install(manager, gate: ReservationGate) -> None:
    """Put `gate` in front of a py-libp2p RelayResourceManager's `can_accept_reservation` (renewals of a
    live reservation pass as before). A reservation for any peer but the one asking (`asked_by`), or asked
    for outside of it, is refused."""
    accept = manager.can_accept_reservation

    def can_accept_reservation(peer_id) -> bool:
        if _asker.get() is None or peer_id != _asker.get():
            gate.refused += 1
            return False
        held = manager._reservations
        if peer_id not in held:
            for gone in gate.stale([p for p in held if p != peer_id]):
                held.pop(gone, None)
            if not gate.admits(peer_id, list(held)):
                return False
        return accept(peer_id)

    manager.can_accept_reservation = can_accept_reservation


def connected_ip(host) -> Callable[[object], str]:
    """`where` for a libp2p host: the IP of a peer's direct connection ('' when it has none)."""
    def where(peer) -> str:
        for conn in host.get_network().get_connections(peer):
            if conn.is_closed:  # py-libp2p may list a closed link for a while
                continue
            for addr in conn.get_transport_addresses():
                if "/p2p-circuit" in str(addr):
                    break
                ip = next((v for proto, v in components(addr) if proto in ("ip4", "ip6")), "")
                if ip:
                    return ip
        return ""
    return where
