"""Peer and capability discovery over py-libp2p's Kademlia DHT (trio side: call it from the libp2p thread).

Values are our signed `PeerRecord`s only. Every node checks every value it is asked to store and every
value it gets back (`RecordValidator`): canonical JSON of a PeerRecord, at most `MAX_RECORD_BYTES`,
parsed with `mesh.wire.schema.parse`, signature, network, version and expiry checked by `check_record`,
and stored under the one short key derived from the record's own public key; among several, the newest
`issued` wins. Capabilities ("python", "llm:<sha256>") are provider records under short keys too.
Every store and every answer is capped.

py-libp2p 0.8.1 defects met here, measured, and what this module does about each:
- FIND_NODE refuses keys over 50 bytes (`key is not a valid PeerId`): every key here is <= 44 bytes.
- `KadDHT.get_value` answers from the local store without validating it or asking the network, so a
  node that once stored an old record kept returning it after a newer one was published (and a record
  expired by `expires` until libp2p's own 24 h validity ran out): `lookup` is our own two-phase query
  (FIND_NODE for the closest peers, then GET_VALUE from each) that validates every answer.
- `find_providers` returns only the local provider set whenever it is non-empty: a node that provides
  a capability itself, or that once looked it up (it caches every provider it hears of, for 48 h), never
  asked the network again and found only itself / stale entries. `providers` always asks the network
  and caches nothing.
- Provider records live 48 h (`PROVIDER_RECORD_EXPIRATION_INTERVAL`), so a node gone offline stays
  "a provider" for two days; the per-key cap of 20 then keeps newcomers out. We shorten the module
  constant to `PROVIDER_TTL_S` and re-provide every `REFRESH_S`.
- ADD_PROVIDER is rate limited by the receiver to 10 per peer per 10 s and excess streams are reset
  silently (our send is fire-and-forget): our own provides are paced (`_Pacer`) below that.
- The value store keeps up to 50 000 entries and the provider store any number of keys: both are
  capped here (`MAX_RECORDS`, `MAX_PROVIDER_KEYS`) by wrapping their insert methods on this instance.
- A PUT of the very value a node already holds is refused (select() returns the old one, the stream is
  reset, the sender logs a failure): our select prefers the later of two identical values.
- Logs `Failed to read DHT message from stream` (warning) for streams the other side reset or closed;
  harmless, and left to the node's logging configuration.
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import libp2p.kad_dht.provider_store as _provider_store
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.kad_dht.kad_dht import PROTOCOL_ID as KAD_PROTOCOL
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.pb.kademlia_pb2 import Record
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.records.validator import NamespacedValidator, Validator
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from mesh.core.trust import UNKNOWN_PREFIX
from mesh.errors import Rejected
from mesh.node.p2p.addresses import components, key_of
from mesh.node.peers import prefix_of_ip
from mesh.wire.canonical import canonical
from mesh.wire.messages import PeerRecord
from mesh.wire.records import RECORD_TTL_MS, check_record
from mesh.wire.schema import dump, parse

log = logging.getLogger("mesh.node.p2p.dht")

NAMESPACE = "hm"  # record keys are "/hm/<40 hex>" (44 bytes: FIND_NODE refuses keys over 50)
MAX_RECORD_BYTES = 4096
MAX_RECORDS = 1024  # records this node stores for others
MAX_PROVIDER_KEYS = 1024  # capability keys this node stores providers for (libp2p caps each at 20)
SWEEP_FULL_S = 10.0  # a full store looks for expired entries to make room at most this often
# Records one network prefix may have PUT here: one machine with fresh keys filled all 1,024 slots, and no
# newcomer's record could be stored until they expired. An honest node PUTs its own record only (to the
# 20 closest), so even a loopback mesh stays far below this.
PER_SOURCE = 128
PER_SOURCE_KEYS = 64  # capability keys (for providers) one prefix may have this node hold
_SENDER: contextvars.ContextVar[str] = contextvars.ContextVar("dht_sender", default="")
MAX_PROVIDERS = 20  # providers(…) returns at most this many
# Providers one answering peer, and all answering peers of one network prefix, may add to a lookup's result
# before every other answer has had its turn. An honest answer repeats the others' (each of the 20 closest
# stores every provider), so a peer rarely has much of its own to add; a peer whose id was ground close to the
# key answered 20 made-up providers and filled the whole list (red team, 2026-12-06). With 4 a peer, 8 a prefix,
# one machine holds at most 8 of the 20 places while other answers still name someone new; places left over
# after every answer ran dry or reached its cap are filled round-robin from the rest, so a mesh of few peers or
# prefixes (a loopback test: one prefix) still finds every provider. This node's own copy counts the same way,
# as one answer per prefix its providers were announced from (`merge_providers`).
PER_ANSWER = 4
PER_ANSWER_PREFIX = 8
MAX_CAPABILITIES = 32  # capabilities this node provides
MAX_CAPABILITY = 200  # characters
REFRESH_S = RECORD_TTL_MS / 1000 / 4  # re-publish / re-provide / routing refresh period (450 s)
PROVIDER_TTL_S = 3 * REFRESH_S  # a provider not re-announced for this long is forgotten
QUERY_TIMEOUT_S = 5.0  # one RPC to one peer
QUERY_PARALLEL = 8  # RPCs in flight per operation
CLOSEST = 20  # peers a record / provider record is stored at and asked for (k)
IDENTIFY_WAIT_S = 2.0  # how long a new connection's identify may take before we add it to the table
_PENDING = 256  # new connections queued for the routing table

# A provider not re-announced within PROVIDER_TTL_S is dropped (0.8.1 keeps them 48 h). Module-wide: it
# is read at call time by ProviderRecord.is_expired, get_providers and cleanup_expired.
_provider_store.PROVIDER_RECORD_EXPIRATION_INTERVAL = PROVIDER_TTL_S
# A provider's addresses kept, and the bytes of each: py-libp2p kept all of them, and one 4 MiB ADD_PROVIDER
# of 415,000 copies of an address held ~50 MB for the provider TTL; 16 throwaway keys grew a node past 1 GB,
# and every GET_PROVIDERS then wrote 67 MiB back (found by this project's red team, 2026-12-06)
MAX_PROVIDER_ADDRS = 4
MAX_ADDR_BYTES = 128
# What one Kademlia message may be (py-libp2p: 4 MiB). Ours are a record (MAX_RECORD_BYTES) or 20 peers'
# few addresses each: a few KB. Set in every module that read the library's constant by name.
MAX_DHT_MESSAGE = 64 * 1024
for _module in ("kad_dht", "provider_store", "value_store", "peer_routing"):
    importlib.import_module(f"libp2p.kad_dht.{_module}").MAX_DHT_MESSAGE_SIZE = MAX_DHT_MESSAGE


class RecordRefused(ValueError):
    """A DHT value that is not a usable PeerRecord for its key; `reason` is a counter key."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def now_ms() -> int:
    return int(time.time() * 1000)


def record_key(network: str, node_key: bytes) -> str:
    """The DHT key a node's record lives under: short (FIND_NODE takes at most 50 bytes) and tied to the
    network, so the same key in another network is another slot."""
    digest = hashlib.sha256(b"homemesh/dht/record\x00" + network.encode() + b"\x00" + node_key).digest()
    return f"/{NAMESPACE}/{digest[:20].hex()}"


def capability_key(network: str, capability: str) -> bytes:
    """The 20-byte DHT key a capability's providers are announced under."""
    if not capability or len(capability) > MAX_CAPABILITY:
        raise ValueError(f"a capability is 1..{MAX_CAPABILITY} characters")
    return hashlib.sha256(b"homemesh/dht/cap\x00" + network.encode() + b"\x00" + capability.encode()).digest()[:20]


def encode_record(rec: PeerRecord) -> bytes:
    return canonical(dump(rec))


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_record(value: bytes, network: str, key: str, now: int) -> PeerRecord:
    """The PeerRecord `value` holds if it may be stored under `key`; RecordRefused otherwise. Untrusted
    bytes go through json + schema.parse only."""
    if not isinstance(value, bytes) or len(value) > MAX_RECORD_BYTES:
        raise RecordRefused("oversized")
    try:
        obj = json.loads(value.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RecordRefused("not-json") from None
    try:
        rec = parse(PeerRecord, obj, "dht record")
    except Rejected:
        raise RecordRefused("bad-schema") from None
    if encode_record(rec) != value:
        raise RecordRefused("not-canonical")
    try:
        reason = check_record(rec, network, now)
    except (ValueError, TypeError, OverflowError):  # e.g. int() of a unicode digit in addr's port
        reason = "bad-record"
    if reason:
        raise RecordRefused(reason)
    if record_key(network, bytes.fromhex(rec.key)) != key:
        raise RecordRefused("wrong-key")
    return rec


class RecordValidator(Validator):
    """libp2p's hook, called on every PUT a node receives and on what it gets back."""

    def __init__(self, network: str, clock: Callable[[], int] = now_ms):
        self.network, self.clock = network, clock
        self.refused: Counter[str] = Counter()

    def decode(self, key: str, value: bytes) -> PeerRecord:
        try:
            return decode_record(value, self.network, key, self.clock())
        except RecordRefused as exc:
            self.refused[exc.reason] += 1
            raise

    def validate(self, key: str, value: bytes) -> None:
        self.decode(key, value)

    def select(self, key: str, values: list[bytes]) -> int:
        """The newest valid value; ties go to the larger bytes, then to the later index (so re-storing the
        value a node already holds is accepted, not reset)."""
        def score(i: int) -> tuple:
            try:
                return (1, self.decode(key, values[i]).issued, values[i], i)
            except RecordRefused:
                return (0, 0, b"", i)
        return max(range(len(values)), key=score)


class _Pacer:
    """At most `burst` events at once and `rate` per second after: with burst 5 and rate 0.5/s no 10 s
    window holds more than 10, the receiver's ADD_PROVIDER limit in 0.8.1."""

    def __init__(self, burst: int = 5, rate: float = 0.5):
        self.burst, self.rate = burst, rate
        self.tokens, self.at = float(burst), trio.current_time()

    async def wait(self) -> None:
        while True:
            now = trio.current_time()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await trio.sleep((1 - self.tokens) / self.rate)


class _Notifee(INotifee):
    """Queues each new connection's peer for the routing table (never blocks the swarm)."""

    def __init__(self, send: trio.MemorySendChannel):
        self.send = send

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = getattr(conn.muxed_conn, "peer_id", None)
        if peer is not None:
            try:
                self.send.send_nowait(peer)
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # the next refresh adds every connected peer anyway

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None


class Discovery:
    """Kademlia on `host` for one network. Start it with `await nursery.start(discovery.run)` once the
    host listens and its bootstrap peers are dialled; it adds peers as they connect and refreshes by
    itself every `REFRESH_S`. `renew`, if given, makes a fresh own record for each refresh."""

    def __init__(self, host: IHost, network: str, *, client: bool = False,
                 renew: Callable[[], PeerRecord] | None = None, clock: Callable[[], int] = now_ms):
        self.host, self.network, self.renew, self.clock = host, network, renew, clock
        self.me = host.get_id()
        self.validator = RecordValidator(network, clock)
        validators = NamespacedValidator({NAMESPACE: self.validator}, strict_validation=True)
        self.dht = KadDHT(host, DHTMode.CLIENT if client else DHTMode.SERVER, validator=validators,
                          validator_changed=True, strict_validation=True)
        self.refused = self.validator.refused  # reason -> count, values and providers refused here
        self.capabilities: dict[str, bytes] = {}
        self.looked_up: Counter[str] = Counter()  # capability -> provider walks: what this node searched for
        self.own: PeerRecord | None = None
        self._pacer = _Pacer()
        self._nursery: trio.Nursery | None = None
        self._origin: dict[bytes, str] = {}  # stored key → the network prefix of the peer that PUT it
        self._key_origin: dict[bytes, str] = {}  # provider key → the prefix of its first announcer
        self._provider_origin: dict[bytes, dict[str, str]] = {}  # provider key → provider → its prefix
        self._next_sweep = [0.0, 0.0]  # when a full value store, provider store may next be swept
        self._cap_stores()
        self._tag_senders()

    # -- bounds on what peers can make this node keep ------------------------------------------------
    def _cap_stores(self) -> None:
        values, providers = self.dht.value_store, self.dht.provider_store
        put_record, add_provider = values.put_record, providers.add_provider

        def capped_put_record(key: bytes, record: Record) -> None:
            source = _SENDER.get()  # the prefix of the peer whose PUT this is ('' for our own lookups)
            if key not in values.store:
                why = self._refusal(source, self._held_from, PER_SOURCE, lambda: len(values.store) >= MAX_RECORDS,
                                    0, self.prune, "store-full")
                if why:
                    self.refused[why] += 1
                    return
            put_record(key, record)
            if source and key in values.store:
                self._origin[key] = source

        def capped_add_provider(key: bytes, provider: PeerInfo) -> None:
            try:
                key_of(provider.peer_id)
            except ValueError:
                self.refused["provider-not-ed25519"] += 1
                return
            source = _SENDER.get()
            if key not in providers.providers:
                why = self._refusal(source, self._keys_from, PER_SOURCE_KEYS,
                                    lambda: len(providers.providers) >= MAX_PROVIDER_KEYS, 1,
                                    providers.cleanup_expired, "providers-full")
                if why:
                    self.refused[why] += 1
                    return
            elif not self._room_for(providers.providers[key], key, str(provider.peer_id), source):
                self.refused["providers-key-full"] += 1
                return
            addrs = [a for a in provider.addrs[:MAX_PROVIDER_ADDRS] if len(a.to_bytes()) <= MAX_ADDR_BYTES]
            add_provider(key, PeerInfo(provider.peer_id, addrs))
            if key in providers.providers:
                self._note_origin(key, str(provider.peer_id), source, providers.providers)

        values.put_record = capped_put_record  # type: ignore[method-assign]
        providers.add_provider = capped_add_provider  # type: ignore[method-assign]

    def _note_origin(self, key: bytes, peer: str, source: str, stored: dict) -> None:
        """Remember the prefix `peer` was announced from for capability `key` (stored now in `stored`, the
        provider store's key → providers). What is remembered of providers that expired is dropped once it
        outgrows what is held: on a list that never filled, every provider that came and went stayed."""
        if source:
            self._key_origin.setdefault(key, source)
        origin = self._provider_origin.setdefault(key, {})
        origin[peer] = source
        if len(origin) > 2 * MAX_PROVIDERS:
            for gone in [p for p in origin if p not in stored[key]]:
                del origin[gone]
        if len(self._provider_origin) > MAX_PROVIDER_KEYS:  # keys whose providers all expired
            for gone in [k for k in self._provider_origin if k not in stored]:
                del self._provider_origin[gone]

    def _room_for(self, held: dict, key: bytes, peer: str, source: str) -> bool:
        """Whether a provider from prefix `source` may join a capability's providers (py-libp2p keeps 20,
        first come first served: 18 throwaway keys on one machine held `python` on every node, and a new
        honest worker was stored nowhere). A full list gives up the oldest of the prefix holding most of
        it, when that prefix holds more than the newcomer's does plus one."""
        if peer in held or len(held) < MAX_PROVIDERS:
            return True
        origin = self._provider_origin.setdefault(key, {})
        for gone in [p for p in origin if p not in held]:
            del origin[gone]
        counts = Counter(origin.get(p, "") for p in held)
        crowded, most = counts.most_common(1)[0]
        if most <= counts.get(source, 0) + 1:
            return False
        oldest = min((p for p in held if origin.get(p, "") == crowded), key=lambda p: held[p].timestamp)
        del held[oldest]
        origin.pop(oldest, None)
        return True

    def _tag_senders(self) -> None:
        """Let the value store know which network prefix each PUT comes from (`_SENDER`)."""
        handle = self.dht.handle_stream

        async def handle_stream(stream: INetStream) -> None:
            """py-libp2p's handler, with the network prefix of the peer it serves known to the store."""
            # a sender whose link's prefix cannot be told counts as UNKNOWN_PREFIX, all such as one source: ''
            # (this node's own lookups, which the per-source caps skip) let strangers skip them too
            token = _SENDER.set(_source_of(self.host, stream) or UNKNOWN_PREFIX)
            try:
                await handle(stream)
            finally:
                _SENDER.reset(token)

        self.dht.handle_stream = handle_stream  # type: ignore[method-assign]
        if self.dht.mode == DHTMode.SERVER:  # (registered already, with the unwrapped handler)
            self.host.set_stream_handler(KAD_PROTOCOL, handle_stream)

    def _refusal(self, source: str, held_from: Callable[[str], int], per_source: int, full: Callable[[], bool],
                 which: int, sweep: Callable[[], object], full_reason: str) -> str:
        """Why a new key from peers of prefix `source` is refused ('' when it may be kept): the prefix
        already has `per_source` kept, or the store is `full` even after a sweep (when one is `_due`)."""
        if source and held_from(source) >= per_source:
            return "source-full"
        if full() and self._due(which):
            sweep()
        return full_reason if full() else ""

    def _due(self, which: int) -> bool:
        """Whether a full store (0: values, 1: providers) may be swept for expired entries now: at most
        every SWEEP_FULL_S. Sweeping on each refused PUT re-checked all 1,024 records (0.2 s) per PUT,
        and one attacker kept a core busy (212 ms of node CPU per PUT, tests/security/test_dht_flood.py)."""
        now = time.monotonic()
        if now < self._next_sweep[which]:
            return False
        self._next_sweep[which] = now + SWEEP_FULL_S
        return True

    def _held_from(self, source: str) -> int:
        """Records stored here that peers of network prefix `source` PUT."""
        return _count_from(self._origin, self.dht.value_store.store, source)

    def _keys_from(self, source: str) -> int:
        """Provider keys held here that peers of network prefix `source` were the first to announce."""
        return _count_from(self._key_origin, self.dht.provider_store.providers, source)

    def prune(self) -> int:
        """Drop stored values that no longer check (expired); returns how many."""
        store = self.dht.value_store.store
        now = self.clock()
        dead = []
        for key, (rec, _validity) in store.items():
            try:
                decode_record(rec.value, self.network, key.decode("utf-8", "replace"), now)
            except RecordRefused:
                dead.append(key)
        for key in dead:
            store.pop(key, None)
        self.dht.provider_store.cleanup_expired()
        return len(dead)

    # -- running -------------------------------------------------------------------------------------
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[ID](_PENDING)
        notifee = _Notifee(send)
        self.host.get_network().register_notifee(notifee)
        try:
            async with background_trio_service(self.dht), trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.bootstrap()
                nursery.start_soon(self._admit, receive)
                nursery.start_soon(self._maintain)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            try:
                self.host.get_network().remove_notifee(notifee)  # type: ignore[attr-defined]
            except (AttributeError, ValueError):
                pass

    async def bootstrap(self) -> int:
        """Add every connected peer that serves the DHT to the routing table, then look ourselves up to
        learn the peers near us. Returns the routing table's size."""
        async with trio.open_nursery() as nursery:
            for peer in list(self.host.get_connected_peers()):
                nursery.start_soon(self._add, peer)
        if self.dht.routing_table.size():
            with trio.move_on_after(QUERY_TIMEOUT_S * 2):
                await self.dht.peer_routing.find_closest_peers_network(self.me.to_bytes())
        return self.dht.routing_table.size()

    async def peer_connected(self, peer: ID) -> None:
        """For callers that see connections first; `run` already watches the swarm."""
        await self._add(peer)

    async def _admit(self, receive: trio.MemoryReceiveChannel) -> None:
        async with receive:
            async for peer in receive:
                self._nursery.start_soon(self._add, peer)

    async def _add(self, peer: ID) -> None:
        if peer == self.me:
            return
        try:
            key_of(peer)
        except ValueError:
            return
        store = self.host.get_peerstore()
        with trio.move_on_after(IDENTIFY_WAIT_S):  # add_peer checks KAD support only once identify ran
            while not _protocols(store, peer):
                await trio.sleep(0.05)
        await self.dht.add_peer(peer)

    async def _maintain(self) -> None:
        while True:
            await trio.sleep(REFRESH_S * random.uniform(0.9, 1.1))
            try:
                await self.refresh()
            except Exception as exc:  # py-libp2p raises assorted types; the next round tries again
                log.warning("dht refresh failed: %s: %s", type(exc).__name__, exc)

    async def refresh(self) -> None:
        """One maintenance round: prune, re-bootstrap, re-publish our record, re-provide."""
        self.prune()
        await self.bootstrap()
        record = self.renew() if self.renew is not None else self.own
        if record is not None and record.expires - self.clock() > REFRESH_S * 1000:
            await self.publish(record)
        for capability in list(self.capabilities):
            await self.provide(capability)

    # -- records -------------------------------------------------------------------------------------
    async def publish(self, record: PeerRecord) -> int:
        """Store `record` here and at the closest peers to its key; returns how many peers took it.
        ValueError (RecordRefused) for a record that does not check."""
        key = record_key(self.network, bytes.fromhex(record.key))
        value = encode_record(record)
        decode_record(value, self.network, key, self.clock())
        kb = key.encode()
        store = self.dht.value_store
        held = store.get(kb)
        if held is not None and held.value != value and self.validator.select(key, [held.value, value]) == 0:
            raise RecordRefused("older-than-stored")
        store.put(kb, value)
        store.local_keys.discard(kb)  # libp2p would re-send it after 22 h, long expired: we re-publish
        self.own = record
        peers = await self._closest(kb)
        acks = await self._each(peers, lambda p: store._store_at_peer(p, kb, value))
        return sum(1 for ok in acks.values() if ok)

    async def lookup(self, node_key: bytes) -> PeerRecord | None:
        """The newest valid record of `node_key`, from this node and the closest peers to its key."""
        key = record_key(self.network, node_key)
        kb = key.encode()
        store = self.dht.value_store
        found: dict[ID, Record] = {}
        held = store.get(kb)
        if held is not None:
            found[self.me] = held
        peers = await self._closest(kb)

        async def ask(peer: ID) -> Record | None:
            got = await store._get_from_peer(peer, kb, return_record=True)
            return got if isinstance(got, Record) and got.value else None

        for peer, rec in (await self._each(peers, ask)).items():
            if rec is not None:
                found[peer] = rec
        valid: dict[ID, tuple[PeerRecord, Record]] = {}
        for peer, rec in found.items():
            try:
                valid[peer] = (self.validator.decode(key, rec.value), rec)
            except RecordRefused:
                pass
        if not valid:
            return None
        best_peer = max(valid, key=lambda p: (valid[p][0].issued, valid[p][1].value))
        best, best_rec = valid[best_peer]
        stale = [p for p in peers if p not in valid or valid[p][1].value != best_rec.value]
        if held is not None and held.value != best_rec.value:
            store.put_record(kb, _copy(best_rec))
        if stale and self._nursery is not None:  # entry correction, off the caller's path
            self._nursery.start_soon(self._correct, stale, kb, best_rec)
        return best

    async def _correct(self, peers: list[ID], kb: bytes, rec: Record) -> None:
        store = self.dht.value_store
        await self._each(peers, lambda p: store._store_at_peer(p, kb, rec.value, record=_copy(rec)))

    # -- capabilities --------------------------------------------------------------------------------
    async def provide(self, capability: str) -> int:
        """Announce that this node offers `capability` (and keep re-announcing it); returns how many
        peers were told (ADD_PROVIDER has no answer in 0.8.1)."""
        kb = capability_key(self.network, capability)
        if capability not in self.capabilities and len(self.capabilities) >= MAX_CAPABILITIES:
            raise ValueError(f"at most {MAX_CAPABILITIES} capabilities")
        self.capabilities[capability] = kb
        ps = self.dht.provider_store
        ps.add_provider(kb, PeerInfo(self.me, list(self.host.get_addrs())))
        await self._pacer.wait()
        peers = await self._closest(kb)
        sent = await self._each(peers, lambda p: ps._send_add_provider(p, kb))
        return sum(1 for ok in sent.values() if ok)

    def withdraw(self, capability: str) -> None:
        """Stop announcing `capability`; peers forget it within PROVIDER_TTL_S."""
        kb = self.capabilities.pop(capability, None)
        if kb is not None:
            self.dht.provider_store.providers.get(kb, {}).pop(str(self.me), None)

    async def providers(self, capability: str, limit: int = MAX_PROVIDERS) -> list[ID]:
        """Up to `limit` other peers announcing `capability`: those this node holds, then those the closest
        peers to its key name, taken in turn (`merge_providers`). Hints only: a peer may list anyone; dial
        them (Noise proves who answers) or `lookup` their records.

        Our own copy is capped by the prefix each provider was announced from, like an answer: a node outside
        the k closest hears no honest provider of a rare capability, and one machine's 20 throwaway keys
        filled its copy; taken whole, they were all this returned (tests/p2p/test_dht.py)."""
        limit = max(0, min(limit, MAX_PROVIDERS))
        kb = capability_key(self.network, capability)
        if capability in self.looked_up or len(self.looked_up) < MAX_CAPABILITIES:
            self.looked_up[capability] += 1
        ps = self.dht.provider_store
        origin = self._provider_origin.get(kb, {})
        own = [(origin.get(str(info.peer_id), ""), info.peer_id) for info in ps.get_providers(kb)
               if self._usable_provider(info.peer_id)]
        peers = await self._closest(kb)
        answers = await self._each(peers, lambda p: ps._get_providers_from_peer_with_closers(p, kb))
        named = [(self._prefix_of_peer(peer), [info.peer_id for info in answers[peer][0][:MAX_PROVIDERS]
                                                if self._usable_provider(info.peer_id)])
                 for peer in peers if answers.get(peer)]  # in distance order: not who replied first
        out: dict[ID, None] = {}
        merge_providers(named, out, limit, own)
        return list(out)

    def _usable_provider(self, peer: ID) -> bool:
        """A provider worth returning: not this node, and an Ed25519 key (the only ones we can check)."""
        if peer == self.me:
            return False
        try:
            key_of(peer)
        except ValueError:
            return False
        return True

    def _prefix_of_peer(self, peer: ID) -> str:
        """The network prefix of our link to `peer` ('' when there is none left to tell)."""
        for conn in self.host.get_network().get_connections(peer):
            prefix = _prefix_of_conn(conn)
            if prefix:
                return prefix
        return ""

    # -- helpers -------------------------------------------------------------------------------------
    async def _closest(self, kb: bytes) -> list[ID]:
        with trio.move_on_after(QUERY_TIMEOUT_S * 2):
            peers = await self.dht.peer_routing.find_closest_peers_network(kb, CLOSEST)
            return [p for p in peers if p != self.me][:CLOSEST]
        return [p for p in self.dht.routing_table.find_local_closest_peers(kb, CLOSEST) if p != self.me]

    async def _each(self, peers: list[ID], call: Callable[[ID], Awaitable[Any]]) -> dict[ID, Any]:
        """`call(peer)` for each peer, QUERY_PARALLEL at a time, each bounded by QUERY_TIMEOUT_S; a
        peer that failed or timed out is absent from the answer."""
        out: dict[ID, Any] = {}
        limiter = trio.CapacityLimiter(QUERY_PARALLEL)

        async def one(peer: ID) -> None:
            async with limiter:
                with trio.move_on_after(QUERY_TIMEOUT_S):
                    try:
                        out[peer] = await call(peer)
                    except Exception as exc:  # py-libp2p's stream errors come in many types
                        log.debug("dht rpc to %s failed: %s", peer, exc)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(one, peer)
        return out

    def stats(self) -> dict[str, Any]:
        return {"routing_table": self.dht.routing_table.size(), "records": len(self.dht.value_store.store),
                "provider_keys": len(self.dht.provider_store.providers), "refused": dict(self.refused),
                "capabilities": sorted(self.capabilities), "looked_up": dict(self.looked_up)}


def _protocols(store: Any, peer: ID) -> list:
    try:
        return store.get_protocols(peer) or []
    except Exception:  # the peerstore raises PeerStoreError for a peer it has no data on
        return []


def _copy(rec: Record) -> Record:
    out = Record()
    out.CopyFrom(rec)
    out.ClearField("timeReceived")
    return out


def _count_from(origin: dict[bytes, str], held, source: str) -> int:
    """How many keys still `held` came from `source` (forgetting, in `origin`, those no longer held)."""
    for gone in [k for k in origin if k not in held]:
        del origin[gone]
    return sum(1 for s in origin.values() if s == source)


def merge_providers(answers: list[tuple[str, list[ID]]], out: dict[ID, None], limit: int,
                    own: Sequence[tuple[str, ID]] = ()) -> None:
    """Add the providers `answers` name (each the answering peer's network prefix and its list, closest
    peer first) to `out`, up to `limit`: round-robin, and first at most PER_ANSWER from one answer and
    PER_ANSWER_PREFIX from one prefix, so no single close peer or machine decides the whole list; then, if
    places are left, the rest, still round-robin.

    `own` is this node's own copy, (the prefix each provider was announced from, provider) in store order.
    It goes first, but as one answer per prefix: at most PER_ANSWER of a prefix, counted against that
    prefix's PER_ANSWER_PREFIX too (one machine's throwaway keys filled a node's whole copy); its rest joins
    the last round-robin, first in each turn. A copy no prefix holds more than PER_ANSWER of is taken whole
    and in order, as before."""
    from_prefix: Counter[str] = Counter()
    mine: dict[str, list[ID]] = {}
    for prefix, peer in own:
        mine.setdefault(prefix, []).append(peer)
        if len(out) < limit and peer not in out and from_prefix[prefix] < PER_ANSWER:
            out[peer] = None
            from_prefix[prefix] += 1
    pending = [(prefix, iter(ids)) for prefix, ids in answers]
    _rounds(pending, out, limit, PER_ANSWER, PER_ANSWER_PREFIX, from_prefix)
    _rounds([(prefix, iter(ids)) for prefix, ids in mine.items()] + pending, out, limit, limit, limit)


def _rounds(pending: list[tuple[str, Any]], out: dict[ID, None], limit: int, per_answer: int,
            per_prefix: int, from_prefix: Counter[str] | None = None) -> None:
    """Take one provider not yet in `out` from each answer in turn until `out` holds `limit`, or each
    answer has run dry or reached its cap (an answer keeps its place in its list for the next call);
    `from_prefix` counts what each prefix already added, and is added to."""
    from_answer = [0] * len(pending)
    from_prefix = Counter() if from_prefix is None else from_prefix
    live = list(range(len(pending)))
    while live and len(out) < limit:
        for i in list(live):
            prefix, ids = pending[i]
            new = None
            if len(out) < limit and from_answer[i] < per_answer and from_prefix[prefix] < per_prefix:
                new = next((p for p in ids if p not in out), None)
            if new is None:
                live.remove(i)
                continue
            out[new] = None
            from_answer[i] += 1
            from_prefix[prefix] += 1


def _prefix_of_conn(conn: INetConn) -> str:
    """The network prefix of the address a connection runs to ('' when it cannot be told)."""
    for addr in conn.get_transport_addresses():
        ip = next((v for proto, v in components(addr) if proto in ("ip4", "ip6")), "")
        if ip:
            return prefix_of_ip(ip)
    return ""


def _source_of(host: IHost, stream: INetStream) -> str:
    """The network prefix of the link a stream runs on ('' when it cannot be told)."""
    for conn in host.get_network().get_connections(stream.muxed_conn.peer_id):
        if conn.muxed_conn is stream.muxed_conn:
            return _prefix_of_conn(conn)
    return ""
