"""Node ids cost work (mesh.wire.idwork): a record's key counts only with a nonce proving the network's
bits, checked with one hash before the signature, signed into the record, kept in the home."""

from __future__ import annotations

import dataclasses

import pytest

from mesh.errors import ConfigError
from mesh.wire.identity import WORK_FILE, Identity, ensure_work, load, load_or_create
from mesh.wire.idwork import NONCE_LIMIT, required_bits, solve, work_bits
from mesh.wire.records import check_record, make_record

pytestmark = pytest.mark.timeout(60)
NET = "homemesh-test"
T0 = 1_700_000_000_000


def record(who: Identity):
    return make_record(who, NET, "10.0.0.2:4750", ["python"], [], True, T0)


def weak_identity(below: int) -> Identity:
    """A key whose nonce proves fewer than `below` bits (but some: it is not just an unsolved 0)."""
    while True:
        ident = Identity.generate(bits=4)
        if ident.work_bits() < below:
            return ident


def test_the_requirement_is_20_bits_unless_a_test_network_lowers_it(monkeypatch):
    monkeypatch.delenv("MESH_ID_BITS")
    assert required_bits() == 20
    monkeypatch.setenv("MESH_ID_BITS", "12")
    assert required_bits() == 12
    for bad in ("x", "-1", "33", ""):
        monkeypatch.setenv("MESH_ID_BITS", bad)
        with pytest.raises(ConfigError, match="MESH_ID_BITS"):
            required_bits()


def test_solve_finds_the_first_nonce_with_enough_bits():
    key = Identity.generate(bits=0).public_key
    nonce = solve(key, 10)
    assert work_bits(key, nonce) >= 10
    assert all(work_bits(key, n) < 10 for n in range(nonce))


@pytest.mark.parametrize("nonce", [-1, NONCE_LIMIT, True, 1.0, "5"])
def test_a_nonce_out_of_range_or_of_another_type_proves_nothing(nonce):
    assert work_bits(b"k" * 32, nonce) == 0


def test_a_record_of_an_id_without_its_work_is_refused_before_its_signature(monkeypatch):
    monkeypatch.setenv("MESH_ID_BITS", "16")
    strong, weak = Identity.generate(), weak_identity(16)
    assert strong.work_bits() >= 16 and check_record(record(strong), NET, T0) == ""
    assert check_record(record(weak), NET, T0) == "weak-id"
    # the work is checked first: a weak id's bad signature costs the receiver one hash, not a verify
    assert check_record(dataclasses.replace(record(weak), sig="00" * 64), NET, T0) == "weak-id"


def test_the_nonce_is_signed_and_bound_to_its_key(monkeypatch):
    monkeypatch.setenv("MESH_ID_BITS", "8")
    alice = Identity.generate()
    mallory = next(m for m in iter(Identity.generate, None) if work_bits(m.public_key, alice.work) < 8)
    other = next(n for n in range(alice.work + 1, NONCE_LIMIT) if work_bits(alice.public_key, n) >= 8)
    # a relay swapping in another valid nonce breaks the signature
    assert check_record(dataclasses.replace(record(alice), work=other), NET, T0) == "bad-record"
    # a nonce proves work for its own key only: Mallory's record under Alice's nonce is refused
    borrowed = make_record(dataclasses.replace(mallory, work=alice.work), NET, "10.0.0.3:1", [], [], True, T0)
    assert check_record(borrowed, NET, T0) == "weak-id"


def test_a_home_finds_its_work_once_and_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MESH_ID_BITS", "12")
    ident, created = load_or_create(tmp_path)
    assert created and ident.work == 0 and not (tmp_path / WORK_FILE).exists()  # creating does no work
    said: list[str] = []
    done = ensure_work(tmp_path, ident, said.append)
    assert done.work_bits() >= 12 and done.public_key == ident.public_key
    assert said and "12 bits" in said[0]
    assert load(tmp_path).work == done.work  # kept in the home
    said.clear()
    assert ensure_work(tmp_path, load(tmp_path), said.append).work == done.work and not said  # not again
    (tmp_path / WORK_FILE).write_text("garbage\n")  # a damaged file: the work is found again
    assert ensure_work(tmp_path, load(tmp_path), said.append).work_bits() >= 12 and said
    monkeypatch.setenv("MESH_ID_BITS", "14")  # a network asking more: found again, to the new level
    assert ensure_work(tmp_path, load(tmp_path), said.append).work_bits() >= 14
