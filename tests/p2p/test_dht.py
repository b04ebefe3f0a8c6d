"""Discovery over Kademlia: real py-libp2p hosts on loopback in one trio.run (an honest publisher, honest
readers, an attacker running an unchecked DHT), plus the value checks on their own (sans-I/O)."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import statistics
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest
import trio
import varint
from libp2p.kad_dht.kad_dht import PROTOCOL_ID as KAD_PROTOCOL
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.peer.peerinfo import PeerInfo
from libp2p.records.validator import BlankValidator, NamespacedValidator
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from mesh.node.p2p import dht as dht_mod
from mesh.node.p2p.addresses import peer_id_of
from mesh.node.p2p.dht import (
    _SENDER,
    MAX_PROVIDER_ADDRS,
    MAX_PROVIDERS,
    MAX_RECORD_BYTES,
    NAMESPACE,
    PER_ANSWER,
    PER_ANSWER_PREFIX,
    PER_SOURCE_KEYS,
    Discovery,
    RecordRefused,
    RecordValidator,
    capability_key,
    decode_record,
    encode_record,
    merge_providers,
    record_key,
)
from mesh.node.p2p.transport import _bound_connects, build_host
from mesh.wire.identity import Identity
from mesh.wire.records import RECORD_TTL_MS, make_record
from mesh.wire.schema import dump

NET = "homemesh-test"


@pytest.fixture(autouse=True)
def quiet_kademlia():
    """py-libp2p warns for every DHT stream the other side resets (thousands here); capturing them made
    the 30-host test ~3x slower."""
    logger = logging.getLogger("libp2p.kad_dht")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def now() -> int:
    return int(time.time() * 1000)


def rec_of(ident: Identity, port: int = 4750, issued: int | None = None, kinds=("python",)):
    return make_record(ident, NET, f"127.0.0.1:{port}", list(kinds), [], False, issued or now())


# -- the checks alone ----------------------------------------------------------------------------------

def test_values_are_checked_before_anything_keeps_them():
    a, b = Identity.generate(), Identity.generate()
    rec = rec_of(a)
    key_a, key_b = record_key(NET, a.public_key), record_key(NET, b.public_key)
    assert len(key_a.encode()) <= 50 and key_a.startswith(f"/{NAMESPACE}/")
    assert len(capability_key(NET, "llm:" + "ab" * 32)) == 20
    assert decode_record(encode_record(rec), NET, key_a, now()) == rec

    forged = rec_of(a)
    forged.addr = "10.0.0.1:1"
    body = json.dumps(dump(rec), indent=1).encode()
    expired = rec_of(a, issued=now() - 2 * RECORD_TTL_MS)
    cases = {
        "bad-record": (encode_record(forged), key_a),
        "wrong-key": (encode_record(rec), key_b),
        "expired-record": (encode_record(expired), key_a),
        "oversized": (b"{" + b" " * MAX_RECORD_BYTES + b"}", key_a),
        "not-json": (b"\x00\xff garbage", key_a),
        "not-canonical": (body, key_a),
        "bad-schema": (json.dumps({**dump(rec), "extra": 1}).encode(), key_a),
    }
    for reason, (value, key) in cases.items():
        with pytest.raises(RecordRefused) as err:
            decode_record(value, NET, key, now())
        assert err.value.reason == reason
    with pytest.raises(RecordRefused):  # another network's record is another network's
        decode_record(encode_record(rec), "other-net", record_key("other-net", a.public_key), now())
    with pytest.raises(RecordRefused):
        decode_record(b'{"key": NaN}', NET, key_a, now())


def test_the_newest_valid_value_wins():
    a = Identity.generate()
    key = record_key(NET, a.public_key)
    old, new = rec_of(a, issued=now() - 5000), rec_of(a, 4751)
    bad = rec_of(a, issued=now() + 1000)
    bad.addr = "10.0.0.1:1"
    v = RecordValidator(NET)
    values = [encode_record(old), encode_record(bad), encode_record(new), b"junk"]
    assert v.select(key, values) == 2
    assert v.select(key, [encode_record(new), encode_record(old)]) == 0
    assert v.select(key, [encode_record(new), encode_record(new)]) == 1  # re-storing the same value is fine


@pytest.mark.timeout(60)
def test_what_a_node_remembers_of_providers_that_expired_stays_bounded():
    """Each provider's prefix was remembered until the capability's list was full: on a list that never
    filled, every provider that came and expired stayed in `_provider_origin` for good (200 announcements
    with 5 live at a time: 200 kept)."""
    async def main() -> tuple[int, int, set[str]]:
        disc = Discovery(build_host(Identity.generate(0)), NET)
        key, store = capability_key(NET, "python"), disc.dht.provider_store
        token = _SENDER.set("10.1.2.0/24")
        try:
            for _ in range(200):
                store.add_provider(key, PeerInfo(peer_id_of(Identity.generate(0).public_key), []))
                held = store.providers[key]
                if len(held) > 5:  # the oldest expires, as the store's cleanup drops it
                    del held[next(iter(held))]
        finally:
            _SENDER.reset(token)
        return len(disc._provider_origin[key]), len(store.providers[key]), set(store.providers[key])

    kept, live, held = trio.run(main)
    assert live == 5 and kept <= 2 * MAX_PROVIDERS, kept
    assert held  # the live providers' prefixes are still known


def test_no_one_answer_or_prefix_fills_a_provider_lookup():
    """Found by this project's red team (2026-12-06): the closest peer's answer was taken first and whole,
    so one peer whose id was ground close to a capability's key answered 20 made-up providers and readers
    found no honest one. Answers are taken in turn, each (and each prefix) capped until the others ran dry."""
    ids = lambda n: [peer_id_of(Identity.generate().public_key) for _ in range(n)]  # noqa: E731
    fakes, more_fakes, honest = ids(MAX_PROVIDERS), ids(MAX_PROVIDERS), ids(3)
    out: dict = {}
    merge_providers([("10.6.6.0/24", fakes), ("10.1.1.0/24", honest), ("10.2.2.0/24", honest[::-1])], out,
                    MAX_PROVIDERS)
    assert set(honest) <= set(out) and len(out) == MAX_PROVIDERS  # the rest of the places are still filled
    listed = honest + ids(MAX_PROVIDERS)  # more honest providers than a list holds, named by 4 peers
    others = [(f"10.{i}.1.0/24", listed) for i in range(4)]
    out = {}
    merge_providers([("10.6.6.0/24", fakes), ("10.6.6.0/24", more_fakes), *others], out, MAX_PROVIDERS)
    assert sum(p in fakes or p in more_fakes for p in out) == PER_ANSWER_PREFIX  # one machine, two close ids
    out = {}
    merge_providers([("10.6.6.0/24", fakes), *others], out, MAX_PROVIDERS)
    assert sum(p in fakes for p in out) == PER_ANSWER and set(honest) <= set(out)
    many = ids(MAX_PROVIDERS)  # only honest peers, all on one prefix (a loopback mesh): every provider found
    out = {}
    merge_providers([("127.0.0.0/24", many)] * 5, out, MAX_PROVIDERS)
    assert list(out) == many
    out = {honest[0]: None}  # the local copy stays; limits hold
    merge_providers([("10.1.1.0/24", honest)], out, 2)
    assert list(out) == honest[:2]


def test_a_node_own_copy_counts_like_an_answer_per_prefix_it_was_announced_from():
    """One machine's throwaway keys filled a node's own copy of a rare capability, and that copy went first
    and whole. It still goes first, as one answer per prefix it was announced from."""
    ids = lambda n: [peer_id_of(Identity.generate().public_key) for _ in range(n)]  # noqa: E731
    squat, honest = ids(MAX_PROVIDERS), ids(3)
    answers = [(f"10.{i}.1.0/24", honest) for i in range(5)]
    out: dict = {}
    merge_providers(answers, out, MAX_PROVIDERS, [("10.6.6.0/24", p) for p in squat])
    assert list(out)[:PER_ANSWER] == squat[:PER_ANSWER] and set(honest) <= set(out) and len(out) == MAX_PROVIDERS
    out = {}  # the same machine answering too: one prefix's cap for both, while others name someone new
    listed = honest + ids(MAX_PROVIDERS)
    merge_providers([("10.6.6.0/24", squat[::-1]), *[(f"10.{i}.1.0/24", listed) for i in range(4)]], out,
                    MAX_PROVIDERS, [("10.6.6.0/24", p) for p in squat])
    assert sum(p in squat for p in out) == PER_ANSWER_PREFIX and set(honest) <= set(out)
    diverse = [(f"10.{i // 2}.2.0/24", p) for i, p in enumerate(ids(MAX_PROVIDERS))]  # 2 a prefix: as before,
    out = {}                                                                            # whole and in order
    merge_providers(answers, out, MAX_PROVIDERS, diverse)
    assert list(out) == [p for _, p in diverse]
    out = {}
    merge_providers(answers, out, 5, diverse)
    assert list(out) == [p for _, p in diverse[:5]]
    many = ids(MAX_PROVIDERS)  # a loopback mesh: everything on one prefix, every provider still found
    out = {}
    merge_providers([("127.0.0.0/24", many)] * 3, out, MAX_PROVIDERS, [("127.0.0.0/24", p) for p in many[::-1]])
    assert set(out) == set(many)


# -- real hosts ----------------------------------------------------------------------------------------

@dataclass
class Peer:
    ident: Identity
    host: object
    disc: Discovery


async def start_hosts(stack: AsyncExitStack, nursery: trio.Nursery, n: int, links: int = 2,
                      seed: int = 1) -> list[Peer]:
    """`n` hosts, each dialling `links` earlier ones (the node dials its bootstrap peers itself), each
    running Discovery."""
    rnd = random.Random(seed)
    peers: list[Peer] = []
    for i in range(n):
        ident = Identity.generate()
        host = build_host(ident)
        await stack.enter_async_context(host.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]))
        disc = Discovery(host, NET)
        for j in rnd.sample(range(i), min(links, i)):
            other = peers[j].host
            await host.connect(PeerInfo(other.get_id(), other.get_addrs()))
        peers.append(Peer(ident, host, disc))
    for p in peers:
        await nursery.start(p.disc.run)
    return peers


async def start_attacker(stack: AsyncExitStack, honest: list[Peer], ident: Identity | None = None) -> KadDHT:
    """A peer whose DHT stores and serves anything under our namespace."""
    host = build_host(ident or Identity.generate())
    await stack.enter_async_context(host.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]))
    dht = KadDHT(host, DHTMode.SERVER, validator=NamespacedValidator({NAMESPACE: BlankValidator()}),
                 validator_changed=True)
    for p in honest[:3]:
        await host.connect(PeerInfo(p.host.get_id(), p.host.get_addrs()))
    await stack.enter_async_context(background_trio_service(dht))
    for p in honest[:3]:
        await dht.add_peer(p.host.get_id())
    await dht.peer_routing.find_closest_peers_network(host.get_id().to_bytes())
    return dht


def held(p: Peer, key: str) -> bytes | None:
    rec = p.disc.dht.value_store.store.get(key.encode())
    return rec[0].value if rec else None


def run_mesh(n: int, body, attacker: bool = False):
    async def main():
        async with trio.open_nursery() as nursery:  # Discovery tasks; cancelled before the hosts stop
            async with AsyncExitStack() as stack:
                peers = await start_hosts(stack, nursery, n)
                evil = await start_attacker(stack, peers) if attacker else None
                with trio.fail_after(120):
                    await body(peers, evil)
                nursery.cancel_scope.cancel()
    trio.run(main)


@pytest.mark.mesh
@pytest.mark.timeout(120)
def test_honest_records_are_found_and_forgeries_never_are():
    async def body(peers: list[Peer], evil: KadDHT):
        victim, reader = peers[0], peers[-1]
        absent = Identity.generate()  # a node that never published
        honest = rec_of(victim.ident, 4750)
        assert await victim.disc.publish(honest) >= 5
        got = await reader.disc.lookup(victim.ident.public_key)
        assert got == honest

        key_v, key_x = record_key(NET, victim.ident.public_key), record_key(NET, absent.public_key)
        bad_sig = rec_of(victim.ident, 4750)
        bad_sig.addr = "10.6.6.6:4750"
        attacker_own = make_record(Identity.generate(), NET, "10.6.6.6:1", ["python"], [], False, now())
        expired = rec_of(victim.ident, 4750, issued=now() - 2 * RECORD_TTL_MS)
        non_canonical = json.dumps(dump(rec_of(victim.ident, 4752)), indent=1).encode()
        forgeries = [
            (key_v, encode_record(bad_sig)),
            (key_v, encode_record(attacker_own)),  # a valid record of another key, stored under the victim's
            (key_x, encode_record(attacker_own)),
            (key_v, encode_record(expired)),
            (key_x, b"\x00\xffgarbage" * 10),
            (key_v, b"[" + b"0," * (MAX_RECORD_BYTES // 2) + b"0]"),  # oversized
            (key_v, non_canonical),
        ]
        for key, value in forgeries:
            await evil.put_value(key, value)
            for p in peers:
                assert held(p, key) in (None, encode_record(honest)), f"{value[:40]!r} kept by an honest node"
        refusals = sum(sum(p.disc.refused.values()) for p in peers)
        print(f"\nrefusals by honest nodes: {refusals}; kept the honest value: "
              f"{sum(held(p, key_v) == encode_record(honest) for p in peers)}/{len(peers)}")
        assert refusals >= len(forgeries)
        assert all(held(p, key_x) is None for p in peers)
        # the attacker still serves its last forgery from its own store: lookups never return it
        for p in peers[1:]:
            assert await p.disc.lookup(victim.ident.public_key) == honest
            assert await p.disc.lookup(absent.public_key) is None

        # a newer record replaces the older one, everywhere; replaying the older one changes nothing
        newer = rec_of(victim.ident, 4751, issued=honest.issued + 1000)
        assert await victim.disc.publish(newer) >= 5
        assert await reader.disc.lookup(victim.ident.public_key) == newer
        await evil.put_value(key_v, encode_record(honest))
        assert all(held(p, key_v) in (None, encode_record(newer)) for p in peers)
        for p in peers[1:4]:
            assert await p.disc.lookup(victim.ident.public_key) == newer
        with pytest.raises(RecordRefused):
            await victim.disc.publish(honest)

    run_mesh(10, body, attacker=True)


@pytest.mark.mesh
@pytest.mark.timeout(120)
def test_providers_of_a_capability_are_found():
    async def body(peers: list[Peer], _evil):
        llm = "llm:" + "cd" * 32
        for p in peers[1:4]:
            assert await p.disc.provide("python") >= 1
        assert await peers[5].disc.provide(llm) >= 1
        ids = lambda ps: {p.host.get_id() for p in ps}  # noqa: E731
        assert set(await peers[-1].disc.providers("python")) == ids(peers[1:4])
        assert set(await peers[0].disc.providers("python", limit=2)) <= ids(peers[1:4])
        assert len(await peers[0].disc.providers("python", limit=2)) == 2
        # a provider asking finds the others, not just itself (0.8.1 answers from its local set)
        assert set(await peers[1].disc.providers("python")) == ids(peers[2:4])
        assert await peers[-1].disc.providers(llm) == [peers[5].host.get_id()]
        assert await peers[-1].disc.providers("scrape") == []
        found = await peers[-1].disc.providers("python")
        assert all(peer_id_of(p.ident.public_key) in found for p in peers[1:4])

    run_mesh(8, body)


@pytest.mark.mesh
@pytest.mark.timeout(300)
def test_twenty_host_lookups_find_every_record_and_provider():
    async def body(peers: list[Peer], _evil):
        rnd = random.Random(7)
        puts, gets, provides, finds, copies = [], [], [], [], []
        records = {}
        for p in peers[:10]:
            rec = rec_of(p.ident, 4750)
            t = time.perf_counter()
            copies.append(await p.disc.publish(rec))
            puts.append(time.perf_counter() - t)
            records[p.ident.public_key] = rec
        misses = 0
        for _ in range(12):
            reader = rnd.choice(peers)
            key = rnd.choice(list(records))
            t = time.perf_counter()
            got = await reader.disc.lookup(key)
            gets.append(time.perf_counter() - t)
            misses += got != records[key]
        for p in peers[10:15]:
            t = time.perf_counter()
            await p.disc.provide("scrape")
            provides.append(time.perf_counter() - t)
        for _ in range(10):
            t = time.perf_counter()
            found = await rnd.choice(peers[15:]).disc.providers("scrape")
            finds.append(time.perf_counter() - t)
            assert len(found) == 5
        ms = lambda xs: f"median {statistics.median(xs) * 1000:.0f} ms (max {max(xs) * 1000:.0f})"  # noqa: E731
        print(f"\n{len(peers)} hosts: publish {ms(puts)}, stored at median {statistics.median(copies)} peers; "
              f"lookup {ms(gets)}, {misses} misses; provide {ms(provides)}; providers {ms(finds)}; "
              f"routing tables {sorted(p.disc.stats()['routing_table'] for p in peers)}")
        assert misses == 0

    run_mesh(20, body)


def ground_closer(key: bytes, peers: list[Peer]) -> Identity:
    """A fresh identity whose id is closer to `key` than every peer's in Kademlia's metric (sha256 of both,
    XORed): an attacker finds one after a few dozen tries."""
    target = int.from_bytes(hashlib.sha256(key).digest(), "big")
    distance = lambda pid: target ^ int.from_bytes(hashlib.sha256(pid.to_bytes()).digest(), "big")  # noqa: E731
    best = min(distance(p.host.get_id()) for p in peers)
    while True:
        ident = Identity.generate()
        if distance(peer_id_of(ident.public_key)) < best:
            return ident


@pytest.mark.mesh
@pytest.mark.timeout(120)
def test_the_closest_peer_answering_twenty_made_up_providers_does_not_hide_the_honest_ones():
    """Found by this project's red team (2026-12-06): a reader with no copy of its own took the closest
    peer's answer first and whole; one peer ground close to `python`'s key answered 20 made-up providers
    and the reader got 20 providers, none honest."""
    async def main():
        async with trio.open_nursery() as nursery:
            async with AsyncExitStack() as stack:
                peers = await start_hosts(stack, nursery, 6)
                key = capability_key(NET, "python")
                evil = await start_attacker(stack, peers, ground_closer(key, peers))
                made_up = [peer_id_of(Identity.generate().public_key) for _ in range(MAX_PROVIDERS)]
                for fake in made_up:
                    evil.provider_store.add_provider(key, PeerInfo(fake, [Multiaddr("/ip4/203.0.113.1/tcp/4750")]))
                with trio.fail_after(60):
                    for p in peers[1:4]:
                        assert await p.disc.provide("python") >= 1
                    honest = {p.host.get_id() for p in peers[1:4]}
                    for reader in (peers[0], peers[4], peers[5]):
                        reader.disc.dht.provider_store.providers.pop(key, None)  # as a node outside the k closest
                        got = await reader.disc.providers("python")
                        assert honest <= set(got), f"{len(honest & set(got))} honest of {len(got)}"
                nursery.cancel_scope.cancel()
    trio.run(main)


async def add_provider_raw(host, target, key: bytes, addrs: list[bytes]) -> bool:
    """One ADD_PROVIDER written by hand (as an attacker would), naming `host` with `addrs`; whether the
    node read it (answered or closed) rather than reset the stream."""
    msg = Message()
    msg.type = Message.MessageType.ADD_PROVIDER
    msg.key = key
    provider = msg.providerPeers.add()
    provider.id = host.get_id().to_bytes()
    provider.addrs.extend(addrs)
    data = msg.SerializeToString()
    stream = await host.new_stream(target, [KAD_PROTOCOL])
    try:
        await stream.write(varint.encode(len(data)) + data)
        with trio.move_on_after(2):
            await stream.read(64)
        await stream.close()
    except Exception:  # noqa: BLE001 (py-libp2p's stream errors are many unrelated classes: a reset, here)
        return False
    return True


async def throwaway(stack: AsyncExitStack, target: Peer, source: str = "127.0.0.1"):
    host = build_host(Identity.generate())
    _bound_connects(host, source)
    await stack.enter_async_context(host.run([Multiaddr(f"/ip4/{source}/tcp/0")]))
    await host.connect(PeerInfo(target.host.get_id(), target.host.get_addrs()))
    return host


@pytest.mark.mesh
@pytest.mark.timeout(120)
def test_a_provider_record_keeps_a_few_short_addresses_and_a_huge_message_is_refused():
    """Found by this project's red team (2026-12-06): py-libp2p kept every address of a provider record,
    and one 4 MiB ADD_PROVIDER (415,000 copies of one address) held ~50 MB; 16 throwaway keys grew a
    node past 1 GB, and each GET_PROVIDERS wrote 67 MiB back."""
    async def body(peers: list[Peer], _evil):
        target, key = peers[0], capability_key(NET, "python")
        async with AsyncExitStack() as stack:
            addr = Multiaddr("/ip4/10.9.8.7/tcp/4750").to_bytes()
            many = await throwaway(stack, target)
            assert await add_provider_raw(many, target.host.get_id(), key, [addr] * 2000 + [b"\x04" + b"x" * 300])
            held = target.disc.dht.provider_store.providers[key][str(many.get_id())].provider_info.addrs
            assert 1 <= len(held) <= MAX_PROVIDER_ADDRS, len(held)
            huge = await throwaway(stack, target)
            await add_provider_raw(huge, target.host.get_id(), key, [addr] * 415_000)  # 4 MiB
            assert str(huge.get_id()) not in target.disc.dht.provider_store.providers[key]

    run_mesh(3, body)


@pytest.mark.mesh
@pytest.mark.timeout(120)
def test_throwaway_keys_of_one_prefix_cannot_keep_a_newcomer_of_another_out_of_a_capability():
    """Found by this project's red team (2026-12-06): py-libp2p keeps 20 providers of a key, first come
    first served; 18 throwaway keys of one machine held `python` on every node, and a new honest worker
    was stored nowhere. A full list gives up the oldest of the prefix holding most of it."""
    async def body(peers: list[Peer], _evil):
        target, key = peers[0], capability_key(NET, "python")
        async with AsyncExitStack() as stack:
            for _ in range(MAX_PROVIDERS + 2):
                squat = await throwaway(stack, target)
                await add_provider_raw(squat, target.host.get_id(), key, [squat.get_addrs()[0].to_bytes()])
            held = target.disc.dht.provider_store.providers[key]
            assert len(held) == MAX_PROVIDERS
            newcomer = await throwaway(stack, target, "127.0.1.1")
            assert await add_provider_raw(newcomer, target.host.get_id(), key, [newcomer.get_addrs()[0].to_bytes()])
            assert str(newcomer.get_id()) in held and len(held) == MAX_PROVIDERS

    run_mesh(2, body)


@pytest.mark.mesh
@pytest.mark.timeout(180)
def test_throwaway_keys_of_one_prefix_filling_a_node_own_copy_do_not_hide_the_honest_providers():
    """A node outside a rare capability's k closest hears of it from no honest provider (they announce to the
    closest), so one machine's ~20 throwaway keys fill its own copy. That copy was taken first and whole:
    `providers` answered the 20 squatters and nothing else, although every closest peer named the honest
    ones. The own copy is split by the prefix each provider was announced from and capped like an answer."""
    async def body(peers: list[Peer], _evil):
        victim, cap = peers[0], "llm:" + "ef" * 32
        key = capability_key(NET, cap)
        for p in peers[1:4]:
            assert await p.disc.provide(cap) >= 1
        honest = {p.host.get_id() for p in peers[1:4]}
        # in a loopback mesh of 8 every node is among the 20 closest: forget the honest announcements here
        # (once they arrived: ADD_PROVIDER has no answer), as a node outside the k closest never heard them
        store = victim.disc.dht.provider_store.providers
        with trio.move_on_after(10):
            while len(store.get(key, {})) < len(honest):
                await trio.sleep(0.05)
        victim.disc.dht.provider_store.providers.pop(key, None)
        victim.disc._provider_origin.pop(key, None)
        async with AsyncExitStack() as stack:
            squatters = set()
            for _ in range(MAX_PROVIDERS + 2):
                squat = await throwaway(stack, victim, "127.0.6.6")  # one machine, one /24
                await add_provider_raw(squat, victim.host.get_id(), key, [squat.get_addrs()[0].to_bytes()])
                squatters.add(squat.get_id())
            held = victim.disc.dht.provider_store.providers[key]
            assert len(held) == MAX_PROVIDERS and {str(p) for p in squatters} >= set(held)
            assert set(victim.disc._provider_origin[key].values()) == {"127.0.6.0/24"}
            seen.update(honest=honest, squatters=squatters, got=await victim.disc.providers(cap),
                        other=await peers[-1].disc.providers(cap))

    seen: dict = {}
    run_mesh(8, body)  # (asserted out here: an assertion inside trio.run surfaces ten exception groups deep)
    honest, got = seen["honest"], set(seen["got"])
    assert honest & got == honest, f"{len(honest & got)} honest of {len(got)} ({len(seen['squatters'] & got)} squatters)"
    assert len(seen["got"]) == MAX_PROVIDERS  # places left over still go to the rest
    assert honest <= set(seen["other"])  # a node that heard the honest announcements is unaffected


@pytest.mark.mesh
@pytest.mark.timeout(120)
def test_senders_whose_prefix_cannot_be_told_share_one_prefix_caps(monkeypatch):
    """The per-prefix caps on what peers make this node keep skipped a sender whose link's prefix could
    not be told (counted as '', as this node's own lookups are): such strangers could fill the whole
    store. They now share one source's caps (trust.UNKNOWN_PREFIX)."""
    monkeypatch.setattr(dht_mod, "_prefix_of_conn", lambda conn: "")
    hosts, per_host = 8, 9  # (ADD_PROVIDER is rate limited to 10 per peer per 10 s)

    async def body(peers: list[Peer], _evil):
        target = peers[0]
        async with AsyncExitStack() as stack:
            squatters = set()
            for h in range(hosts):
                squat = await throwaway(stack, target)
                squatters.add(str(squat.get_id()))
                for k in range(per_host):
                    key = capability_key(NET, f"llm:{h:02x}{k:02x}" + "ab" * 30)
                    await add_provider_raw(squat, target.host.get_id(), key, [squat.get_addrs()[0].to_bytes()])
            store = target.disc.dht.provider_store.providers
            seen.update(keys=sum(1 for held in store.values() if squatters & set(held)),
                        refused=dict(target.disc.refused))

    seen: dict = {}
    run_mesh(2, body)
    assert hosts * per_host > PER_SOURCE_KEYS
    assert seen["keys"] == PER_SOURCE_KEYS and seen["refused"].get("source-full", 0) > 0, seen
