"""The third red-team round of 2026-12-07 (hostile peers against a real node), each attack written before its
fix and failing on the code before it:

- model parts were served first come, first served from one queue of 64: one peer asking for parts at its
  link's rate (and reading every one) held the queue, and another peer's part asks were dropped, so its
  fetch waited out the source's 30 s silence limit and gave the source up.
- an ask the node refuses for its rate (a manifest asked again and again, a testimony-ask past its rule)
  was refused only after its envelope's signature was checked, its payload parsed and a task spawned, and
  at the link's full rate.
- a known key's newer record was checked (a signature, an id-work hash) every time: one peer holding 8 ids
  re-issued its own and their records on every hello, 9 checks a hello.

Found after it (same session's follow-up): turns at serving parts went round the waiting peers, so four ids on
one machine took four fifths of them, and a receipt-ask flood was read in full like the asks above.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time

import psutil
import pytest

from mesh.errors import Rejected
from mesh.node.modelshare import MANIFEST_RULE, ModelServer
from mesh.wire.identity import Identity
from mesh.wire.messages import MODEL_PART, Hello, ModelAsk, ReceiptAsk
from mesh.wire.records import make_record

from .hostile import NETWORK, HostilePeer, now_ms, rejected, serving_tiny_model

PARTS = 4
ROUNDS = 10
SHARE_S = 10.0  # how long the parts sent to each peer are counted
FLOOD_S = 15.0  # a flood of asks longer than what the transport reads ahead of the gateway (1 MiB: ~1,800 asks)


@pytest.fixture(scope="module")
def serving_node(tmp_path_factory):
    """On the node's own transport (libp2p)."""
    yield from serving_tiny_model(tmp_path_factory.mktemp("serving-node"), PARTS, "--no-scrape", "--transport", "libp2p")


@pytest.fixture(scope="module")
def serving_node_tcp(tmp_path_factory):
    """On plain TCP: an attacker reading its parts as fast as the node serves them (32 MiB/s) needs no more
    than a socket, where the test's own libp2p client reads a few MiB/s of Python."""
    yield from serving_tiny_model(tmp_path_factory.mktemp("serving-node-tcp"), PARTS, "--no-scrape", "--transport", "tcp")


class PartFlood:
    """One peer asking for parts of `sha` at its link's rate (20 asks each 0.1 s) and reading all it is sent
    (raw, unparsed), in a thread, until stopped."""

    __test__ = False

    def __init__(self, addr: str, sha: str, transport: str, source: str = "127.0.0.1"):
        self.peer = HostilePeer(addr, transport=transport, source=source)
        self.node_key = bytes.fromhex(self.peer.handshake()["from"])
        self.sha, self.asked, self.read = sha, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "PartFlood":
        self._thread.start()
        return self

    def _run(self) -> None:
        sock = self.peer.sock
        while not self._stop.is_set():
            try:
                for _ in range(20):
                    self.peer.send_raw(self.peer.seal("model-ask", self.node_key, ModelAsk(self.sha, self.asked % PARTS)))
                    self.asked += 1
                until = time.monotonic() + 0.1
                while time.monotonic() < until:
                    sock.settimeout(max(0.001, until - time.monotonic()))
                    try:
                        self.read += len(sock.recv(1 << 20))
                    except (TimeoutError, OSError):
                        break
            except (BrokenPipeError, ConnectionError, OSError):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.peer.close()


def parts_got(fetcher: HostilePeer, sha: str) -> set[int]:
    return {f["payload"]["part"] for f in fetcher.received if f["kind"] == "model-part" and f["payload"]["sha"] == sha}


@pytest.mark.mesh
@pytest.mark.timeout(240)
def test_a_peer_flooding_part_asks_does_not_starve_another_peers_fetch(serving_node_tcp):
    node, sha = serving_node_tcp
    flood = PartFlood(node.listen, sha, "tcp").start()
    try:
        deadline = time.monotonic() + 30
        while flood.read < 64 * MODEL_PART:  # the flood is being served
            assert time.monotonic() < deadline, f"the flooder was sent {flood.read} bytes in 30 s"
            time.sleep(0.2)
        fetcher = HostilePeer(node.listen, transport="tcp")
        node_key = bytes.fromhex(fetcher.handshake()["from"])
        answered, slowest = 0, 0.0
        for _ in range(ROUNDS):  # an honest fetch's window, again and again: each part asked once, as modelfetch does
            fetcher.received.clear()
            t0 = time.monotonic()
            for part in range(PARTS):
                fetcher.send(fetcher.seal("model-ask", node_key, ModelAsk(sha, part)))
            while len(parts_got(fetcher, sha)) < PARTS and time.monotonic() - t0 < 4:
                fetcher.expect(lambda f: False, 0.1)
            answered += len(parts_got(fetcher, sha))
            slowest = max(slowest, time.monotonic() - t0)
        print(f"while one peer asked {flood.asked} parts ({flood.read / 2**20:.0f} MiB read): the other peer's "
              f"{ROUNDS * PARTS} asks got {answered} parts, the slowest round of {PARTS} in {slowest:.2f} s")
        assert answered == ROUNDS * PARTS, f"the second peer got {answered} parts for {ROUNDS * PARTS} asks"
        fetcher.close()
    finally:
        flood.stop()


@pytest.mark.mesh
@pytest.mark.timeout(240)
def test_four_ids_on_one_network_prefix_get_one_prefixs_share_of_the_parts_served(serving_node_tcp):
    """Four ids from 127.0.1.x (one /24 to the node) and one honest peer from 127.0.2.1 all ask for parts at
    their links' rate and read everything. Turns went round the five peers: the honest one was sent a fifth
    of the parts. They go round the prefixes now, then round a prefix's peers: it gets about half."""
    node, sha = serving_node_tcp
    floods = [PartFlood(node.listen, sha, "tcp", f"127.0.1.{i + 1}").start() for i in range(4)]
    honest = PartFlood(node.listen, sha, "tcp", "127.0.2.1").start()
    try:
        deadline = time.monotonic() + 30
        while min(f.read for f in (*floods, honest)) < 8 * MODEL_PART:  # every one of them is being served
            assert time.monotonic() < deadline, f"read {[f.read for f in (*floods, honest)]} bytes in 30 s"
            time.sleep(0.2)
        before = [f.read for f in (*floods, honest)]
        time.sleep(SHARE_S)
        got = [f.read - b for f, b in zip((*floods, honest), before, strict=True)]
    finally:
        for f in (*floods, honest):
            f.stop()
    share = got[-1] / sum(got)
    print(f"in {SHARE_S:.0f} s: four ids of one prefix were sent {[round(g / 2**20) for g in got[:4]]} MiB, the "
          f"peer of another prefix {got[-1] / 2**20:.0f} MiB ({share:.2f} of all)")
    # by peer a fifth (0.21 measured), by prefix a half at most: 0.38 measured, the test's five reading threads
    # sharing one interpreter (a peer that leaves 4 MiB unread is sent nothing more until it reads)
    assert share >= 0.3, f"the peer of another prefix got {share:.2f} of the parts sent, four ids of one prefix the rest"


# -- the turns, unit ------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_turns_go_round_the_waiting_peers_and_a_full_line_makes_room_for_a_newcomer():
    from mesh.node.modelshare import (  # (here: the module's real-process tests run on old code too)
        Bumped,
        FairTurns,
    )

    async def run() -> tuple[list[str], int]:
        turns, served, bumped = FairTurns(1), [], 0

        async def ask(who: str) -> None:
            nonlocal bumped
            try:
                async with turns.turn(who):
                    served.append(who)
                    await asyncio.sleep(0)
            except Bumped:
                bumped += 1

        tasks = [asyncio.create_task(ask("flood")) for _ in range(30)]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(ask("honest")) for _ in range(3)]
        await asyncio.sleep(0)
        assert turns.most("newcomer") and not turns.most("flood")
        assert turns.bump("newcomer") and not turns.bump("flood")
        await asyncio.gather(*tasks)
        return served, bumped

    served, bumped = asyncio.run(run())
    assert bumped == 1 and len(served) == 32
    assert served[:8].count("honest") == 3, served  # taken in turn, not after the flood's 29 waiting


@pytest.mark.timeout(30)
def test_turns_go_round_the_prefixes_before_the_peers_of_one_prefix(tmp_path):
    """The server alone: four ids of one prefix hold all 64 places (16 each), then a peer of another prefix
    asks 16 parts: it takes places from them and its parts go out every other turn, not every fifth."""
    model = tmp_path / "m.gguf"
    model.write_bytes(os.urandom(PARTS * MODEL_PART))
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    sent: list[object] = []
    server = ModelServer(lambda: {sha: model}, lambda peer, kind, payload: sent.append(peer),
                         group=lambda peer: "home" if peer == "honest" else "sybil-machine")

    async def run() -> None:
        flood = [asyncio.create_task(server.serve(f"id{k}", ModelAsk(sha, i % PARTS))) for k in range(4) for i in range(16)]
        await asyncio.sleep(0)
        honest = [asyncio.create_task(server.serve("honest", ModelAsk(sha, i % PARTS))) for i in range(16)]
        await asyncio.gather(*flood, *honest)

    asyncio.run(run())
    where = [i for i, peer in enumerate(sent) if peer == "honest"]
    print(f"the other prefix's 16 parts went out at {where} of {len(sent)}")
    assert len(where) == 16 and where[-1] < 40, where  # (by peer: one turn in five, the last at ~78)


@pytest.mark.timeout(30)
def test_a_peers_part_asks_are_served_while_another_peer_has_asked_for_a_hundred(tmp_path):
    """The server alone: 100 part asks of one peer, then an honest fetcher's window of 4. First come, first
    served, the flood took all 64 places and the fetcher's 4 asks were dropped."""
    model = tmp_path / "m.gguf"
    model.write_bytes(os.urandom(PARTS * MODEL_PART))
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    sent: list[tuple[object, int]] = []
    server = ModelServer(lambda: {sha: model}, lambda peer, kind, payload: sent.append((peer, payload.part)))

    async def run() -> None:
        flood = [asyncio.create_task(server.serve("flood", ModelAsk(sha, i % PARTS))) for i in range(100)]
        await asyncio.sleep(0)
        honest = [asyncio.create_task(server.serve("honest", ModelAsk(sha, i))) for i in range(PARTS)]
        await asyncio.gather(*flood, *honest)

    asyncio.run(run())
    got = sorted(part for peer, part in sent if peer == "honest")
    flood = sum(peer == "flood" for peer, _ in sent)
    print(f"100 asks of one peer, then 4 of another: {flood} and {len(got)} parts sent")
    assert got == list(range(PARTS)), f"the honest fetcher was sent parts {got}"


@pytest.mark.mesh
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["model-ask", "receipt-ask"])
def test_a_flood_of_asks_refused_for_their_rate_is_refused_unread_and_slows_its_link(serving_node, kind):
    """The flooder sends asks at its link's rate for FLOOD_S: manifest asks, of which the node answers a few
    (MANIFEST_RULE), or receipt-asks of 64 steps it never paid (found after the third round: read in full, each
    a signature, a schema, a journal commit and a query); the node refuses the rest before their signatures,
    reading its link slower. Printed: the node's CPU over the flood."""
    node, sha = serving_node
    ask = ModelAsk(sha, -1) if kind == "model-ask" else ReceiptAsk("ab" * 10, [f"s{i}" for i in range(64)])
    reason = "model-ask-rate" if kind == "model-ask" else "receipt-ask-rate"
    flooder = HostilePeer(node.listen)
    node_key = bytes.fromhex(flooder.handshake()["from"])
    proc = psutil.Process(node.proc.pid)
    idle = proc.cpu_times()
    flooder.expect(lambda f: False, 5.0)
    idle = sum(proc.cpu_times()[:2]) - sum(idle[:2])
    before, t0, sent = proc.cpu_times(), time.monotonic(), 0
    while time.monotonic() - t0 < FLOOD_S:
        for _ in range(20):
            try:
                flooder.send_raw(flooder.seal(kind, node_key, ask))
            except (BrokenPipeError, OSError):
                break
            sent += 1
        flooder.expect(lambda f: False, 0.1)
    after = proc.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    manifests = sum(f["kind"] in ("model-manifest", "receipt") for f in flooder.received)
    print(f"{sent} {kind}s in {time.monotonic() - t0:.1f} s: {manifests} answered, node CPU {cpu:.2f} s "
          f"(idle: {idle:.2f} s in 5 s); link dropped: {flooder.closed_by_node(0.1)}")
    assert manifests <= (MANIFEST_RULE[0] + FLOOD_S * MANIFEST_RULE[1] + 2 if kind == "model-ask" else 0)
    screened = rejected(node).get(reason, 0)  # refused before their signatures were checked
    print(f"refused unread: {screened}")
    assert screened >= min(100, (sent - manifests) // 2), f"{screened} of {sent - manifests} refused asks were screened"
    assert screened < sent // 2, f"the node read {screened} of {sent} refused asks: refusals do not slow the link"
    flooder.close()


# -- asks refused for their rate, before their signature -------------------------------------------------
@pytest.mark.timeout(30)
def test_a_screened_ask_is_refused_before_its_signature_is_checked_and_only_its_links_key_is_screened():
    from mesh.wire.envelope import Receiver, Refused, Sealer

    me, asker, other = Identity.generate(), Identity.generate(), Identity.generate()
    now = int(time.time() * 1000)
    receiver = Receiver(me.public_key, "net")
    screened: list[tuple[str, object]] = []

    def screen(kind: str, payload: object) -> str:
        screened.append((kind, payload))
        return "model-ask-rate"

    body = Sealer(asker, "net").seal("model-ask", me.public_key, ModelAsk("ab" * 32, -1), now)[4:]
    forged = body.replace(b'"sig":"', b'"sig":"00', 1)  # (not even a signature: the screen comes first)
    with pytest.raises(Refused):
        receiver.receive(forged, now, asker.public_key, screen)
    assert screened == [("model-ask", {"sha": "ab" * 32, "part": -1})]
    assert receiver.rejected["model-ask-rate"] == 1
    with pytest.raises(Rejected) as exc:  # another key's frame on the link is not screened: WrongSender as before
        receiver.receive(Sealer(other, "net").seal("model-ask", me.public_key, ModelAsk("ab" * 32, -1), now)[4:],
                         now, asker.public_key, screen)
    assert not isinstance(exc.value, Refused) and len(screened) == 1
    assert receiver.receive(body, now, asker.public_key, lambda kind, payload: "").kind == "model-ask"


# -- records re-issued on every hello -------------------------------------------------------------------
@pytest.mark.mesh
@pytest.mark.timeout(240)
def test_a_peer_re_issuing_its_own_and_its_sybils_records_on_every_hello_is_not_checked_each_time(serving_node):
    """A known key's record that is newer than the one held is checked (a signature, an id-work hash) and
    taken: one peer holding 8 ids sent hellos at its link's rate, each carrying its own record and its 8
    ids' records re-issued a millisecond later, 9 record signatures and the envelope's a hello."""
    node, _ = serving_node
    attacker = HostilePeer(node.listen)
    sybils = [Identity.generate() for _ in range(8)]
    t0_ms = now_ms()

    def records(i: int):
        return [make_record(s, NETWORK, f"127.0.0.1:{9 + n}", [], [], False, t0_ms + i) for n, s in enumerate(sybils)]

    node_key = bytes.fromhex(attacker.handshake()["from"])
    attacker.send(attacker.seal("hello", node_key, Hello(make_record(
        attacker.identity, NETWORK, attacker.advertise, [], [], False, t0_ms), records(0))))
    proc = psutil.Process(node.proc.pid)
    before, t0, sent = proc.cpu_times(), time.monotonic(), 0
    while time.monotonic() - t0 < 10:
        for _ in range(20):
            sent += 1
            hello = Hello(make_record(attacker.identity, NETWORK, attacker.advertise, [], [], False, t0_ms + sent),
                          records(sent))
            try:
                attacker.send_raw(attacker.seal("hello", node_key, hello))
            except (BrokenPipeError, OSError):
                break
        attacker.expect(lambda f: False, 0.05)
    after = proc.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    refused = rejected(node).get("record-rate", 0)
    print(f"{sent} hellos each re-issuing 9 records in {time.monotonic() - t0:.1f} s: node CPU {cpu:.2f} s, "
          f"{refused} records refused unchecked (record-rate)")
    assert refused > 0, "every re-issued record was checked and taken"
    attacker.close()


@pytest.mark.timeout(30)
def test_a_known_keys_newer_records_are_checked_a_few_then_refused_unchecked():
    from mesh.node.peers import REISSUE_RULE, PeerTable

    me, other = Identity.generate(), Identity.generate()
    table, t0 = PeerTable(me.public_key, NETWORK), now_ms()
    assert table.learn(make_record(other, NETWORK, "127.0.0.1:9", [], [], False, t0), t0)[0] is not None
    whys = [table.learn(make_record(other, NETWORK, "127.0.0.1:9", [], [], False, t0 + i), t0 + i)[1]
            for i in range(1, 11)]
    assert whys == [""] * int(REISSUE_RULE[0]) + ["record-rate"] * (10 - int(REISSUE_RULE[0]))
    assert table.get(other.public_key).record.issued == t0 + int(REISSUE_RULE[0])  # the last one taken still serves
    stale = make_record(other, NETWORK, "127.0.0.1:9", [], [], False, t0)
    assert table.learn(stale, t0 + 20) == (None, "")  # (one not newer: nothing to check, nothing spent)
