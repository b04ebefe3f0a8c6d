"""The DHT's stores are bounded against a flood of valid entries. One attacker process runs libp2p hosts
(its own Ed25519 keys, Noise + Yamux: the node's real transport) and speaks Kademlia
(`/ipfs/kad/1.0.0`, the protocol the node's KadDHT serves) to a real node, writing the protobuf
messages by hand on long-lived streams:

(a) PUT_VALUE of validly signed PeerRecords of fresh keys, each under its own key, so every one passes
    the node's RecordValidator: one network prefix may keep PER_SOURCE (128) of them and all of them
    MAX_RECORDS (1024), the rest refused cheaply ("source-full", "store-full"). Found 2026-12-02: the
    cap held, but each PUT past it cost the node ~0.2 s of CPU on its libp2p thread (a sweep of the whole
    store on every refused PUT): 45 s of flood, ~200 refused, ~46 s of node CPU, a newcomer's hello 5 s;
    and one machine filled every slot, so no newcomer's record could be stored for an hour;
(b) ADD_PROVIDER for 1,620 distinct capability keys, from 161 hosts (py-libp2p accepts 10 ADD_PROVIDER
    per peer per 10 s and resets the stream past that; the last host sends 20 to show it) on 20 network
    prefixes: the node must keep at most PER_SOURCE_KEYS (64) keys from one prefix and MAX_PROVIDER_KEYS
    (1024) in all, and refuse the rest ("source-full", "providers-full").

Throughout, the node's CPU and memory must stay bounded and its API must answer. Prints what it measured
(`pytest -s`)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from contextlib import AsyncExitStack

import pytest
import trio
import varint
from libp2p.kad_dht.common import PROTOCOL_ID
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.peer.peerinfo import PeerInfo
from libp2p.utils.varint import read_varint_prefixed_bytes_limited
from multiaddr import Multiaddr

from mesh.node.p2p.addresses import parse, peer_id_of
from mesh.node.p2p.dht import (
    MAX_PROVIDER_KEYS,
    MAX_RECORDS,
    PER_SOURCE,
    capability_key,
    encode_record,
    record_key,
)
from mesh.node.p2p.transport import _bound_connects, build_host
from mesh.node.p2p.triothread import TrioThread
from mesh.wire.identity import Identity
from mesh.wire.records import make_record

from ..conftest import wait_for
from .hostile import NETWORK, HostilePeer, cpu_seconds, now_ms, rss_mb, status

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(240)]
NODE = ["--no-model", "--no-scrape"]
RECORDS = 1500
PROVIDER_HOSTS, PER_HOST = 160, 10  # 10: py-libp2p's ADD_PROVIDER limit per peer per 10 s
GREEDY = 20  # ADD_PROVIDERs one more host sends at once, past that limit
PREFIXES = 20  # network prefixes the provider flood comes from (each may have 64 keys held)
STREAMS = 8  # DHT streams the attacker keeps open at once (the node resets past 12 in flight)
FLOOD_BUDGET_S = 45.0  # the flood's own time limit (the test asserts it needed far less)
REPLY_MAX = 1 << 20


class KadFlood:
    """Attacker hosts on one trio thread that write Kademlia requests to one node by hand, each request
    answered (PUT_VALUE and ADD_PROVIDER both echo) before the next goes on the same stream. A stream
    the node resets is counted and replaced; the request it carried is retried on the new one at most
    `retries` times. `counts` keeps what happened: sent, acked, reset, given-up."""

    def __init__(self, target: str, node_key: bytes, retries: int = 2):
        self.node, self.addr, self.retries = peer_id_of(node_key), parse(target).addr, retries
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.acked_at: list[float] = []  # trio clock
        self.thread = TrioThread("kad-flood")
        self.thread.start()

    def run(self, fn, *args):
        return self.thread.run_blocking(fn, *args)

    async def _host(self, stack: AsyncExitStack, limiter: trio.CapacityLimiter, source: str = "127.0.0.1"):
        host = build_host(Identity.generate())
        _bound_connects(host, source)  # its links leave from `source`: the node sees that network prefix
        await stack.enter_async_context(host.run([Multiaddr(f"/ip4/{source}/tcp/0")]))
        async with limiter:
            await host.connect(PeerInfo(self.node, [self.addr]))
        return host

    async def _requests(self, host, messages: list[Message], kind: str) -> None:
        """Send `messages` in order on as few streams as the node allows."""
        stream, tries = None, 0
        i = 0
        while i < len(messages):
            try:
                if stream is None:
                    stream = await host.new_stream(self.node, [PROTOCOL_ID])
                body = messages[i].SerializeToString()
                self.counts[f"{kind}-sent"] += 1
                await stream.write(varint.encode(len(body)) + body)
                reply = Message()
                reply.ParseFromString(await read_varint_prefixed_bytes_limited(stream, REPLY_MAX))
                self.counts[f"{kind}-acked"] += 1
                self.acked_at.append(trio.current_time())
                i, tries = i + 1, 0
            except Exception as exc:  # reset (rate limit, too many streams at once) or the link is gone
                self.counts[f"{kind}-reset"] += 1
                self.errors[f"{kind}: {type(exc).__name__}: {str(exc)[:80]}"] += 1
                if stream is not None:
                    try:
                        await stream.reset()
                    except Exception:
                        pass
                stream = None
                tries += 1
                if tries > self.retries:
                    self.counts[f"{kind}-given-up"] += 1
                    i, tries = i + 1, 0
        if stream is not None:
            try:
                await stream.close()
            except Exception:
                pass

    async def put_values(self, values: list[tuple[str, bytes]], source: str = "127.0.0.1",
                         mark: int = MAX_RECORDS) -> tuple[float, float]:
        """PUT_VALUE of each (key, value) from one host on `source` over STREAMS streams, for at most
        FLOOD_BUDGET_S; returns the seconds taken, and the seconds until the `mark`-th (counted over this
        KadFlood's life) was acknowledged (inf: never)."""
        messages = []
        for key, value in values:
            m = Message(type=Message.MessageType.PUT_VALUE, key=key.encode())
            m.record.key, m.record.value = key.encode(), value
            messages.append(m)
        async with AsyncExitStack() as stack:
            host = await self._host(stack, trio.CapacityLimiter(1), source)
            t0 = trio.current_time()
            with trio.move_on_after(FLOOD_BUDGET_S):
                async with trio.open_nursery() as nursery:
                    for s in range(STREAMS):
                        nursery.start_soon(self._requests, host, messages[s::STREAMS], "put")
            full = self.acked_at[mark - 1] - t0 if len(self.acked_at) >= mark else float("inf")
            return trio.current_time() - t0, full

    async def add_providers(self, batches: list[list[bytes]], prefixes: int = PREFIXES) -> float:
        """One fresh host per batch of keys, each announcing itself as the provider of its batch's keys;
        at most STREAMS hosts talk at once (in an order trio draws). Returns the seconds taken once all
        hosts are connected."""
        limiter = trio.CapacityLimiter(STREAMS)
        async with AsyncExitStack() as stack:
            hosts = []
            for i, _ in enumerate(batches):  # from `prefixes` network prefixes, in turn
                hosts.append(await self._host(stack, limiter, f"127.0.{i % prefixes + 1}.1"))

            async def one(host, keys: list[bytes]) -> None:
                me = host.get_id()
                addrs = [a.to_bytes() for a in host.get_addrs()]
                messages = []
                for k in keys:
                    m = Message(type=Message.MessageType.ADD_PROVIDER, key=k)
                    p = m.providerPeers.add()
                    p.id = me.to_bytes()
                    p.addrs.extend(addrs)
                    messages.append(m)
                async with limiter:
                    await self._requests(host, messages, "provide")

            t0 = trio.current_time()
            with trio.move_on_after(FLOOD_BUDGET_S):
                async with trio.open_nursery() as nursery:
                    for host, keys in zip(hosts, batches, strict=True):
                        nursery.start_soon(one, host, keys)
            return trio.current_time() - t0

    def close(self) -> None:
        self.thread.stop()


class ApiProbe:
    """GET /health ten times a second from a thread, for as long as it runs; `latencies` in seconds."""

    def __init__(self, node):
        self.node, self.latencies = node, []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            t = time.monotonic()
            self.node.client.request("GET", "/health", timeout=30)
            self.latencies.append(time.monotonic() - t)
            self.stopping.wait(0.1)

    def __enter__(self) -> "ApiProbe":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(35)

    @property
    def worst_ms(self) -> float:
        return max(self.latencies, default=float("inf")) * 1000

    def assert_responsive(self) -> None:
        """Nineteen answers in twenty within 250 ms and none over 2 s: a node the flood froze fails both,
        while one slow answer (582 ms once, on two test workers sharing two cores) is the machine's, not
        the node's."""
        assert len(self.latencies) >= 20, self.latencies
        ordered = sorted(self.latencies)
        assert ordered[int(len(ordered) * 0.95)] < 0.25, ordered
        assert ordered[-1] < 2.0, ordered


class PeerProbe(ApiProbe):
    """A newcomer's libp2p connect + `/homemesh/1` hello exchange with the node, once a second from a
    thread: what the node's libp2p thread still serves. `latencies` are seconds, inf for a failure."""

    @staticmethod
    def once(node) -> float:
        t = time.monotonic()
        try:
            with HostilePeer(node.listen, timeout=30) as newcomer:
                newcomer.handshake(timeout=30)
            return time.monotonic() - t
        except Exception:  # the dial (10 s limit) or the hello failed
            return float("inf")

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.latencies.append(self.once(self.node))
            self.stopping.wait(1.0)

    def assert_served(self) -> None:
        """Every newcomer got through, half of them within 1 s and none past 5 s: a libp2p thread the flood
        froze fails all three, while one slow hello (2.77 s once in CI, with the API at 1.6 s beside it and the
        newcomer's own side sharing this process with the flood) is the machine's, not the node's."""
        assert len(self.latencies) >= 3, self.latencies
        ordered = sorted(self.latencies)
        assert ordered[len(ordered) // 2] < 1.0, ordered
        assert ordered[-1] < 5.0, ordered


@pytest.fixture(autouse=True)
def quiet_libp2p():
    """The attacker's own py-libp2p logs an error for every stream the node resets (build_host sets its
    loggers to ERROR): keep them out of the test's captured log."""
    logger, null = logging.getLogger("libp2p"), logging.NullHandler()
    propagate = logger.propagate
    logger.addHandler(null)
    logger.propagate = False
    yield
    logger.propagate = propagate
    logger.removeHandler(null)


def dht_node(make_mesh, name: str):
    node = make_mesh(1, lambda i: NODE, name=name).nodes[0]
    # its own record is in its store before anything is counted (on a loaded machine the first publish
    # came after the count began, and was taken for one of the flood's: 129 from one prefix)
    wait_for(lambda: status(node).get("discovery", {}).get("records", 0) >= 1, 60, "the node's own record stored")
    return node


def refused_since(before: dict, after: dict) -> dict[str, int]:
    return {k: v - before["refused"].get(k, 0) for k, v in after["refused"].items()
            if v - before["refused"].get(k, 0)}


def fresh_values(n: int) -> list[tuple[str, bytes]]:
    """`n` validly signed records of fresh keys, each under its own DHT key."""
    now = now_ms()
    records = [make_record(Identity.generate(), NETWORK, f"127.0.0.1:{20000 + i % 100}", ["python"], [], False, now)
               for i in range(n)]
    return [(record_key(NETWORK, bytes.fromhex(r.key)), encode_record(r)) for r in records]


def test_valid_records_past_the_caps_are_refused_cheaply(make_mesh):
    """(a) 1,500 valid records of fresh keys from one network prefix: it may keep PER_SOURCE of them here,
    and a newcomer from another prefix still gets its record stored; then nine more prefixes fill the
    store to MAX_RECORDS, and what is past that is refused as cheaply."""
    node = dht_node(make_mesh, "dht-records")
    pid = node.proc.pid
    quiet_hello = min(PeerProbe.once(node) for _ in range(3))
    before = status(node)["discovery"]
    cpu0, rss0 = cpu_seconds(pid), rss_mb(pid)
    flood = KadFlood(node.listen, bytes.fromhex(status(node)["key"]))
    try:
        with ApiProbe(node) as probe, PeerProbe(node) as peers:
            took, _ = flood.run(flood.put_values, fresh_values(RECORDS))
            one_prefix = status(node)["discovery"]
            flood.run(flood.put_values, fresh_values(1), "127.0.200.1")  # a newcomer elsewhere
            newcomer = status(node)["discovery"]
            many = fresh_values(9 * PER_SOURCE)
            more = sum(flood.run(flood.put_values, many[k::9], f"127.0.{k + 1}.1", 1)[0] for k in range(9))
    finally:
        flood.close()
    cpu, rss = cpu_seconds(pid) - cpu0, rss_mb(pid) - rss0
    after = status(node)["discovery"]
    refused = refused_since(before, after)
    c = flood.counts
    sent = RECORDS + 1 + len(many)
    print(f"\nPUT_VALUE: {RECORDS} valid records of fresh keys from one prefix in {took:.1f} s: the node keeps "
          f"{one_prefix['records'] - before['records']} (per prefix {PER_SOURCE}); a newcomer's from another: "
          f"{'stored' if newcomer['records'] > one_prefix['records'] else 'refused'}; {len(many)} more from 9 "
          f"prefixes in {more:.1f} s: {after['records']} stored (cap {MAX_RECORDS}); {c['put-acked']} of {sent} "
          f"acked ({c['put-reset']} reset); refused {refused}\nnode CPU {cpu:.1f} s "
          f"({cpu / sent * 1000:.1f} ms a PUT), RSS {rss:+.1f} MB; API latency max {probe.worst_ms:.0f} ms over "
          f"{len(probe.latencies)} probes; a newcomer's connect + hello: max {peers.worst_ms:.0f} ms over "
          f"{len(peers.latencies)} tries ({quiet_hello * 1000:.0f} ms before the flood)")
    assert one_prefix["records"] - before["records"] <= PER_SOURCE, one_prefix
    assert newcomer["records"] == one_prefix["records"] + 1, newcomer  # another prefix is not locked out
    # The node's own record is stored with ValueStore.put, which the cap does not wrap: at most one more.
    assert after["records"] <= MAX_RECORDS + 1, after
    assert refused.get("source-full", 0) >= RECORDS - PER_SOURCE and refused.get("store-full", 0) > 0, refused
    assert c["put-acked"] == sent, c
    probe.assert_responsive()
    # Per PUT, not per run: the run's CPU also pays for the API and hello probes, which a loaded machine makes
    # more of (its flood runs longer). 4.5 ms a PUT on a quiet machine, 6.1 in a clean-clone CI run (a bound of
    # 15 s in all failed it at 16.1 s); the bug this guards against cost 212 ms a refused PUT.
    assert cpu / sent < 0.010, f"node CPU {cpu:.1f} s for {sent} PUTs"
    peers.assert_served()
    assert rss < 60.0, rss


def test_provider_keys_past_the_cap_are_refused(make_mesh):
    """(b) ADD_PROVIDER for 1,620 capability keys from 161 hosts on 20 network prefixes (64 keys each at
    most, 1,024 in all)."""
    node = dht_node(make_mesh, "dht-providers")
    pid = node.proc.pid
    caps = [capability_key(NETWORK, f"llm:{i:064x}") for i in range(PROVIDER_HOSTS * PER_HOST + GREEDY)]
    batches = [caps[i:i + PER_HOST] for i in range(0, PROVIDER_HOSTS * PER_HOST, PER_HOST)]
    batches.append(caps[PROVIDER_HOSTS * PER_HOST:])  # the greedy one: 10 pass the rate limit, 10 do not
    before = status(node)["discovery"]
    cpu0, rss0 = cpu_seconds(pid), rss_mb(pid)
    flood = KadFlood(node.listen, bytes.fromhex(status(node)["key"]))
    try:
        with ApiProbe(node) as probe:
            # one prefix's 8 hosts first (80 keys, 64 may be held): its cap is reached whatever the order.
            # All at once, trio's random order let the store fill before any prefix held 64 (CI: no
            # source-full refusal at all): about one run in 25, computed from the odds of the hosts' order.
            first = batches[:PROVIDER_HOSTS:PREFIXES]
            rest = [b for i, b in enumerate(batches[:PROVIDER_HOSTS]) if i % PREFIXES]
            took = flood.run(flood.add_providers, first, 1) + flood.run(flood.add_providers, rest)
            # the greedy host alone, last: among 150 others, its 20 asks and their retries took over the limit's
            # 10 s on a loaded machine (CI on f1931f3: 31 s for all, 19 of its 20 acked), so its window renewed
            given0 = flood.counts["provide-given-up"]
            greedy_s = flood.run(flood.add_providers, batches[PROVIDER_HOSTS:], 1)
            took += greedy_s
    finally:
        flood.close()
    cpu, rss = cpu_seconds(pid) - cpu0, rss_mb(pid) - rss0
    after = status(node)["discovery"]
    refused = refused_since(before, after)
    c = flood.counts
    print(f"\nADD_PROVIDER: {len(caps)} keys from {len(batches)} hosts, {c['provide-sent']} sent in {took:.1f} s "
          f"({c['provide-acked']} acked, {c['provide-reset']} reset, {c['provide-given-up']} given up; "
          f"{dict(flood.errors)}); the node held {before['provider_keys']} provider keys before, "
          f"{after['provider_keys']} after (cap {MAX_PROVIDER_KEYS}); refused {refused}; the node's own "
          f"capabilities {after['capabilities']}"
          f"\nnode CPU {cpu:.1f} s, RSS {rss:+.1f} MB; API latency max {probe.worst_ms:.0f} ms "
          f"over {len(probe.latencies)} probes")
    assert after["provider_keys"] <= MAX_PROVIDER_KEYS, after
    assert c["provide-acked"] >= PROVIDER_HOSTS * PER_HOST, c  # the greedy host's excess is reset
    # the greedy host's excess is refused: all of it while its asks fit in one window of the limit (10 s from
    # its first), else all but PER_HOST for each further window its sending (on a loaded machine) spanned
    greedy_given_up = c["provide-given-up"] - given0
    print(f"the greedy host: {GREEDY} asks in {greedy_s:.1f} s, {greedy_given_up} given up")
    assert c["provide-given-up"] == greedy_given_up, c  # (nobody else sent over the limit)
    windows = max(1, math.ceil(greedy_s / 10.0))
    assert GREEDY - PER_HOST * windows <= greedy_given_up <= GREEDY - PER_HOST, (greedy_s, c)
    assert refused.get("providers-full", 0) + refused.get("source-full", 0) >= \
        c["provide-acked"] - (after["provider_keys"] - before["provider_keys"]), refused
    assert refused.get("source-full", 0) > 0 and refused.get("providers-full", 0) > 0, refused
    probe.assert_responsive()
    assert cpu < 20.0, cpu
    assert rss < 60.0, rss
