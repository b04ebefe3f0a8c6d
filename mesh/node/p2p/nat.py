"""NAT traversal on py-libp2p 0.8.1, trio side: AutoNAT (are we dialable?), circuit relay v2 (reachable
nodes relay for others, with limits; unreachable ones hold reservations on a few relays and advertise
the circuit address) and DCUtR (hole punching that upgrades a relayed link to a direct one).

Wiring notes, each measured here (notes/p2p.md and the NAT topology tests):
- the stock AutoNAT server answers a dial-back request with the connection the request came on, so a
  NATed client is told "public": `DialBackAutoNAT` dials the address afresh;
- `CircuitV2Transport` with the CLIENT role sends a RESERVE before every CONNECT: we take the STOP role
  and reserve explicitly;
- the hop handler is registered only when the relay service starts with `allow_hop`, so a node that
  learns later that it is public registers `_handle_hop_stream` itself (a private method: the version
  is pinned and tests/p2p/test_nat_mesh.py covers it);
- the stock DCUtR first dials the peer's known addresses alone for up to 10 s, and both ends of a relayed
  link start a punch: `Puncher` skips the lone dial and lets only one end start (see there)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar

import trio
from libp2p.abc import IHost
from libp2p.host.autonat import AutoNATService, AutoNATStatus
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from multiaddr import Multiaddr

from mesh.node.flow import KeyedBuckets, TokenBucket
from mesh.node.p2p.reservations import ReservationGate, asked_by, connected_ip, install
from mesh.node.peers import prefix_of_ip

log = logging.getLogger("mesh.node.p2p.nat")

# What a relay gives each circuit: enough for job traffic between two homes whose NATs refuse hole
# punching, bounded so that relaying costs its operator little. A circuit over its limit is closed and
# the two nodes dial a new one.
PER_PREFIX_CIRCUITS = 8  # circuits one network prefix may have open at once to one destination through this relay
RELAY_LIMITS = RelayLimits(duration=3600, data=256 << 20, max_circuit_conns=64, max_reservations=128,
                           reservation_ttl=3600)
WANT_RELAYS = 2  # reservations an unreachable node keeps
RELAY_BUDGET = 2 << 30  # bytes an hour this node relays for others in all (--relay-budget); one prefix a quarter
AUTONAT_TIMEOUT_S = 10.0
DIAL_BACK_S = 5.0
# RESERVEs one network prefix may ask of this relay a second, and at once: each is answered with a signed voucher
# (an Ed25519 signature), and one key renewing over 100 streams at once took 53% of a core (9,400 in 20.7 s)
RESERVE_RATE, RESERVE_BURST = 1.0, 8.0
PUNCH_ADDRS = 4  # addresses a hole punch dials: the first direct ones of the peer's CONNECT, nothing else
PUNCH_SESSIONS, PUNCH_WINDOW_S = 3, 300.0  # punches one peer may ask of us in a window (the spec's 3 tries)


class DialBackAutoNAT(AutoNATService):
    """AutoNAT server that proves reachability by a fresh dial, not the connection the question came on."""

    async def _try_dial(self, peer_id: ID, addrs: list[bytes]) -> bytes | None:
        for addr in addrs[:4]:  # a client may list many addresses: dial a few, never all
            with trio.move_on_after(DIAL_BACK_S):
                try:
                    conn = await self.host.get_network().dial_addr(Multiaddr(addr), peer_id)
                except Exception:  # noqa: BLE001 - any failure means "not reachable there"
                    continue
                await conn.close()
                return bytes(addr)
        return None


class Puncher(DCUtRProtocol):
    """DCUtR where exactly one end of a relayed link starts the punch, at once.

    The stock protocol lets both ends start. When their sessions overlap, each end dials the same
    address pair from its listen port twice, and the second dial fails ("Cannot assign requested
    address", seen on both ends in one of three trials here); the stock code also documents that a
    merged connection needs exactly one Noise responder. Before the exchange it dials the peer's known
    addresses alone, which behind a NAT that drops is a 10 s wait for nothing: punches came 11-13 s
    after the relayed link, and 1.8-2.1 s without it. The punch itself dials those addresses too. Here
    the end with the smaller peer id starts and the other answers: both agree without a word.

    The stock answer to a CONNECT also dials whatever the peer asks: any relay-linked peer sent 4 KiB of
    addresses and the node opened 63 TCP connections to addresses of its choosing at once, plus every
    address its peer store held for it, in three rounds, and again for every CONNECT (the red team,
    2026-12-06). Here a punch dials the first PUNCH_ADDRS direct addresses of the CONNECT and nothing
    else, and a peer gets PUNCH_SESSIONS punches answered in PUNCH_WINDOW_S, one at a time."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._answered: dict[ID, list[float]] = {}  # peer → when its recent punches were answered
        self._answering: set[ID] = set()
        self.punches_refused = 0

    def starts(self, peer_id: ID) -> bool:
        return self.host.get_id().to_bytes() < peer_id.to_bytes()

    async def initiate_hole_punch(self, peer_id: ID) -> bool:
        if not self.starts(peer_id):
            return False  # the other end starts; our stream handler answers it
        return await super().initiate_hole_punch(peer_id)

    async def _try_unilateral_upgrade(self, peer_id: ID) -> bool:
        return False  # a peer reached through a relay is unreachable: its direct dials are in the punch

    def _decode_observed_addrs(self, addr_bytes: list[bytes]) -> list[Multiaddr]:
        direct = [a for a in super()._decode_observed_addrs(list(addr_bytes)) if "/p2p-circuit" not in str(a)]
        return direct[:PUNCH_ADDRS]

    async def _handle_dcutr_stream(self, stream) -> None:
        peer, now = stream.muxed_conn.peer_id, trio.current_time()
        recent = [t for t in self._answered.get(peer, ()) if now - t < PUNCH_WINDOW_S]
        if peer in self._answering or len(recent) >= PUNCH_SESSIONS:
            self.punches_refused += 1
            log.info("dcutr: refused a punch asked by %s (%d in %.0f s)", str(peer)[-8:], len(recent),
                     PUNCH_WINDOW_S)
            await stream.reset()
            return
        if len(self._answered) > 4096:  # forget peers whose window has passed
            self._answered = {p: ts for p, ts in self._answered.items() if ts and now - ts[-1] < PUNCH_WINDOW_S}
        self._answered[peer] = [*recent, now]
        self._answering.add(peer)
        try:
            await super()._handle_dcutr_stream(stream)
        finally:
            self._answering.discard(peer)

    async def _perform_hole_punch(self, peer_id: ID, addrs: list[Multiaddr], as_responder: bool = False) -> bool:
        token = _punch_to.set({str(a) for a in addrs[:PUNCH_ADDRS]})  # (the stock adds the peer store's)
        try:
            return await super()._perform_hole_punch(peer_id, addrs[:PUNCH_ADDRS], as_responder)
        finally:
            _punch_to.reset(token)

    async def _dial_peer(self, peer_id: ID, addr: Multiaddr, source=None, as_responder: bool = False) -> None:
        allowed = _punch_to.get()
        if allowed is None or str(addr) not in allowed:
            return  # not an address of this punch's CONNECT
        await super()._dial_peer(peer_id, addr, source, as_responder)


_punch_to: ContextVar[set[str] | None] = ContextVar("punch_to", default=None)  # the addresses one punch may dial


class OverBudget(ConnectionError):
    """A relay's hourly byte budget, or one network prefix's share of it, is spent: the circuit ends."""


class RelayBudget:
    """Bytes a relay forwards for others, an hour at a time: `per_hour` in all, a quarter of it for what
    one network prefix sends. Circuits held each 256 MiB and an hour, with no running total: two ids of
    one operator, one holding a slot and the other dialling it, could carry any traffic of theirs through
    a node that offered to relay for the mesh. Token buckets (refilled over the hour), so a burst such as
    a model fetched through a relay passes, and a steady stream is cut. Pure: the caller passes the time."""

    def __init__(self, per_hour: int = RELAY_BUDGET, now: float = 0.0):
        self.per_hour = per_hour
        self.total = TokenBucket(per_hour / 3600, per_hour, now)
        self.prefixes: dict[str, TokenBucket] = {}  # (only prefixes that relayed within the hour)
        self.refused = 0

    def _share(self, prefix: str, now: float) -> TokenBucket:
        bucket = self.prefixes.get(prefix)
        if bucket is None:
            if len(self.prefixes) > 4096:  # a full bucket is as good as none: forget those
                for key in [k for k, b in self.prefixes.items() if b.take(0, now) == 0 and b.tokens >= b.burst]:
                    del self.prefixes[key]
            bucket = self.prefixes[prefix] = TokenBucket(self.per_hour / 4 / 3600, self.per_hour / 4, now)
        return bucket

    def open(self, prefix: str, now: float) -> bool:
        """Whether a new circuit from `prefix` may start (neither bucket in debt)."""
        ok = self.total.take(0, now) == 0 and self._share(prefix, now).take(0, now) == 0
        self.refused += not ok
        return ok

    def spend(self, prefix: str, n: int, now: float) -> bool:
        """Charge `n` bytes sent by `prefix`; False once either bucket is past what the hour allows."""
        over = self._share(prefix, now).take(n, now) > 0
        return self.total.take(n, now) == 0 and not over


class _Counted:
    """A stream whose writes are counted (the bytes a relay forwards) and charged to the prefix of the peer
    that sent them; everything else passed through."""

    def __init__(self, stream, relay: CountingRelay, prefix: str):
        self._stream, self._relay, self._prefix = stream, relay, prefix

    async def write(self, data: bytes) -> None:
        if not self._relay.budget.spend(self._prefix, len(data), trio.current_time()):
            raise OverBudget(f"relay budget spent ({self._relay.budget.per_hour:,} bytes an hour)")
        await self._stream.write(data)
        self._relay.relayed_bytes += len(data)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class _Unshared(dict):
    """What the stock relay keeps as `_active_relays`: its open circuits keyed by *peer id*, and each
    circuit, when it ends, closes whatever is stored under its destination's id, i.e. the newest circuit
    to that peer, often someone else's. A stranger's CONNECT to D, closed after an honest peer's circuit
    to D opened, killed the honest circuit (StreamReset, 3 runs of 3: the red team, 2026-12-06). Here it
    holds nothing and never has a key, so the stock cleanup touches no circuit; each circuit closes its
    own two streams (`GatedRelay._relay_data`)."""

    def __setitem__(self, key, value) -> None:
        pass

    def __contains__(self, key) -> bool:
        return False


class GatedRelay(CircuitV2Protocol):
    """The stock relay, with at most PER_PREFIX_CIRCUITS circuits open at once from one network prefix to
    one destination. The stock relay grants a destination's 64 circuits to anyone who asks: one throwaway
    key took all 64 to a node behind NAT and held them idle (the circuit's limits are checked only when a
    byte passes), so every other peer got NO_RESERVATION for it. `where(peer)`: the IP a peer's direct
    link comes from ('' when none: counted by the peer itself).

    Also: a circuit ends only its own streams (see `_Unshared`), and a reservation is always held by the
    peer whose (Noise-authenticated) connection asked for it, never by one named in the request."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._active_relays = _Unshared()
        self.where: Callable[[object], str] = lambda peer: ""
        self.open_circuits: Counter[tuple[str, bytes]] = Counter()
        self.circuits_refused = 0
        self.reserve_asks = KeyedBuckets()  # network prefix → its RESERVEs (RESERVE_RATE)
        self.reserves_refused = 0
        self.budget = RelayBudget()  # (the node's own, --relay-budget, set by Nat)

    def prefix(self, peer: object) -> str:
        """The network prefix a peer's direct link comes from (the peer itself when it has none)."""
        ip = self.where(peer)
        return prefix_of_ip(ip) if ip else str(peer)

    async def _handle_connect(self, stream, msg) -> None:
        source = stream.muxed_conn.peer_id
        key = (self.prefix(source), bytes(msg.peer.id) if msg.HasField("peer") else b"")
        over = not self.budget.open(key[0], trio.current_time())
        if over or self.open_circuits[key] >= PER_PREFIX_CIRCUITS:
            self.circuits_refused += 1
            await self._send_status(stream, StatusCode.RESOURCE_LIMIT_EXCEEDED,
                                    "this relay's hourly budget is spent for your network" if over
                                    else "too many circuits from your network to this peer")
            await trio.sleep(0.5)  # (as the stock relay does: time to read the status before the reset)
            await stream.reset()
            return
        self.open_circuits[key] += 1
        try:
            await super()._handle_connect(stream, msg)
        finally:
            self.open_circuits[key] -= 1
            if not self.open_circuits[key]:
                del self.open_circuits[key]

    async def _handle_reserve(self, stream, msg) -> None:
        """The stock handler takes RESERVE's optional `peer` field as the holder: one key reserved slots in
        the names of four bystanders on a victim's /24, which then got RESOURCE_LIMIT_EXCEEDED for its own
        (and gave public nodes slots they never asked for). The holder is who asks."""
        msg.ClearField("peer")
        if not self.reserve_asks.spend(self.prefix(stream.muxed_conn.peer_id), (RESERVE_BURST, RESERVE_RATE),
                                       trio.current_time()):
            self.reserves_refused += 1
            await stream.reset()  # (unanswered: an answer would be the signature the flood is after)
            return
        with asked_by(stream.muxed_conn.peer_id):
            await super()._handle_reserve(stream, msg)

    async def _relay_data(self, src_stream, dst_stream, peer_id, deadline=None, circuit_data_limit=None) -> None:
        """One direction of a circuit; when it ends, for any reason, this circuit's two streams close (and
        so does the other direction: the nursery in `_handle_connect` ends and its count is released)."""
        try:
            await self._forward(src_stream, dst_stream, peer_id, deadline, circuit_data_limit)
        finally:
            with trio.CancelScope(shield=True):  # (each close is bounded by the relay's close_timeout)
                await self._close_stream(src_stream)
                await self._close_stream(dst_stream)

    async def _forward(self, src_stream, dst_stream, peer_id, deadline=None, circuit_data_limit=None) -> None:
        await CircuitV2Protocol._relay_data(self, src_stream, dst_stream, peer_id, deadline, circuit_data_limit)


class CountingRelay(GatedRelay):
    """The gated relay, counting the bytes it forwards for others (/metrics: homemesh_relayed_bytes)."""

    relayed_bytes = 0

    async def _forward(self, src_stream, dst_stream, peer_id, deadline=None, circuit_data_limit=None) -> None:
        sender = src_stream.muxed_conn.peer_id  # (each direction is charged to the peer that sends it)
        await super()._forward(src_stream, _Counted(dst_stream, self, self.prefix(sender)), peer_id, deadline,
                                  circuit_data_limit)


RELAY_HONEST_S, RELAY_DELAY_S = 20.0, 3.0  # the first: unless --fault-after says otherwise


class DroppingRelay(GatedRelay):
    """`--fault relay-drop`: a relay that carries each circuit honestly for RELAY_HONEST_S (so the two
    ends link up and trust it), then forwards nothing (tests: a hostile relay may only delay jobs)."""

    honest_s = RELAY_HONEST_S  # each circuit's honest seconds (--fault-after)

    async def _forward(self, src_stream, dst_stream, peer_id, deadline=None, circuit_data_limit=None) -> None:
        honest_until = trio.current_time() + self.honest_s
        while data := await self._read_stream_with_retry(src_stream):
            if trio.current_time() < honest_until:
                await dst_stream.write(data)


class DelayingRelay(GatedRelay):
    """`--fault relay-delay`: honest for RELAY_HONEST_S, then holds every chunk RELAY_DELAY_S."""

    honest_s = RELAY_HONEST_S  # each circuit's honest seconds (--fault-after)

    async def _forward(self, src_stream, dst_stream, peer_id, deadline=None, circuit_data_limit=None) -> None:
        honest_until = trio.current_time() + self.honest_s
        while data := await self._read_stream_with_retry(src_stream):
            if trio.current_time() >= honest_until:
                await trio.sleep(RELAY_DELAY_S)
            await dst_stream.write(data)


RELAYS = {"": CountingRelay, "relay-drop": DroppingRelay, "relay-delay": DelayingRelay}


class Nat:
    """The NAT services of one host and what they concluded: `reachability` and `circuits`. A node
    offers to relay once it knows it is reachable, unless its operator said `--no-relay`."""

    def __init__(self, host: IHost, relay: bool = True, fault: str = "", fault_after: float | None = None,
                 relay_budget: int = RELAY_BUDGET):
        self.host = host
        self.may_relay = relay
        self.autonat = DialBackAutoNAT(host, serve=True, confirmations=1)
        self.relay = RELAYS.get(fault, CountingRelay)(host, limits=RELAY_LIMITS, allow_hop=False)
        self.relay.budget = RelayBudget(relay_budget, trio.current_time())
        if fault_after is not None and fault.startswith("relay-"):
            self.relay.honest_s = fault_after  # a faulty relay's honest window per circuit (tests)
        self.reservations = ReservationGate(connected_ip(host))  # one machine cannot hold every slot
        self.relay.where = self.reservations.where  # nor one network every circuit to one peer
        install(self.relay.resource_manager, self.reservations)
        self.dcutr = Puncher(host)
        self.circuit = CircuitV2Transport(host, self.relay, RelayConfig(roles=RelayRole.STOP, limits=RELAY_LIMITS))
        self.reachability = "unknown"  # public | private | unknown
        self.circuits: dict[ID, str] = {}  # relay → our circuit address through it
        self.relaying = False

    def offer_relay(self) -> None:
        if self.may_relay and not self.relaying:
            self.relaying = True
            self.relay.allow_hop = True
            self.host.set_stream_handler(HOP, self.relay._handle_hop_stream)

    async def check(self, servers: list[ID], addrs: list[Multiaddr]) -> str:
        """Ask up to three connected peers to dial `addrs` back; public when one could."""
        verdicts = []
        for server in servers[:3]:
            try:
                with trio.fail_after(AUTONAT_TIMEOUT_S + 1):
                    status, _ = await self.autonat.query_server(server, [a.to_bytes() for a in addrs],
                                                                timeout=AUTONAT_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - a server that cannot answer gives no verdict
                log.info("autonat: no verdict from %s: %s", str(server)[-8:], exc)
                continue
            verdicts.append(status)
            self.autonat.update_status()
            if self.autonat.get_status() == AutoNATStatus.PUBLIC:
                break
        status = self.autonat.get_status()
        if status == AutoNATStatus.PUBLIC:
            self.reachability = "public"
        elif verdicts:
            self.reachability = "private"
        return self.reachability

    async def reserve(self, relay: ID, relay_addr: Multiaddr, nursery: trio.Nursery) -> str | None:
        """A reservation on `relay`; returns our circuit address through it, None when refused."""
        try:
            with trio.fail_after(AUTONAT_TIMEOUT_S):
                stream = await self.host.new_stream(relay, [HOP])
                ok = await self.circuit.reserve(stream, relay, nursery)
                await stream.close()
        except Exception as exc:  # noqa: BLE001 - a peer that is no relay refuses in several ways
            log.info("relay %s refused a reservation: %s", str(relay)[-8:], exc)
            return None
        if not ok:
            return None
        addr = f"{_base(relay_addr)}/p2p/{relay}/p2p-circuit/p2p/{self.host.get_id()}"
        self.circuits[relay] = addr
        return addr


def _base(addr: Multiaddr) -> str:
    """The transport part of a relay's address (without any /p2p/ suffix)."""
    return str(addr).split("/p2p/")[0]
