"""The libp2p transport against hostile dialers, on real node processes: only Noise is spoken (a dialer
offering plaintext with someone else's public key gets nowhere), an envelope signed by any key but the
one its link's handshake proved is refused and counted, and a dial never accepts another key than the
one it expected."""

from __future__ import annotations

import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import Ed25519PrivateKey as P2PPrivate
from libp2p.crypto.ed25519 import Ed25519PublicKey as P2PPublic
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from multiaddr import Multiaddr

from mesh.node.p2p.addresses import parse, peer_id_of
from mesh.node.p2p.client import BlockingLink
from mesh.wire.envelope import ANYONE, Sealer
from mesh.wire.identity import Identity
from mesh.wire.messages import Hello
from mesh.wire.records import make_record

from ..conftest import cli_json, wait_for

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120)]
NET = "homemesh-local"


def status(node) -> dict:
    return cli_json("status", "--home", str(node.home))


def hello(ident: Identity) -> bytes:
    import time
    now = int(time.time() * 1000)
    rec = make_record(ident, NET, "127.0.0.1:9", [], [], False, now)
    return Sealer(ident, NET).seal("hello", ANYONE, Hello(rec, []), now)


def test_plaintext_dialer_claiming_a_peers_key_is_refused(make_mesh):
    """py-libp2p's default host also speaks /plaintext/2.0.0, where a dialer just states a public key:
    measured to be accepted as the victim. A node speaks Noise only, so the dial fails outright."""
    mesh = make_mesh(2, lambda i: ["--no-model"])
    victim = Identity.from_seed(bytes(range(32)))  # the key the attacker claims; it lacks its private half
    fake = KeyPair(P2PPrivate.new(), P2PPublic.from_bytes(victim.public_key))
    target = parse(mesh.nodes[1].listen)
    node_peer = peer_id_of(bytes.fromhex(status(mesh.nodes[1])["key"]))

    async def attack() -> str:
        own = KeyPair(P2PPrivate.new(), None)
        own = KeyPair(own.private_key, own.private_key.get_public_key())
        # the host's own key is honest; its plaintext handshake presents the victim's public key
        host = new_host(key_pair=own, sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(fake)})
        async with host.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            try:
                with trio.fail_after(10):
                    await host.connect(PeerInfo(node_peer, [target.addr]))
                    await host.new_stream(node_peer, [TProtocol("/homemesh/1")])
            except Exception as exc:  # whatever py-libp2p raises for a failed negotiation
                return type(exc).__name__
            return "connected"

    assert trio.run(attack) != "connected"
    st = status(mesh.nodes[1])
    assert victim.node_id not in {p["node"] for p in st["peers"]}


def test_envelope_signed_by_another_key_than_the_link_is_refused_and_counted(make_mesh):
    mesh = make_mesh(1, lambda i: ["--no-model"])
    link_key, other = Identity.generate(), Identity.generate()
    link = BlockingLink(mesh.nodes[0].listen, link_key)
    try:
        link.sendall(hello(other))  # validly signed, but by a key this link did not prove
        link.settimeout(10)
        assert link.recv(4096) == b""  # the node ends the link
    finally:
        link.close()
    st = wait_for(lambda: (s := status(mesh.nodes[0]))["rejected"].get("sender-not-peer") and s, 15,
                  "the refusal to be counted")
    assert other.node_id not in {p["node"] for p in st["peers"]}
    assert link_key.node_id not in {p["node"] for p in st["peers"] if p["state"] == "up"}


def test_honest_link_gets_an_answer_and_status_names_the_connection(make_mesh):
    mesh = make_mesh(2, lambda i: ["--no-model"])
    me = Identity.generate()
    link = BlockingLink(mesh.nodes[0].listen, me)
    try:
        link.sendall(hello(me))
        link.settimeout(10)
        assert b'"kind":"hello"' in link.recv(65536)  # the node answered on the encrypted stream
    finally:
        link.close()
    # a node on loopback is reachable by every peer it can have (all on this machine): no AutoNAT
    # question is asked, whose slow answer under load once put a loopback node behind a relay
    wait_for(lambda: status(mesh.nodes[0])["reachability"] == "public", 10, "the loopback node to be public")
    st = status(mesh.nodes[0])
    assert st["transport"] == "libp2p"
    other = next(p for p in st["peers"] if p["node"] == mesh.nodes[1].node_id)
    assert other["connected"] and other["connection"] == "direct"


def test_dial_expecting_one_key_refuses_another_at_that_address(make_mesh):
    """A record (or a /p2p/ multiaddr) names the key: an impostor listening at that address is not it."""
    mesh = make_mesh(1, lambda i: ["--no-model"])
    expected = Identity.generate()  # not the node's key
    with pytest.raises(ConnectionError):
        BlockingLink(mesh.nodes[0].listen, Identity.generate(), expect=expected.public_key)
