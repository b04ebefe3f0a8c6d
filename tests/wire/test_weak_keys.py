"""Red team H (2026-12-08, F3): the Ed25519 identity point (01 00…00) is a public key under which the
signature R = identity, S = 0 verifies for every message with a cofactorless check (OpenSSL's), so anyone
could sign as its node id: records naming any address, results, receipts, ledger heads. Keys of small
order, off the prime-order subgroup or not canonically encoded are refused wherever a signature is
checked; an honest key (a scalar times the base point) never is one."""

from __future__ import annotations

import time

import pytest

from mesh import PROTOCOL_VERSION
from mesh.wire.identity import Identity, verify
from mesh.wire.idwork import solve
from mesh.wire.messages import Offer, PeerRecord, RateCard
from mesh.wire.records import check_record

pytestmark = pytest.mark.timeout(30)
P = 2**255 - 19
IDENTITY = bytes([1]) + bytes(31)
TRIVIAL_SIG = bytes([1]) + bytes(63)  # R = the identity point, S = 0
WEAK = {
    "identity (order 1)": IDENTITY,
    "order 4 (0, -1)": bytes(32),
    "order 2 (p-1)": (P - 1).to_bytes(32, "little"),
    "order 8": bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    "order 8, other": bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    "identity, not canonical (p+1)": (P + 1).to_bytes(32, "little"),
}


@pytest.mark.parametrize("key", list(WEAK.values()), ids=list(WEAK))
def test_a_weak_key_verifies_nothing(key):
    assert not verify(key, TRIVIAL_SIG, b"a receipt, a result, a ledger head, anything")
    assert not verify(key, bytes(64), b"anything")


def test_the_identity_points_record_is_refused_though_its_work_is_done():
    now = int(time.time() * 1000)
    nonce = solve(IDENTITY, 8)
    rec = PeerRecord(IDENTITY.hex(), "203.0.113.7:4750", ["python"], [], True, PROTOCOL_VERSION, now,
                     now + 1_800_000, TRIVIAL_SIG.hex(), [], RateCard(), nonce, 0, Offer())
    assert check_record(rec, "homemesh-test", now) != ""


def test_honest_keys_still_verify():
    for _ in range(20):
        me = Identity.generate(0)
        assert verify(me.public_key, me.sign(b"hello"), b"hello")
