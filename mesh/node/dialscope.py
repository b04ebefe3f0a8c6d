"""Which addresses a node dials. An address in a peer record, a gossip sample, a DHT answer or an
observed-address report is that peer's claim, and hostile until checked: a record saying
`127.0.0.1:<port>` would have every node that learns it connect to a service on its own machine (its
API, its actors' admin port), `0.0.0.0:<port>` does the same on Linux, and a LAN address aims a public
node at its provider's private network. So a node dials only addresses in scopes it lives in itself:

- never: unspecified, multicast, broadcast and reserved addresses;
- loopback: only from a node that itself listens on loopback (a local mesh);
- local (private, link-local, carrier-grade NAT, test ranges, IPv6 ULA): not from a node that listens
  on a global address (a public bootstrap or relay); a home node may still be pointed at its LAN;
- global addresses: always. A DNS name is resolved by the transport just before the dial, and the
  address it names is held to the same rule (`Gate.check_resolved`): a name pointing at 127.0.0.1 is
  refused like 127.0.0.1. The transport then dials that address, not the name again.

The libp2p swarm's dials (ours, the DHT's, hole punching) and the TCP transport's all pass through
a `Gate`, which also holds how often addresses no key has proven itself at may be dialled
(`mesh/node/dialbudget.py`)."""

from __future__ import annotations

import ipaddress

from mesh.errors import RemoteError
from mesh.node.dialbudget import DialBudget

_RANK = {"loopback": 0, "local": 1, "global": 2}


class AddressRefused(RemoteError, ValueError):
    """A peer-named address outside the scopes this node dials (reason: the counter key)."""

    def __init__(self, addr: str, reason: str):
        super().__init__(f"{addr[:120]}: {reason}")
        self.addr, self.reason = addr, reason


def scope(host: str) -> str:
    """never | loopback | local | global | name, for an IP literal or a DNS name."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return "name"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    if ip.is_loopback:  # before is_reserved: ::1 lies in the reserved ::/8
        return "loopback"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved or str(ip) == "255.255.255.255":
        return "never"
    return "global" if ip.is_global else "local"


def first_hop(addr: str) -> tuple[str, str]:
    """(host, port) of the first hop of `HOST:PORT`, `[V6]:PORT` or a multiaddr (`/ip4/H/tcp/P/...`)."""
    if addr.startswith("/"):
        parts = addr.split("/") + ["", "", "", ""]
        return parts[2], parts[4]
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), port


def own_scope(addrs: list[str]) -> str:
    """The widest scope a node lives in, from the addresses its owner gave it (listen, advertise,
    bootstrap): all interfaces counts as local, a name as global. A node on loopback that bootstraps
    into the internet is in the internet."""
    scopes = [{"never": "local", "name": "global"}.get(s, s) for s in (scope(first_hop(a)[0]) for a in addrs)]
    return max(scopes, key=_RANK.__getitem__, default="loopback")


class Gate:
    """A node's dial policy: its scope, the addresses its owner named (always dialled: host and port),
    and what it refused, by reason."""

    def __init__(self, own: str = "loopback", trusted: frozenset[tuple[str, str]] = frozenset()):
        self.own, self.trusted = own, trusted
        self.refused: dict[str, int] = {}
        self.budget = DialBudget()

    @classmethod
    def for_node(cls, listen: str, advertise: str, bootstrap: list[str]) -> "Gate":
        given = [a for a in (listen, advertise, *bootstrap) if a]
        return cls(own_scope(given), frozenset(first_hop(a) for a in bootstrap))

    def allows(self, addr: str) -> bool:
        """Whether this node may dial `addr` (nothing counted: a question, not a dial)."""
        return not self._why(addr)

    def check(self, addr: str) -> None:
        """AddressRefused unless this node may dial `addr` (and the refusal counted)."""
        why = self._why(addr)
        if why:
            self.refused[why] = self.refused.get(why, 0) + 1
            raise AddressRefused(addr, why)

    def admit(self, addr: str, key: bytes, now: float, punch: bool = False) -> None:
        """AddressRefused (counted) unless the dial budget lets `key` be dialled at `addr` now; an address
        the owner named always may be. The host gap spares a hole punch (it dials the few addresses a
        linked peer reported for itself, on one host, at once) and loopback (only a loopback mesh dials
        it, where every node shares the host; a tarpit there held an honest peer's dial back)."""
        hop = first_hop(addr)
        gap = not punch and scope(hop[0]) != "loopback"
        why = "" if hop in self.trusted else self.budget.admit(hop, key, now, gap=gap)
        if why:
            self.refused[why] = self.refused.get(why, 0) + 1
            raise AddressRefused(addr, why)

    def dialled(self, addr: str, key: bytes, ok: bool, now: float) -> None:
        """A dial admitted at `addr` ended: `ok` when `key` answered there."""
        if ok:
            self.budget.succeeded(first_hop(addr), key)
        else:
            self.budget.failed(first_hop(addr), key, now)

    def check_resolved(self, addr: str, ip: str) -> None:
        """`addr` names a host that resolved to `ip`: AddressRefused unless `ip` may be dialled (a host
        the owner named, with its port, is dialled wherever it points: that is the owner's own DNS)."""
        hop = first_hop(addr)
        if hop not in self.trusted:
            self.check(f"[{ip}]:{hop[1]}")

    def _why(self, addr: str) -> str:
        hop = first_hop(addr)
        return "" if hop in self.trusted else refusal(hop[0], self.own)


def refusal(host: str, own: str) -> str:
    """'' when a node of scope `own` may dial `host`, else why not (a counter key)."""
    found = scope(host)
    if found == "never":
        return "addr-never"
    if found == "name":
        return ""
    return "" if _RANK[found] >= _RANK[own] else f"addr-{found}"
