"""Signed chain heads. The hash chain shows an edited row, but not a chain rebuilt from the edit on, nor
rows cut from its end. So the node signs its chain's head (entry count and that entry's hash) with its
key when the ledger is first opened, every HEAD_EVERY entries, and with every write: the latest head,
signed in the same transaction as the entries it covers (so a killed node leaves no unsigned tail),
replaces the previous latest. `verify` then holds the chain to every head it has: a rebuilt chain no
longer matches them, a cut one ends before the last.
Whoever holds the node's key can sign again; heads kept by peers are what stops that."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mesh.wire.identity import verify

HEAD_EVERY = 64  # entries between signed heads (besides the first and the one at every close)
GENESIS = "0" * 64  # the hash "before" entry 1
_TAG = b"homemesh/v1/ledger-head\x00"

Signer = Callable[[bytes], bytes]


def head_bytes(node: str, n: int, head_hash: str) -> bytes:
    """The one byte layout a head's signature covers: whose ledger, how many entries, the last one's hash."""
    return _TAG + node.encode() + b"\x00" + struct.pack(">q", n) + head_hash.encode()


@dataclass(frozen=True)
class Head:
    n: int  # entries in the chain when it was signed (0: an empty ledger)
    hash: str  # hash of entry n (GENESIS for n = 0)
    sig: str  # hex Ed25519 signature by the node's key over head_bytes

    @classmethod
    def sign(cls, signer: Signer, node: str, n: int, head_hash: str) -> Head:
        return cls(n, head_hash, signer(head_bytes(node, n, head_hash)).hex())


def check_heads(heads: list[Head], hashes: Mapping[int, str], count: int, node: str, public_key: bytes | None
                ) -> tuple[int, str]:
    """Hold a chain of `count` entries (`hashes`: entry id -> hash, at least at every head's n) to its
    signed heads. Returns (0, '') when they agree, else (entry id, what is wrong) for the first problem."""
    if not heads:
        return 0, ("no signed head: the ledger was never opened by a node that signs its history, or its "
                   "heads were deleted")
    heads = sorted(heads, key=lambda h: h.n)
    for h in heads:
        if public_key is not None and not signed_by(h, node, public_key):
            return h.n, f"the head signed at entry {h.n} does not verify with this node's key (forged)"
        why = against_chain(h, hashes, count)
        if why:
            return min(h.n, count), why
    first = heads[0].n
    signed = {h.n for h in heads}
    for n in range((first // HEAD_EVERY + 1) * HEAD_EVERY, count + 1, HEAD_EVERY):
        if n not in signed:
            return n, f"no signed head at entry {n} (one is signed every {HEAD_EVERY}): heads were deleted"
    return 0, ""


def signed_by(head: Head, node: str, public_key: bytes) -> bool:
    """Whether `head` carries the signature of `node`'s key."""
    try:
        return verify(public_key, bytes.fromhex(head.sig), head_bytes(node, head.n, head.hash))
    except ValueError:
        return False


def against_chain(head: Head, hashes: Mapping[int, str], count: int) -> str:
    """'' when a chain of `count` entries (`hashes`: entry id -> hash, at least at head.n) still holds the
    entry `head` names, else what was done to it."""
    if head.n > count:
        return (f"the ledger ends at entry {count}, but its head was signed at entry {head.n}: entries after "
                f"{count} were deleted")
    if (GENESIS if head.n == 0 else hashes.get(head.n)) != head.hash:
        return (f"entry {head.n} is not the one its signed head names: the chain was rewritten up to there "
                "and hashed again")
    return ""
