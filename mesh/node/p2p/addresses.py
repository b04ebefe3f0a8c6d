"""Peer addresses as a node takes them from its operator (`--bootstrap HOST:PORT` or a multiaddr) and
from peers' signed records, checked before anything is dialled: a bounded length, TCP over IPv4/IPv6/DNS
only, at most one `/p2p/` id and one relay hop. Sans-I/O; parsing a hostile string raises ValueError."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from libp2p.crypto.ed25519 import Ed25519PublicKey as P2PKey
from libp2p.peer.id import ID
from multiaddr import Multiaddr

MAX_ADDR = 300
_HOSTS = ("ip4", "ip6", "dns", "dns4", "dns6")


def peer_id_of(key: bytes) -> ID:
    """The libp2p peer id of a node's raw Ed25519 public key (what Noise authenticates)."""
    Ed25519PublicKey.from_public_bytes(key)  # ValueError for a key that is not one
    return ID.from_pubkey(P2PKey.from_bytes(key))


def key_of(peer: ID) -> bytes:
    """The raw Ed25519 public key inside an Ed25519 peer id; ValueError for any other kind of id."""
    try:
        pub = peer.extract_public_key()
    except Exception as exc:  # py-libp2p raises assorted errors for ids that do not embed a key
        raise ValueError(f"peer id {peer} does not embed a public key") from exc
    if not isinstance(pub, P2PKey):
        raise ValueError(f"peer id {peer} is not an Ed25519 key")
    return pub.to_bytes()


@dataclass(frozen=True)
class Target:
    """Where to dial: a TCP multiaddr (maybe through a relay), and the peer expected there, if known."""
    addr: Multiaddr
    peer: ID | None
    relayed: bool

    def __str__(self) -> str:
        return str(self.addr)


def parse(text: str) -> Target:
    """`HOST:PORT`, `[V6]:PORT` or a multiaddr `/ip4/H/tcp/P[/p2p/ID][/p2p-circuit/p2p/ID]`."""
    text = text.strip()
    if not text or len(text) > MAX_ADDR:
        raise ValueError(f"an address must be 1..{MAX_ADDR} characters")
    if not text.startswith("/"):
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r} is not HOST:PORT")
        try:
            proto = f"ip{ipaddress.ip_address(host).version}"
        except ValueError:
            proto = "dns"
        text = f"/{proto}/{host}/tcp/{int(port)}"
    try:
        addr = Multiaddr(text)
    except Exception as exc:  # the multiaddr package raises several unrelated types for bad input
        raise ValueError(f"{text!r} is not a multiaddr: {exc}") from None
    return _target(addr, components(addr))


def components(addr: Multiaddr) -> list[tuple[str, str]]:
    bits = str(addr).strip("/").split("/")
    out, i = [], 0
    while i < len(bits):
        name = bits[i]
        if name == "p2p-circuit":
            out.append((name, ""))
            i += 1
        else:
            out.append((name, bits[i + 1] if i + 1 < len(bits) else ""))
            i += 2
    return out


def _target(addr: Multiaddr, parts: list[tuple[str, str]]) -> Target:
    names = [n for n, _ in parts]
    if len(names) < 2 or names[0] not in _HOSTS or names[1] != "tcp":
        raise ValueError(f"{addr} is not a TCP address (/ip4|ip6|dns/HOST/tcp/PORT...)")
    rest = names[2:]
    if rest not in ([], ["p2p"], ["p2p", "p2p-circuit", "p2p"], ["p2p", "p2p-circuit"]):
        raise ValueError(f"{addr}: only /p2p/ID and one /p2p-circuit hop may follow the TCP port")
    relayed = "p2p-circuit" in rest
    ids = [v for n, v in parts if n == "p2p"]
    try:
        peers = [ID.from_base58(v) for v in ids]
    except Exception:  # base58 / multihash errors come in several types
        raise ValueError(f"{addr}: a /p2p/ id is not a peer id") from None
    if relayed and len(peers) < 2:
        raise ValueError(f"{addr}: a relayed address names the relay and the peer behind it")
    return Target(addr, peers[-1] if peers and (relayed or len(peers) == 1) else None, relayed)


def host_port(target: Target) -> tuple[str, int]:
    """The first hop's host and TCP port."""
    parts = components(target.addr)
    return parts[0][1], int(parts[1][1])
