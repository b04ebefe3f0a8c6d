"""What a node knows of its peers: their signed records, connections and liveness. Bookkeeping only;
the node does the I/O."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

from mesh.core.trust import UNKNOWN_PREFIX
from mesh.node.flow import KeyedBuckets
from mesh.wire.identity import node_id_of
from mesh.wire.messages import PeerRecord
from mesh.wire.records import check_record

MAX_PEERS = 10_000  # a gossiping liar cannot make the table grow without bound
# newer records of a key the table holds that are checked and taken (burst, then per second): a node issues
# one a third of its lifetime on, or when what it offers changes. Each was a signature and an id-work hash:
# one peer holding 8 ids re-issued its own and their records on every hello, 9 checks a hello, and 720 hellos
# took 2.28 s of the node's CPU (found by this project's third attack round, 2026-12-07). One past the rule
# is refused unchecked (`record-rate`); the record held still serves, and its owner's next one is taken
REISSUE_RULE = (4.0, 0.1)
YIELD_S = 5.0  # how long the larger key of two nodes that learned of each other waits for the other to dial


@dataclass
class Peer:
    key: bytes
    record: PeerRecord | None = None
    last_seen: float = 0.0  # monotonic seconds of the last verified envelope
    state: str = "new"  # new | up | down | left
    conns: set = field(default_factory=set)
    next_dial: float = 0.0
    next_hello: float = 0.0  # monotonic seconds when this peer is due our next hello
    failures: int = 0
    pick: int = 0  # which of its addresses we dial: the next one after each failed dial
    since: float = field(default_factory=time.monotonic)  # when we learned of it
    skew_ms: int | None = None  # its last envelope's stamp minus our clock on arrival (its clock's lead + transit)

    @property
    def node(self) -> str:
        return node_id_of(self.key)

    @property
    def addrs(self) -> list[str]:
        """Every address its record names: `addr` first, then the alternatives (other relays' circuits)."""
        return [self.record.addr, *self.record.alt] if self.record else []

    @property
    def addr(self) -> str:
        """The address to dial now."""
        addrs = self.addrs
        return addrs[self.pick % len(addrs)] if addrs else ""

    def dial_failed(self, addr: str, now: float, jitter: float) -> None:
        """A dial of `addr` failed: the next goes to the peer's next address (a relay of a node behind
        NAT may be gone while its others hold slots) at once, and once all were tried, after a backoff:
        exponential, times `jitter`, capped at 30 s."""
        self.failures += 1
        if not self.addrs or addr != self.addr:
            return  # not the address its record names now (it moved since): that one is due as it was
        self.pick += 1
        if self.pick % len(self.addrs):
            self.next_dial = now
        else:
            self.next_dial = now + min(30.0, 2.0 ** (self.failures // len(self.addrs))) * jitter

    def dials_first(self, me: bytes, now: float) -> bool:
        """Whether we, not this peer, should dial now. Of two nodes that learn of each other, the one
        with the smaller key dials at once and the other only after YIELD_S (if no link came by then,
        the first did not know of it): both dialling made two handshakes and two links per pair, in a
        32-node mesh almost a thousand at the same time."""
        return me < self.key or now >= self.since + YIELD_S

    def best_conn(self, me: bytes):
        """The open link to send on: a direct or hole-punched one before one through a relay, and of
        two alike, the one the smaller key opened, so both ends of a pair send on the same link. Each
        end used to pick its own, and a peer's frames on two links arrive out of order: one 32-node
        run stopped at 97 of 100 steps, a RunStep refused as a replay and its replica waiting out the
        job's timeout (the receiver now also takes frames out of order: `_Seen`, mesh/wire/envelope.py)."""
        opened_by_me = me < self.key
        return min((c for c in self.conns if c.open), default=None,
                   key=lambda c: (c.kind == "relayed", c.outbound != opened_by_me))

    @property
    def kinds(self) -> list[str]:
        return self.record.kinds if self.record else []

    @property
    def models(self) -> list[str]:
        return self.record.models if self.record else []

    @property
    def connected(self) -> bool:
        return any(c.open for c in self.conns)

    @property
    def chosen(self) -> bool:
        """Linked by a dial of ours (a link it opened to us is its choice, not ours)."""
        return any(c.open and c.dialled for c in self.conns)

    def capabilities(self, default_model: str) -> list[str]:
        """What this peer offers, in Step.needs terms."""
        caps = [k for k in self.kinds if k != "llm"]
        if "llm" in self.kinds:
            caps += [f"llm:{m}" for m in self.models] + (["llm:default"] if default_model in self.models else [])
        return caps


CHOSEN_LINKS = 8  # links of its own choosing a node keeps room for (at most --max-links), whatever came in


def room_to_dial(linked: int, chosen: int, max_links: int) -> bool:
    """Whether a node with `linked` links, `chosen` of them dialled by it, may dial one more peer on its own
    initiative: under `max_links`; past it, while fewer than min(CHOSEN_LINKS, max_links) are its own. Links
    strangers open to a node took the whole of --max-links: 64 keys linking in, the node dialled nobody
    after, not even an honest peer back from a restart, and 18 of 18 steps at r=2 went to the strangers
    (this project's red team, 2026-12-06)."""
    return linked < max_links or chosen < min(CHOSEN_LINKS, max_links)


def to_dial(named: list[tuple[str, Peer]], have: set[str], linked: int, want: int) -> list[Peer]:
    """Which providers of a capability, named with their network prefixes, to dial so that those linked
    (`linked` of them, on the prefixes in `have`) reach `want` prefixes: one on each prefix none is linked
    on, then, while fewer than `want` are linked at all, any (a mesh on one prefix, e.g. loopback, still
    gets its workers). Counting ids, a few dozen keys of one operator on one /24 were enough, and the node
    looked for nobody else: placement then had the operator's prefix and few others to draw from."""
    fresh: dict[str, Peer] = {}
    for prefix, peer in named:
        if prefix not in have:
            fresh.setdefault(prefix, peer)
    picks = list(fresh.values())[:max(0, want - len(have))]
    taken = {id(p) for p in picks}
    rest = [peer for _, peer in named if id(peer) not in taken]
    return picks + rest[:max(0, want - linked - len(picks))]


class PeerTable:
    def __init__(self, me: bytes, network: str):
        self.me = me
        self.network = network
        self.peers: dict[bytes, Peer] = {}
        self.version = 0  # bumped whenever a record is taken or a peer forgotten: what to save changed
        self._reissued = KeyedBuckets()  # per key held, its newer records checked, held to REISSUE_RULE

    def get(self, key: bytes) -> Peer | None:
        return self.peers.get(key)

    def knows(self, key_hex: str) -> bool:
        """Whether the key (as a record spells it) is in the table."""
        try:
            return bytes.fromhex(key_hex) in self.peers
        except ValueError:
            return False

    def by_node(self, node: str) -> Peer | None:
        return next((p for p in self.peers.values() if p.node == node), None)

    def __iter__(self):
        return iter(list(self.peers.values()))

    def up(self) -> list[Peer]:
        """Peers connected and answering now: the ones work and counts of capacity are about."""
        return [p for p in self.peers.values() if p.connected and p.state == "up"]

    def learn(self, rec: PeerRecord, now_ms: int, own: bool = False) -> tuple[Peer | None, str]:
        """Take a record (from its owner, `own`: its hello on a live link, or from gossip). Returns (peer,
        '') when it was new or newer than what we had, (None, '') when it told us nothing new, (None,
        reason) when it was refused. A full table takes a peer's own record still, in the place of one
        only heard of and never reached: made-up records from many prefixes kept the table full, and no
        newcomer got in until they expired (found by a p2p attacker)."""
        try:
            key = bytes.fromhex(rec.key)
        except ValueError:
            return None, "bad-record"
        peer = self.peers.get(key)
        if peer is not None and peer.record is not None and rec.issued <= peer.record.issued:
            # Nothing newer than what we hold, so nothing is taken from it: not worth a signature check.
            # Every hello repeats every peer's record, and verifying them all was what kept a 32-node mesh
            # on 2 cores from ever settling (py-spy: all of the loop's time in check_record).
            return None, ""
        if peer is not None and peer.record is not None \
                and not self._reissued.spend(key, REISSUE_RULE, time.monotonic()):
            return None, "record-rate"  # (before the signature, as below)
        full = peer is None and len(self.peers) >= MAX_PEERS
        if full and not own:  # before the signature: refusing costs nothing
            return None, "peer-table-full"
        why = check_record(rec, self.network, now_ms)
        if why:
            return None, why
        if key == self.me:
            return None, ""
        if full:
            unmet = next((p for p in self.peers.values() if p.state == "new" and not p.connected), None)
            if unmet is None:  # every one of them met: nobody is pushed out
                return None, "peer-table-full"
            del self.peers[unmet.key]  # (the one heard of longest ago)
        if peer is None:
            peer = self.peers[key] = Peer(key)
        elif peer.record is not None and rec.issued <= peer.record.issued:
            return None, ""
        moved = peer.record is not None and peer.addrs != [rec.addr, *rec.alt]
        peer.record = rec
        self.version += 1
        if peer.state == "left" and not peer.connected:  # it said bye, and has published since: it came back
            peer.state = "new"  # (kept as left, it was never dialled again: red team, 2026-12-06)
        if moved:  # it published new addresses: dial the first, now
            peer.next_dial, peer.failures, peer.pick = 0.0, 0, 0
        return peer, ""

    def records(self, now_ms: int) -> list[PeerRecord]:
        """Unexpired records of peers seen up, for gossip."""
        return [p.record for p in self.peers.values()
                if p.record and p.state == "up" and p.record.expires > now_ms]

    def expire(self, now_ms: int) -> list[Peer]:
        """Forget disconnected peers whose records have expired, and peers we only heard of (gossip, the
        DHT) and never reached after trying each of their addresses twice: a record naming an address
        its key does not live at is not kept for its whole lifetime."""
        gone = [p for p in self.peers.values()
                if not p.connected and p.state != "up" and (
                    p.record is None or p.record.expires <= now_ms
                    or (p.state == "new" and p.failures >= 2 * max(1, len(p.addrs))))]
        for p in gone:
            del self.peers[p.key]
        self.version += bool(gone)
        return gone


class GossipLimit(KeyedBuckets):
    """How many records of peers new to us one source may teach us: its key, and the network prefix it
    connects from, each get a token bucket (PER_KEY, PER_PREFIX: burst, then per second). Without it one
    key taught a node 1,449 made-up peers in 1.3 s, each a signature to check and an address to dial.
    Only records of unknown keys spend: re-sent and updated ones cost nothing. Sans-I/O."""

    PER_KEY = (64, 0.5)
    PER_PREFIX = (128, 1.0)  # a loopback mesh is one prefix: 32 nodes learn each other through it
    MEMORY = 4096  # sources remembered; the least recently heard is forgotten first

    def take(self, key: bytes, prefix: str, now: float) -> bool:
        """Whether the source (`key`, from `prefix`) may teach us one more peer now; spends if so."""
        slots = [(("key", key.hex()), self.PER_KEY), (("prefix", prefix), self.PER_PREFIX)]
        levels = [self.level(name, rule, now) for name, rule in slots]
        if min(levels) < 1:
            return False
        for name, _ in slots:
            self.buckets[name][0] -= 1
        return True


def prefix_of(addr: str) -> str:
    """Network prefix used to spread replicas: the /24 of an IPv4 address, the /48 of IPv6, else the host.
    A node reached through a relay says nothing true about where it is: all such are one group,
    UNKNOWN_PREFIX (the relay's prefix would lump them with the relay's neighbours; its whole address,
    which ends in its own id, made each sybil behind one relay-only machine a group of its own)."""
    if addr.startswith("/"):
        if "/p2p-circuit" in addr:
            return UNKNOWN_PREFIX
        bits = addr.split("/")
        addr = f"{bits[2]}:{bits[4]}" if len(bits) > 4 else addr
    return prefix_of_ip(addr.rpartition(":")[0].strip("[]"))


def prefix_of_ip(host: str, v4: int = 24, v6: int = 48) -> str:
    """The /24 of an IPv4 address, the /48 of IPv6 (or the `v4`, `v6` bits given); anything else (a name)
    is its own prefix."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    bits = v4 if ip.version == 4 else v6
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))
