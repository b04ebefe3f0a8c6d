"""Proof of work for node ids (S/Kademlia's static crypto puzzle, Baumgart & Mies 2007): a key counts only
with a nonce such that SHA-256(tag ‖ key ‖ nonce) starts with ID_BITS zero bits. Honest nodes pay once
(about 2 s of Python at 20 bits, stored in the home); an operator minting thousands of ids pays thousands
of times, and a receiver checks one with a single hash, before the signature.

It raises the price of ids, it does not make them scarce: optimised SHA-256 on a GPU finds one in
milliseconds. What an id can earn still comes from verified work (mesh.core.trust, Candidate.weight)."""

from __future__ import annotations

import hashlib
import os
from typing import Callable

from mesh.errors import ConfigError

ID_BITS = 20  # the network's requirement; every node of one network must use the same
BITS_ENV = "MESH_ID_BITS"  # a test network's lower requirement (0–32); users leave it unset
MAX_BITS = 32
NONCE_LIMIT = 1 << 53  # a JSON integer every decoder reads exactly
_TAG = b"homemesh/v1/id-work\x00"


def required_bits() -> int:
    """The leading zero bits this node demands of every id (and earns for its own)."""
    text = os.environ.get(BITS_ENV)
    if text is None:
        return ID_BITS
    try:
        bits = int(text)
    except ValueError:
        bits = -1
    if not 0 <= bits <= MAX_BITS:
        raise ConfigError(f"${BITS_ENV} must be a whole number from 0 to {MAX_BITS} (it is {text!r})")
    return bits


def work_bits(key: bytes, nonce: int) -> int:
    """How many leading zero bits `nonce` proves for `key` (0 for a nonce out of range)."""
    if type(nonce) is not int or not 0 <= nonce < NONCE_LIMIT:
        return 0
    digest = hashlib.sha256(_TAG + key + nonce.to_bytes(8, "big")).digest()
    value = int.from_bytes(digest, "big")
    return 256 - value.bit_length()


def solve(key: bytes, bits: int, progress: Callable[[int], None] | None = None) -> int:
    """The first nonce proving `bits` for `key`; `progress(tries)` every 2**20 tries. 2**bits tries on
    average, so the caller says so before a long one."""
    base = hashlib.sha256(_TAG + key)
    limit = 1 << (256 - bits)
    for nonce in range(NONCE_LIMIT):
        h = base.copy()
        h.update(nonce.to_bytes(8, "big"))
        if int.from_bytes(h.digest(), "big") < limit:
            return nonce
        if progress and nonce and not nonce & 0xFFFFF:
            progress(nonce)
    raise ConfigError(f"no nonce proves {bits} bits of work for this key")  # 2**53 tries: unreachable
