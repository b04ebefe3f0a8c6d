"""mesh.node.twin on its own: which records of a node's own key prove another holder of it."""

from __future__ import annotations

import dataclasses
import time

import pytest

from mesh.node.twin import KeyTwins
from mesh.wire.identity import Identity
from mesh.wire.records import check_record, make_record

pytestmark = pytest.mark.timeout(30)
NET = "test"
ME = Identity.generate()
NOW = int(time.time() * 1000)
STARTED = NOW - 60_000


def record(addr: str, issued: int, who: Identity = ME):
    return make_record(who, NET, addr, ["python"], [], False, issued)


def verify(rec) -> str:
    return check_record(rec, NET, NOW)


def test_only_a_valid_record_this_process_did_not_sign_issued_since_it_started_is_proof():
    twins = KeyTwins()
    mine = record("10.0.0.2:4750", NOW - 1_000)
    twins.signed(mine)
    assert twins.check(mine, "p1", NOW, STARTED, verify) is None  # passed back to us: our own
    last_run = record("10.0.0.2:4751", STARTED - 5_000)  # this home's previous run, still held by peers
    assert twins.check(last_run, "p1", NOW, STARTED, verify) is None
    forged = dataclasses.replace(record("192.0.2.9:4750", NOW - 500), addr="198.51.100.1:4750")  # sig no longer fits
    assert twins.check(forged, "p1", NOW, STARTED, verify) is None
    assert twins.status() is None and twins.count == 0

    other = record("192.0.2.9:4750", NOW - 500)  # the copy's, validly signed with the same key
    twin = twins.check(other, "p2", NOW, STARTED, verify)
    assert twin is not None and twin.addr == "192.0.2.9:4750" and twin.via == "p2"
    assert twins.check(other, "p3", NOW, STARTED, verify) is None  # the same record again: counted once
    assert twins.status()["records_seen"] == 1 and twins.status()["addresses"] == ["192.0.2.9:4750"]


def test_the_signed_memory_is_bounded():
    from mesh.node import twin
    twins = KeyTwins()
    for i in range(twin.MAX_SIGNED + 10):
        twins.signed(dataclasses.replace(record("10.0.0.2:4750", NOW), sig=f"{i:x}"))
    assert len(twins._mine) == twin.MAX_SIGNED
