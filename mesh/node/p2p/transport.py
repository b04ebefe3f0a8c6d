"""The gateway's libp2p transport. One py-libp2p host (TCP + Noise + Yamux, nothing else: no plaintext,
no secio, no QUIC) keyed by the node's own Ed25519 key, so the peer a Noise handshake proves is the key
that must sign every envelope on that link. Each peer link is one `/homemesh/1` stream, handed to the
gateway as a `StreamConnection` whose bytes cross between trio and asyncio through `TrioThread`."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections import Counter, deque
from contextlib import asynccontextmanager
from typing import Callable

import libp2p.network.swarm as _swarm
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as new_noise_key
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX
from libp2p.tools.anyio_service import background_trio_service
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.transport.tcp.tcp import TCP
from multiaddr import Multiaddr

from mesh.node.dialscope import AddressRefused, Gate
from mesh.node.flow import Limits
from mesh.node.gateway import DIAL_TIMEOUT, Accept, Connection
from mesh.node.p2p.addresses import Target, components, key_of, parse, peer_id_of
from mesh.node.p2p.dht import Discovery
from mesh.node.p2p.inbound import gate_inbound
from mesh.node.p2p.nat import RELAY_BUDGET, WANT_RELAYS, Nat
from mesh.node.p2p.triothread import Mailbox, TransportClosed, TrioThread
from mesh.node.p2p.yamux import StrictYamux
from mesh.node.p2p.yamux import install as _strict_yamux
from mesh.wire.identity import Identity
from mesh.wire.messages import PeerRecord

log = logging.getLogger("mesh.node.p2p")
# py-libp2p 0.8.1's Yamux answers every read with a WINDOW_UPDATE frame unless told otherwise (read on each
# use): one more Noise-sealed frame per message. go-yamux's rule instead: update once half the window is
# consumed. Measured on 32 nodes: 5% of the libp2p thread's busy time went to these frames.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
PROTOCOL = TProtocol("/homemesh/1")
MAX_STREAMS_PER_PEER = 4  # /homemesh/1 streams one peer may hold open here at once
PUMP_HIGH, PUMP_ACK = 1 << 20, 256 << 10  # bytes read ahead of the gateway per link; ack granularity
SWEEP_S = 2.0  # how often links closed but still listed are forgotten
MAX_DIALING = 6  # new links this node negotiates at once; more wait their turn (see Libp2pTransport._dial)
# A dial's TCP connect must answer in DIAL_TIMEOUT (an address that is dead or drops fails fast and frees
# its turn); the whole dial (connect, Noise, Yamux, identify, our stream) has LINK_TIMEOUT. With 3 s for
# everything, one 32-node run on 2 cores saw 661 dials fail half done, each retried from the start by
# both ends; with 10 s none failed and the mesh linked sooner (bench/README.md).
LINK_TIMEOUT = 10.0
STUCK_AFTER = 3  # dials in a row failing on an existing link before that link is closed (a slow one is not dead)
CLOSE_GRACE_S = 1.0  # how long a closing link may spend sending what was queued (a `bye`)
NAT_FIRST_S, NAT_EVERY_S = 1.0, 30.0  # when to ask peers whether we are reachable, and how often again
RELAY_RETRY_S = 15.0  # a peer that refused a relay slot (no relay, not yet sure it is public, full) is asked again

# py-libp2p cuts its loggers off from the root at import (propagate=False, no handler), so Python's
# last-resort handler printed its routine dial failures on the node's console: send them to node.log.
_libp2p_log = logging.getLogger("libp2p")
_libp2p_log.propagate = True
_libp2p_log.setLevel(logging.ERROR)

# py-libp2p 0.8.1 waits a fixed 250 ms before every dial ("happy eyeballs"), even with one address:
# measured 255 ms per connect with it, ~8 ms without (notes/p2p.md).
_swarm._HAPPY_EYEBALLS_DELAY = 0
# py-libp2p 0.8.1 keeps what a peer writes past a stream's window (mesh/node/p2p/yamux.py)
_strict_yamux()


_LINK_ERRORS = (StreamError, MuxedStreamError, trio.BrokenResourceError, trio.ClosedResourceError)


async def _quietly(op) -> None:
    """Close or reset a stream whose link may already be gone."""
    try:
        await op()
    except _LINK_ERRORS:
        pass


class DialFailed(ConnectionError):
    """No link to that address: unreachable, timed out, refused the handshake, or another key answered."""


def _gate_dials(host: IHost, gate: Gate) -> None:
    """Put `gate` in front of every dial the swarm makes: addresses come from peers' records, DHT
    answers and observed-address reports, and a refused one fails like an unreachable one. Two entry
    points dial: `_dial_with_retry` (connects, the DHT's dials) and `dial_addr_as_responder`, with which
    the end that starts a hole punch dials the addresses the other end sent."""
    swarm = host.get_network()

    def gated(dial, punch: bool = False):
        async def dial_gated(addr: Multiaddr, peer_id: ID, source=None):
            named = str(addr)
            try:
                key = key_of(peer_id)
                gate.check(named)
                gate.admit(named, key, time.monotonic(), punch)
                addr = await _resolved(addr, gate)
            except (AddressRefused, OSError, ValueError, trio.TooSlowError) as exc:
                raise _swarm.SwarmException(f"{addr}: {exc}") from None
            ok = False
            try:
                conn = await dial(addr, peer_id, source)
                ok = True
                return conn
            finally:  # cancelled (a tarpit outlasting the link's time limit) is failed too
                gate.dialled(named, key, ok, time.monotonic())
        return dial_gated

    swarm._dial_with_retry = gated(swarm._dial_with_retry)
    swarm.dial_addr_as_responder = gated(swarm.dial_addr_as_responder, punch=True)


class _Turns:
    """At most `n` new links negotiated at once. A turn counts until its dial ends or for `hold_s`,
    whichever comes first: an address that accepts and then says nothing (a tarpit named in a
    stranger's record) holds one for `hold_s`, not for the whole LINK_TIMEOUT, so a few such records
    cannot stop the node's other dials."""

    def __init__(self, n: int, hold_s: float):
        self.n, self.hold_s = n, hold_s
        self.began: dict[object, float] = {}  # dials under way → when their turn began (trio clock)
        self.changed = trio.Event()

    def _holding(self, now: float) -> list[float]:
        return [t for t in self.began.values() if now - t < self.hold_s]

    @asynccontextmanager
    async def turn(self):
        while len(holding := self._holding(trio.current_time())) >= self.n:
            with trio.move_on_at(min(holding) + self.hold_s):  # a dial ends, or the oldest turn lapses
                await self.changed.wait()
        token = object()
        self.began[token] = trio.current_time()
        try:
            yield
        finally:
            del self.began[token]
            self.changed.set()
            self.changed = trio.Event()


def _bound_connects(host: IHost, source: str = "") -> None:
    """A TCP connect that has not answered in DIAL_TIMEOUT fails (see LINK_TIMEOUT). Given `source` (the
    specific IP the node listens on), connects leave from it: peers group replicas by the address a node
    connects from, and on a machine with several addresses the kernel may pick another."""
    family = "ip6" if ":" in source else "ip4"
    for tcp in host.get_network().transport_manager.get_transports():
        if not isinstance(tcp, TCP):
            continue

        def bounded(dial, tcp=tcp):
            async def dial_bounded(maddr: Multiaddr):
                try:
                    with trio.fail_after(DIAL_TIMEOUT):
                        if source and str(maddr).startswith(f"/{family}/"):
                            return await tcp.dial_with_source(maddr, (source, 0))
                        return await dial(maddr)
                except trio.TooSlowError:
                    raise OpenConnectionError(f"{maddr}: no answer in {DIAL_TIMEOUT:.0f} s") from None
            return dial_bounded
        tcp.dial = bounded(tcp.dial)


async def _resolved(addr: Multiaddr, gate: Gate) -> Multiaddr:
    """`addr` with a DNS name replaced by the address it resolves to, once the gate allows that address
    (libp2p would resolve the name itself, later, to wherever it points then)."""
    text = str(addr)
    if not text.startswith("/dns"):
        return addr
    _, proto, host, rest = text.split("/", 3)  # rest: "tcp/PORT/..."
    port = int(rest.split("/")[1])
    with trio.fail_after(DIAL_TIMEOUT):
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if proto == "dns4" or proto == "dns6":
        infos = [i for i in infos if (i[0] == socket.AF_INET) == (proto == "dns4")] or infos
    ip = infos[0][4][0]
    gate.check_resolved(text, ip)
    return Multiaddr(f"/ip{6 if ':' in ip else 4}/{ip}/{rest}")


def build_host(identity: Identity) -> IHost:
    """A libp2p host that speaks Noise and Yamux only (py-libp2p's default also accepts plaintext and
    secio, which let a dialer claim any public key: measured, notes/p2p.md)."""
    for name in list(logging.root.manager.loggerDict):  # some set their own level (auto_connector: INFO)
        if name.startswith("libp2p."):
            logging.getLogger(name).setLevel(logging.ERROR)
    keys = create_new_key_pair(identity.seed())
    noise = NoiseTransport(keys, noise_privkey=new_noise_key().private_key)
    # py-libp2p's auto-connector dials every peer in its peerstore until 50..100 links (measured: "initiating
    # 199 new dials" every 10 s per node); the node chooses its own links, so it is off.
    links = ConnectionConfig(min_connections=0, low_watermark=0, high_watermark=400, max_connections=512)
    # The node retries and backs off per peer itself (`Peer.dial_failed`). py-libp2p would also retry each
    # failed dial 3 times inside it, and then refuse every dial of that peer for 60 s ("negative cache"):
    # a peer that once timed out on a loaded machine, or came back from sleep, stayed unreachable a minute.
    host = new_host(key_pair=keys, sec_opt={TProtocol(NOISE): noise}, muxer_opt={TProtocol(YAMUX): StrictYamux},
                    enable_mDNS=False, enable_upnp=False, connection_config=links)
    swarm = host.get_network()
    swarm.retry_config = RetryConfig(max_retries=0)
    swarm._negative_peer_cache._ttl = 0.0
    return host


class StreamConnection(Connection):
    """A `/homemesh/1` stream as a gateway connection. In a node, a trio task pumps what the peer sends
    to this side through the transport's inbox, and pauses when more than PUMP_HIGH bytes wait unread
    here (so a throttled peer's stream is not read and its window fills); writes go through the outbox
    to one trio writer task, in order. Without a node loop (tests' blocking links) reads are pulled."""

    def __init__(self, thread: TrioThread, stream: INetStream, label: str, limits: Limits, kind: str,
                 outbox: Mailbox | None = None):
        super().__init__(label, limits)
        self.thread, self.stream, self.kind, self.outbox = thread, stream, kind, outbox
        self.authenticated = key_of(stream.muxed_conn.peer_id)
        self.peer_id: ID = stream.muxed_conn.peer_id
        self._send, self._queue = trio.open_memory_channel[bytes](math.inf)  # (held to MAX_BACKLOG: `backlog`)
        self._queued = 0  # bytes handed to write (asyncio side only)
        self._written = 0  # of those, bytes the writer task wrote to the stream (trio side only)
        self.finished = trio.Event()  # set (in trio) when the stream is closed and the writer is done
        self._closing = False
        # asyncio side of the pump
        self._chunks: deque[bytes] = deque()
        self._end: BaseException | None = None  # EOFError at the end, or the reset that ended it
        self._waiter: asyncio.Future | None = None
        self._consumed = 0
        # trio side of the pump
        self._unacked = 0
        self._drained = trio.Event()
        self._pump_scope: trio.CancelScope | None = None
        self._pump_done = trio.Event()
        self._write_scope = trio.CancelScope()

    @property
    def open(self) -> bool:
        return not self._closing and self.thread.running

    async def read(self, n: int) -> bytes:
        if self.outbox is None:
            return await self.thread.call(self._read, n)
        while not self._chunks:
            if self._end is not None:
                if isinstance(self._end, EOFError):
                    return b""
                raise ConnectionResetError(f"{self.label}: {self._end}")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        if len(data) > n:
            self._chunks.appendleft(data[n:])
            data = data[:n]
        self._consumed += len(data)
        if self._consumed >= PUMP_ACK:
            self.thread.post(self._ack, self._consumed)
            self._consumed = 0
        return data

    def fed(self, item: bytes | BaseException) -> None:
        """asyncio side: a chunk (or the end) the pump sent."""
        if isinstance(item, BaseException):
            self._end = item
        else:
            self._chunks.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def run_pump(self, inbox: Mailbox) -> None:
        """Trio task: read the stream and hand chunks over, pausing while too much waits unread."""
        self._pump_scope = trio.CancelScope()
        with self._pump_scope:
            await self._pump(inbox)
        self._pump_done.set()

    async def _pump(self, inbox: Mailbox) -> None:
        try:
            while True:
                while self._unacked > PUMP_HIGH:
                    self._drained = trio.Event()
                    await self._drained.wait()
                data = await self.stream.read(65536)
                self._unacked += len(data)
                inbox.put((self, data))
        except StreamEOF:
            inbox.put((self, EOFError()))
        except _LINK_ERRORS as exc:
            inbox.put((self, exc))

    def _ack(self, n: int) -> None:
        self._unacked -= n
        if self._unacked <= PUMP_HIGH:
            self._drained.set()

    async def _read(self, n: int) -> bytes:
        try:
            return await self.stream.read(n)
        except StreamEOF:
            return b""
        except (StreamError, MuxedStreamError) as exc:
            raise ConnectionResetError(f"{self.label}: {exc}") from None

    @property
    def backlog(self) -> int:
        """Written here, not yet taken by the stream (yamux waits for the peer's window: a peer that does
        not read leaves everything here). Each counter has one writer thread, so no lock."""
        return self._queued - self._written

    def write(self, data: bytes) -> None:
        if not self.open:
            return
        self._queued += len(data)
        if self.outbox is not None:
            self.outbox.put((self, data))
        else:
            self.thread.post(self._send.send_nowait, data)

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            if self.outbox is not None:
                self.outbox.put((self, None))
            else:
                self.thread.post(self._send.close)

    def drop(self) -> None:
        """End the link now, dropping what is queued: its peer went silent, and a write waits forever for
        window from a peer that reads nothing, so a close queued behind it would never come."""
        if self._end is None:
            self._closing = True
            self.fed(ConnectionResetError(f"{self.label}: dropped"))  # the gateway's reader ends now
            self.thread.post(self._write_scope.cancel)

    def sent(self, data: bytes | None) -> None:
        """trio side: what the outbox brought for this link (None: close it after what is queued)."""
        if data is None:
            self._send.close()
        else:
            try:
                self._send.send_nowait(data)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    async def run_writer(self) -> None:
        """Trio task: send queued frames in order, then close the stream (also when the link broke)."""
        try:
            with self._write_scope:
                async for data in self._queue:
                    await self.stream.write(data)
                    self._written += len(data)
        except _LINK_ERRORS:
            pass
        finally:
            self._closing = True
            with trio.move_on_after(CLOSE_GRACE_S) as scope:
                scope.shield = True
                await _quietly(self.stream.close)
                if self._pump_scope is not None:  # the peer has a moment to close its side too
                    await self._pump_done.wait()
            if self._pump_scope is not None and not self._pump_done.is_set():
                self._pump_scope.cancel()  # it did not: stop reading a link we dropped
                with trio.move_on_after(CLOSE_GRACE_S) as scope:
                    scope.shield = True
                    await _quietly(self.stream.reset)
            self.finished.set()


class Libp2pTransport:
    kind = "libp2p"

    def __init__(self, identity: Identity, limits: Limits | None = None, advertise: str = "",
                 nat: bool = True, relay: bool = True, fault: str = "", network: str = "",
                 discovery: bool = True, gate: Gate | None = None, fault_after: float | None = None,
                 relay_budget: int = RELAY_BUDGET):
        self.identity = identity
        self.relay_budget = relay_budget  # bytes an hour relayed for others (nat.RelayBudget)
        self.gate = gate or Gate()  # every dial of the swarm passes it: ours, the DHT's, hole punches
        self.advertise = advertise  # the operator's forwarded HOST:PORT, checked for reachability too
        self.use_nat, self.offer_relay, self.fault, self.fault_after = nat, relay, fault, fault_after
        self.network, self.use_discovery = network, discovery and bool(network)
        self.discovery: Discovery | None = None
        self.own_record: PeerRecord | None = None  # set by the node; the DHT re-publishes it
        self.nat: Nat | None = None
        self.relayed_peers: set[ID] = set()  # peers we once reached only through a relay
        self.not_relays: dict[ID, float] = {}  # peer → when it last refused us a relay slot (trio clock)
        self.on_address: Callable[[list[str]], None] | None = None  # asyncio: our circuits changed (first: best)
        self.on_direct: Callable[[bytes], None] | None = None  # asyncio: a relayed peer is now direct
        self.limits = limits or Limits()
        self.thread = TrioThread()
        self.host: IHost | None = None
        self.me = peer_id_of(identity.public_key)
        self.streams: Counter[ID] = Counter()
        self.stuck: Counter[ID] = Counter()  # dials in a row that failed on an existing link to that peer
        self.turns = _Turns(MAX_DIALING, DIAL_TIMEOUT)
        self.refused: Counter[str] = Counter()
        self.inbound: Counter[str] = Counter()  # inbound connections held, by network prefix (p2p/inbound.py)
        self._accept: Accept | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = trio.Event()
        self.inbox: Mailbox | None = None  # trio → asyncio: chunks read from links (a node only)
        self.outbox: Mailbox | None = None  # asyncio → trio: frames to write

    # -- asyncio side ----------------------------------------------------------------------------------
    async def start(self, sock: socket.socket, accept: Accept) -> list[str]:
        """Listen where `sock` was bound (the node binds early to fail fast; libp2p binds its own)."""
        host, port = sock.getsockname()[:2]
        sock.close()
        self._accept, self._loop = accept, asyncio.get_running_loop()
        self.thread.start()
        self.inbox = Mailbox(self._wake_loop, lambda item: item[0].fed(item[1]))
        self.outbox = Mailbox(self.thread.post, lambda item: item[0].sent(item[1]))
        family = "ip6" if ":" in host else "ip4"
        return await self.thread.call(self._listen, Multiaddr(f"/{family}/{host}/tcp/{port}"))

    async def dial(self, addr: str, key: bytes | None, limits: Limits) -> Connection:
        target = parse(addr)  # ValueError for a bad address: the caller's to report
        expected = peer_id_of(key) if key else target.peer
        if key and target.peer is not None and target.peer != expected:
            raise DialFailed(f"{addr} names peer {target.peer}, not {expected}")
        try:
            return await self.thread.call(self._dial, target, expected)
        except TransportClosed:
            raise
        except trio.TooSlowError:
            raise DialFailed(f"{addr}: no link in {LINK_TIMEOUT:.0f} s") from None

    async def close(self) -> None:
        if self.thread.running:
            try:
                await asyncio.wait_for(self.thread.call(self._drain), CLOSE_GRACE_S * 2)
            except (asyncio.TimeoutError, TransportClosed):
                pass
        await asyncio.to_thread(self.thread.stop)

    # -- discovery (the Kademlia DHT), asyncio side ----------------------------------------------------
    async def publish(self, record: PeerRecord, capabilities: list[str]) -> int:
        """Put our signed record in the DHT and announce what we offer; returns peers that stored it."""
        self.own_record = record
        if self.discovery is None:
            return 0
        return await self.thread.call(self._publish, record, capabilities)

    async def _publish(self, record: PeerRecord, capabilities: list[str]) -> int:
        stored = await self.discovery.publish(record)
        for cap in capabilities:
            if cap not in self.discovery.capabilities:
                await self.discovery.provide(cap)
        return stored

    async def find(self, capability: str, limit: int = 20, known: frozenset[bytes] = frozenset()) -> list[PeerRecord]:
        """Signed records (checked: the DHT is hearsay) of up to `limit` peers that announce
        `capability`, other than those whose keys are in `known` (each record lookup is a DHT walk,
        ~50 ms of CPU: measured)."""
        if self.discovery is None:
            return []
        return await self.thread.call(self._find, capability, limit, known)

    async def _find(self, capability: str, limit: int, known: frozenset[bytes]) -> list[PeerRecord]:
        peers = [p for p in await self.discovery.providers(capability) if key_of(p) not in known][:limit]
        found: list[PeerRecord] = []

        async def one(peer: ID) -> None:
            rec = await self.discovery.lookup(key_of(peer))
            if rec is not None:
                found.append(rec)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(one, peer)
        return found

    def discovery_stats(self) -> dict:
        return self.discovery.stats() if self.discovery else {}

    @property
    def reachability(self) -> str:
        return self.nat.reachability if self.nat else "unknown"

    @property
    def relayed_bytes(self) -> int:
        """Bytes this node forwarded for others as a relay since it started."""
        return getattr(self.nat.relay, "relayed_bytes", 0) if self.nat else 0

    def _link_of(self, stream: INetStream):
        """The swarm connection `stream` runs on (None once it is gone)."""
        for conn in self.host.get_network().get_connections(stream.muxed_conn.peer_id):
            if conn.muxed_conn is stream.muxed_conn:
                return conn
        return None

    def stream_kind(self, stream: INetStream) -> str:
        """direct, relayed, or hole-punched (direct to a peer first reached through a relay)."""
        peer = stream.muxed_conn.peer_id
        link = self._link_of(stream)
        if link is not None and _is_relayed(link):
            self.relayed_peers.add(peer)
            return "relayed"
        return "hole-punched" if peer in self.relayed_peers else "direct"

    def _observed_ip(self, stream: INetStream) -> str:
        """The IP the link under `stream` comes from: the peer's, or through a relay, the relay's (a
        relayed peer says nothing true about where it is; its relay is where it connects from)."""
        link = self._link_of(stream)
        addrs = link.get_transport_addresses() if link is not None else []
        return next((value for addr in addrs for proto, value in components(addr) if proto in ("ip4", "ip6")), "")

    # -- trio side -------------------------------------------------------------------------------------
    async def _listen(self, addr: Multiaddr) -> list[str]:
        return await self.thread.nursery.start(self._serve, addr)

    async def _serve(self, addr: Multiaddr, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.host = build_host(self.identity)
        _gate_dials(self.host, self.gate)
        self.inbound = gate_inbound(self.host, self.refused)
        ip = next((value for proto, value in components(addr) if proto in ("ip4", "ip6")), "")
        _bound_connects(self.host, "" if ip in ("0.0.0.0", "::") else ip)
        async with self.host.run([addr]):
            self.host.set_stream_handler(PROTOCOL, self._on_stream)
            self.thread.nursery.start_soon(self._sweep_closed)
            if not self.use_nat:
                task_status.started([str(a) for a in self.host.get_addrs()])
                await self._stopped.wait()
                return
            self.nat = Nat(self.host, self.offer_relay, self.fault, self.fault_after, self.relay_budget)
            async with background_trio_service(self.nat.relay), background_trio_service(self.nat.dcutr), \
                    trio.open_nursery() as nursery:
                if self.use_discovery:
                    self.discovery = Discovery(self.host, self.network, renew=lambda: self.own_record)
                    await nursery.start(self.discovery.run)
                task_status.started([str(a) for a in self.host.get_addrs()])
                nursery.start_soon(self._nat_loop, nursery)
                await self._stopped.wait()
                nursery.cancel_scope.cancel()

    async def _on_stream(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        try:
            key_of(peer)
        except ValueError:
            self.refused["not-ed25519"] += 1
            await stream.reset()
            return
        if self.streams[peer] >= MAX_STREAMS_PER_PEER:
            self.refused["too-many-streams"] += 1
            await stream.reset()
            return
        conn = self._wrap(stream, "in")
        self._handover(conn)
        await conn.finished.wait()  # the stream lives as long as this handler

    def _wrap(self, stream: INetStream, direction: str) -> StreamConnection:
        peer = stream.muxed_conn.peer_id
        kind = self.stream_kind(stream)
        conn = StreamConnection(self.thread, stream, f"{direction}:{str(peer)[-8:]}:{kind}", self.limits, kind,
                                self.outbox)
        conn.remote_ip = self._observed_ip(stream)
        self.streams[peer] += 1
        self.thread.nursery.start_soon(self._write_then_forget, conn)
        if self.inbox is not None:
            self.thread.nursery.start_soon(conn.run_pump, self.inbox)
        return conn

    def _wake_loop(self, fn) -> None:
        try:
            self._loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the node's loop is closed: nobody reads any more
            pass

    async def _write_then_forget(self, conn: StreamConnection) -> None:
        try:
            await conn.run_writer()
        finally:
            self.streams[conn.peer_id] -= 1
            if self.streams[conn.peer_id] <= 0:
                del self.streams[conn.peer_id]

    def _handover(self, conn: StreamConnection) -> None:
        if self._loop is None or self._accept is None:  # a client-only host (tests, benches) serves nothing
            conn.close()
            return
        try:
            self._loop.call_soon_threadsafe(self._accept, conn)
        except RuntimeError:  # the node's loop is gone: nobody will serve this stream
            conn.close()

    async def _dial(self, target: Target, expected: ID | None) -> StreamConnection:
        """A `/homemesh/1` stream to the peer, on a link we hold or a new one. New links queue for one
        of MAX_DIALING turns, and their time limit starts with the turn: a node that learned 31 peers
        at once started 31 handshakes on a loaded machine, most overran the limit half done (1,919
        "no answer in 3 s" in one 32-node run), and each retry cost both ends the work again."""
        if expected is not None:
            _forget_closed(self.host, expected)  # or the swarm reuses them and fails at once
        if expected is not None and self.host.get_network().get_connections(expected):
            return await self._open(target, expected)
        async with self.turns.turn():
            return await self._open(target, expected)

    async def _open(self, target: Target, expected: ID | None) -> StreamConnection:
        reused = False  # the stream rides a link already there (perhaps the peer's own): nothing was dialled
        try:
            with trio.fail_after(LINK_TIMEOUT):
                try:
                    if expected is None:
                        expected = await self._dial_unknown(target)
                    elif self.host.get_network().get_connections(expected):
                        # already linked (maybe through a relay, maybe hole-punched since), or the peer
                        # dialled us while this dial waited for its turn
                        reused = True
                    elif target.relayed:
                        await self._dial_circuit(target)
                    else:
                        # only the address this dial is for: py-libp2p adds it to those it holds for the
                        # key (where it first met it, what its identify claimed) and dials the first, so a
                        # peer back on a new port was dialled at its old one, and a hostile key chose where
                        self.host.get_peerstore().clear_addrs(expected)
                        await self.host.connect(PeerInfo(expected, [target.addr]))
                    stream = await self.host.new_stream(expected, [PROTOCOL])
                except (OSError, ValueError) as exc:
                    raise DialFailed(f"{target}: {exc}") from None
                except Exception as exc:  # py-libp2p wraps every failure in its own, unrelated classes
                    raise DialFailed(f"{target}: {type(exc).__name__}: {exc}") from None
        except (DialFailed, trio.TooSlowError):
            if reused:
                self.stuck[expected] += 1
                if self.stuck[expected] >= STUCK_AFTER:
                    await self._drop_links(expected)
            raise
        self.stuck.pop(expected, None)
        conn = self._wrap(stream, "out")
        conn.dialled = "" if reused else str(target.addr)
        return conn

    async def _sweep_closed(self) -> None:
        """Forget links py-libp2p closed but still lists. A close cancelled half way (a time limit, a
        stopping task) marks the link closed and skips removing it: the swarm then reuses it for new
        streams ("No valid connections available") and counts it against the 8 links allowed per
        peer, which in a 32-node loopback mesh refused 117 dials ("Established per peer limit
        exceeded: 8 >= 8"). Removing it also releases that count."""
        while not self._stopped.is_set():
            with trio.move_on_after(SWEEP_S):
                await self._stopped.wait()
            for peer in list(self.host.get_network().connections):
                _forget_closed(self.host, peer)

    async def _drop_links(self, peer: ID) -> None:
        """A link to `peer` that opens no stream any more is closed and forgotten, or every later dial
        would reuse it and fail alike: measured in a 32-node loopback mesh under load, one pair stayed
        apart for minutes, one end failing at once on a closed link still listed ("No valid connections
        available": `_forget_closed`), the other waiting 3 s on a link whose streams never opened."""
        log.info("the link to %s opens no streams: closed, the next dial makes a new one", str(peer)[-8:])
        self.stuck.pop(peer, None)
        with trio.move_on_after(CLOSE_GRACE_S):
            await self.host.get_network().close_peer(peer)

    async def _dial_unknown(self, target: Target) -> ID:
        """Dial an address whose peer id we do not know (`--bootstrap HOST:PORT`): Noise still proves
        who answered, and that id is then the only key its envelopes may carry."""
        addr = await _resolved(target.addr, self.gate)  # the owner's names pass; any other is held
        swarm = self.host.get_network()
        tcp = swarm.transport_manager.transport_for_dialing(addr)
        raw = await tcp.dial(addr)
        try:
            secure = await swarm.upgrader.security_multistream.secure_outbound(raw, None)
            peer = secure.get_remote_peer()
            key_of(peer)
            muxed = await swarm.upgrader.upgrade_connection(secure, peer)
        except BaseException:
            await raw.close()
            raise
        await swarm.add_conn(muxed, direction="outbound")
        return peer

    async def _dial_circuit(self, target: Target) -> None:
        """Reach a NATed peer through the relay its record names (connecting to the relay first)."""
        if self.nat is None:
            raise DialFailed(f"{target}: relayed addresses need the NAT services")
        relay_part, _, _ = str(target.addr).partition("/p2p-circuit")
        relay = parse(relay_part)
        if not self.host.get_network().get_connections(relay.peer):
            await self.host.connect(PeerInfo(relay.peer, [Multiaddr(relay_part.split("/p2p/")[0])]))
        await self.nat.circuit.dial(target.addr)
        self.relayed_peers.add(target.peer)

    # -- NAT -------------------------------------------------------------------------------------------
    async def _nat_loop(self, nursery: trio.Nursery) -> None:
        """Learn whether peers can dial us; if they can, relay for others; if not, hold reservations
        on relays and advertise the circuit address. Also move relayed links to hole-punched ones."""
        await trio.sleep(NAT_FIRST_S)
        next_check = 0.0
        if self.gate.own == "loopback":
            # a node on loopback has peers on its own machine only, and each of them can dial it: asking
            # them costs a connection per question, and under load a slow answer read as "private" (a
            # 32-node loopback mesh put one node behind a relay that way)
            self.nat.reachability = "public"
            self.nat.offer_relay()
            next_check = math.inf
        while True:
            peers = self._direct_peers()
            if peers and trio.current_time() >= next_check:
                verdict = await self.nat.check(peers, self._own_addrs())
                next_check = trio.current_time() + (NAT_EVERY_S if verdict != "unknown" else 2.0)
                if verdict == "public":
                    self.nat.offer_relay()
            if self._drop_lost_relays():
                self._tell(self.on_address, list(self.nat.circuits.values()))
            if self.nat.reachability == "private" and len(self.nat.circuits) < WANT_RELAYS:
                await self._reserve_relays(peers, nursery)
            self._upgrade_relayed()
            await trio.sleep(1.0)

    def _direct_peers(self) -> list[ID]:
        return [peer for peer, conns in self.host.get_network().get_connections_map().items()
                if any(not _is_relayed(c) for c in conns)]

    def _own_addrs(self) -> list[Multiaddr]:
        addrs = [Multiaddr(str(a).split("/p2p/")[0]) for a in self.host.get_addrs()]
        if self.advertise:
            addrs.insert(0, parse(self.advertise).addr)
        return [a for a in addrs if "/ip4/0.0.0.0/" not in str(a)][:4]

    async def _reserve_relays(self, peers: list[ID], nursery: trio.Nursery) -> None:
        now = trio.current_time()
        for peer in peers:
            if peer in self.nat.circuits or len(self.nat.circuits) >= WANT_RELAYS:
                continue
            if self.not_relays.get(peer, -1e9) > now - RELAY_RETRY_S:
                continue  # it refused lately (no relay, or full): ask others first
            self.not_relays[peer] = now
            remote = _remote_addr(self.host, peer)
            if remote is None:
                continue
            circuit = await self.nat.reserve(peer, remote, nursery)
            if circuit is not None:
                self.not_relays.pop(peer, None)
                log.info("reserved a relay slot: %s", circuit)
                self._tell(self.on_address, list(self.nat.circuits.values()))

    def _drop_lost_relays(self) -> bool:
        """Forget the slots of relays we no longer have a link to (the relay left, or slept): their
        circuits reach nobody, so they leave our record, and other relays are asked in their place."""
        swarm = self.host.get_network()
        lost = [relay for relay in self.nat.circuits if not swarm.get_connections(relay)]
        for relay in lost:
            log.info("lost the relay slot on %s: its link is gone", str(relay)[-8:])
            del self.nat.circuits[relay]
        return bool(lost)

    def _upgrade_relayed(self) -> None:
        """Tell the node about relayed peers that now have a direct link (DCUtR punched one): it opens a
        new stream, which the swarm puts on the direct connection, before the relayed one is closed."""
        for peer in list(self.relayed_peers):
            conns = self.host.get_network().get_connections(peer)
            if any(not _is_relayed(c) for c in conns) and any(_is_relayed(c) for c in conns):
                self._tell(self.on_direct, key_of(peer))

    def _tell(self, callback, arg) -> None:
        if callback is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(callback, arg)
            except RuntimeError:  # the node's loop is closed
                pass

    async def _drain(self) -> None:
        """Let closing links send what they queued, then stop the host."""
        with trio.move_on_after(CLOSE_GRACE_S):
            while self.streams:
                await trio.sleep(0.02)
        self._stopped.set()


def _forget_closed(host: IHost, peer: ID) -> None:
    """Remove `peer`'s links that are closed but still listed (which also releases py-libp2p's count)."""
    swarm = host.get_network()
    for conn in list(swarm.get_connections(peer)):
        if conn.is_closed:
            swarm.remove_conn(conn)


def _is_relayed(conn) -> bool:
    return any("/p2p-circuit" in str(a) for a in conn.get_transport_addresses())


def _remote_addr(host: IHost, peer: ID) -> Multiaddr | None:
    """Where we reach `peer` directly: the remote end of a direct connection, else a known address."""
    for conn in host.get_network().get_connections(peer):
        if _is_relayed(conn):
            continue
        for addr in conn.get_transport_addresses():
            if "/tcp/" in str(addr):
                return addr
    addrs = [a for a in host.get_peerstore().addrs(peer) if "/p2p-circuit" not in str(a)]
    return addrs[0] if addrs else None
