"""The ledger (ledger.store) on a real SQLite file, with real signed receipts (ledger.receipts): append,
idempotence, balances, reputations, and a hash chain that notices edits made behind its back."""

from __future__ import annotations

import copy
import sqlite3

import pytest

from ledger.receipts import check_receipt, make_receipt, payer_id
from ledger.store import GENESIS, Entry, Ledger, entry_hash
from mesh.core.admission import UNDERPAID
from mesh.core.policy import reputation
from mesh.errors import LedgerError
from mesh.wire.identity import Identity

pytestmark = pytest.mark.timeout(60)

TS = 1_700_000_000_000


@pytest.fixture
def me() -> Identity:
    return Identity.generate()


@pytest.fixture
def peer() -> Identity:
    return Identity.generate()


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    yield led
    led.close()


def paid(me: Identity, worker: Identity, job: str, step: str, amount: float) -> Entry:
    """I paid `worker` for a step I submitted."""
    r = make_receipt(me, job, step, worker.node_id, amount, TS)
    return Entry("paid", job, step, worker.node_id, -amount, {"receipt": r, "digest": "d" * 64})


def earned(me: Identity, payer: Identity, job: str, step: str, amount: float) -> Entry:
    """`payer` paid me for a step I ran."""
    r = make_receipt(payer, job, step, me.node_id, amount, TS)
    return Entry("earned", job, step, payer.node_id, amount, {"receipt": r})


def batch(me: Identity, peer: Identity) -> list[Entry]:
    return [
        paid(me, peer, "job1", "a", 1.25),
        Entry("agreed", "job1", "a", peer.node_id, 0.0, {"digest": "d" * 64}),
        earned(me, peer, "job2", "x", 3.5),
        Entry("disagreed", "job1", "b", peer.node_id),
        Entry("no_show", "job1", "c", "f" * 64),
    ]


def raw(path, sql: str, *args) -> None:
    """Edit the database behind the ledger's back (as someone with the file would)."""
    db = sqlite3.connect(path)
    with db:
        db.execute(sql, args)
    db.close()


# -- append, balance, stats -------------------------------------------------------------------------------

def test_append_a_batch_and_read_it_back(ledger, me, peer):
    assert ledger.append(batch(me, peer), TS) == 5
    assert ledger.balance() == pytest.approx(-1.25 + 3.5)
    assert ledger.totals() == {"paid": -1.25, "earned": 3.5}
    hist = ledger.history()
    assert [h["id"] for h in hist] == [5, 4, 3, 2, 1]  # newest first
    assert [h["kind"] for h in reversed(hist)] == ["paid", "agreed", "earned", "disagreed", "no_show"]
    first = hist[-1]
    assert first["peer"] == peer.node_id and first["amount"] == -1.25 and first["ts"] == TS
    assert first["detail"]["receipt"]["worker"] == peer.node_id
    assert payer_id(first["detail"]["receipt"]) == me.node_id
    assert ledger.history(limit=2) == hist[:2]
    assert ledger.verify(me.node_id) == (5, "")


def test_empty_ledger(ledger, me):
    assert ledger.balance() == 0
    assert ledger.totals() == {}
    assert ledger.peer_stats() == {}
    assert ledger.history() == []
    assert ledger.verify(me.node_id) == (0, "")


def test_duplicate_entries_are_skipped(ledger, me, peer):
    entries = batch(me, peer)
    assert ledger.append(entries, TS) == 5
    assert ledger.append(entries, TS + 1) == 0  # the same receipts again: a no-op
    # same (kind, job, step, peer) with a different amount and receipt: still the same payment
    assert ledger.append([paid(me, peer, "job1", "a", 99.0)], TS + 2) == 0
    assert ledger.balance() == pytest.approx(2.25)
    # a new key is added, and duplicates within one batch count once
    fresh = paid(me, peer, "job3", "a", 0.5)
    assert ledger.append([fresh, fresh, entries[0]], TS + 3) == 1
    assert ledger.balance() == pytest.approx(1.75)
    assert ledger.verify(me.node_id) == (6, "")


def test_same_step_different_kind_or_peer_is_not_a_duplicate(ledger, me, peer):
    other = Identity.generate()
    assert ledger.append([paid(me, peer, "j", "s", 1.0), paid(me, other, "j", "s", 1.0),
                          Entry("agreed", "j", "s", peer.node_id)], TS) == 3


def test_unknown_kind_is_refused_and_nothing_is_written(ledger, me, peer):
    with pytest.raises(LedgerError, match="unknown entry kind 'bonus'"):
        ledger.append([paid(me, peer, "j", "s", 1.0), Entry("bonus", "j", "s", peer.node_id, 100.0)], TS)
    assert ledger.history() == []


def test_a_failing_batch_is_rolled_back(ledger, me, peer):
    bad = Entry("agreed", "j", "t", peer.node_id, 0.0, {"x": float("nan")})  # has no canonical JSON
    with pytest.raises((ValueError, LedgerError)):
        ledger.append([paid(me, peer, "j", "s", 1.0), bad], TS)
    assert ledger.history() == []
    assert ledger.append([paid(me, peer, "j", "s", 1.0)], TS) == 1  # the ledger is still usable
    assert ledger.verify(me.node_id) == (1, "")


def test_peer_stats_reputation(ledger, me, peer):
    good, bad, ghost = "a" * 64, "b" * 64, "c" * 64
    entries = [Entry("agreed", "j", f"s{i}", good) for i in range(4)]
    entries += [Entry("disagreed", "j", "s0", bad), Entry("disagreed", "j", "s1", bad), Entry("agreed", "j", "s2", bad)]
    entries += [Entry("no_show", "j", "s0", ghost)]
    entries += [paid(me, peer, "j", "s0", 1.0)]  # money does not count towards reputation
    ledger.append(entries, TS)
    stats = ledger.peer_stats()
    assert list(stats) == [good, bad, ghost]  # best first: 5/6, 2/5, 1/3
    assert stats[good] == {"agreed": 4, "disagreed": 0, "no_show": 0, "penalty": 0, "spot_failed": 0, "reputation": round(reputation(4, 0, 0), 6)}
    assert stats[bad] == {"agreed": 1, "disagreed": 2, "no_show": 0, "penalty": 0, "spot_failed": 0, "reputation": 0.4}
    assert stats[ghost]["reputation"] == pytest.approx(1 / 3, abs=1e-6)
    assert peer.node_id not in stats


def test_ledger_survives_reopen(tmp_path, me, peer):
    path = tmp_path / "ledger.db"
    led = Ledger(path)
    led.append(batch(me, peer), TS)
    balance, stats, hist = led.balance(), led.peer_stats(), led.history()
    led.close()

    led = Ledger(path)
    assert (led.balance(), led.peer_stats(), led.history()) == (balance, stats, hist)
    assert led.verify(me.node_id) == (5, "")
    assert led.append(batch(me, peer), TS + 1) == 0  # still idempotent after a restart
    assert led.append([paid(me, peer, "job9", "z", 2.0)], TS + 1) == 1
    assert led.verify(me.node_id) == (6, "")
    led.close()

    ro = Ledger(path, readonly=True)
    assert ro.verify(me.node_id) == (6, "")
    assert ro.balance() == pytest.approx(balance - 2.0)
    ro.close()


def test_accounts_read_back_what_receipts_paid_too_little_for_the_credit_line(tmp_path, me, peer):
    """A worker's earned entries keep the step's work as it measured it (`measured`): read back at a
    restart, receipts for less than 1/UNDERPAID of it still count against the payer's credit line."""
    path = tmp_path / "ledger.db"
    led = Ledger(path)
    cheap = [earned(me, peer, "j", f"s{i}", 0.01) for i in range(3)]
    for e in cheap:
        e.detail["measured"] = 0.4
    led.append([*cheap, earned(me, peer, "j", "old", 0.01), paid(me, peer, "k", "a", 0.5)], TS)  # "old": no measure
    led.close()
    acct = Ledger(path, readonly=True).accounts()[peer.node_id]
    assert acct.earned == pytest.approx(0.04) and acct.paid == pytest.approx(0.5)
    assert acct.short == pytest.approx(3 * (0.4 / UNDERPAID - 0.01))


def test_readonly_open_of_a_missing_ledger(tmp_path):
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger(tmp_path / "nope.db", readonly=True)


def test_unopenable_path_is_a_ledger_error(tmp_path):
    with pytest.raises(LedgerError, match="cannot open ledger"):
        Ledger(tmp_path / "no-such-dir" / "ledger.db")


def test_chain_links_each_entry_to_the_previous_one(tmp_path, ledger, me, peer):
    ledger.append(batch(me, peer), TS)
    db = sqlite3.connect(tmp_path / "ledger.db")
    rows = db.execute("SELECT id, ts, kind, job, step, peer, amount, detail, prev, hash FROM entries ORDER BY id").fetchall()
    db.close()
    prev = GENESIS
    for rid, ts, kind, job, step, p, amount, detail, rprev, rhash in rows:
        assert rprev == prev
        assert rhash == entry_hash(prev, rid, ts, kind, job, step, p, amount, detail)
        prev = rhash


# -- tampering --------------------------------------------------------------------------------------------

def test_editing_an_amount_is_detected_and_names_the_entry(tmp_path, ledger, me, peer):
    ledger.append(batch(me, peer), TS)
    raw(tmp_path / "ledger.db", "UPDATE entries SET amount = 300.0 WHERE id = 3")
    n, why = ledger.verify(me.node_id)
    assert n == 3
    assert why == "entry 3 does not match its hash (edited)"


@pytest.mark.parametrize("column,value", [("peer", "e" * 64), ("job", "job7"), ("kind", "no_show"),
                                          ("ts", TS + 1), ("detail", "{\"x\":1}"), ("amount", 7.0)])
def test_editing_any_column_is_detected(tmp_path, ledger, me, peer, column, value):
    ledger.append(batch(me, peer), TS)
    raw(tmp_path / "ledger.db", f"UPDATE entries SET {column} = ? WHERE id = 4", value)
    assert ledger.verify(me.node_id) == (4, "entry 4 does not match its hash (edited)")


def test_deleting_a_middle_row_is_detected(tmp_path, ledger, me, peer):
    ledger.append(batch(me, peer), TS)
    raw(tmp_path / "ledger.db", "DELETE FROM entries WHERE id = 2")
    n, why = ledger.verify(me.node_id)
    assert n == 3 and why == "entry 2 is missing"


def test_deleting_and_renumbering_is_detected(tmp_path, ledger, me, peer):
    ledger.append(batch(me, peer), TS)
    path = tmp_path / "ledger.db"
    raw(path, "DELETE FROM entries WHERE id = 2")
    raw(path, "UPDATE entries SET id = id - 1 WHERE id > 2")
    assert ledger.verify(me.node_id) == (2, "entry 2 does not match its hash (edited)")


def test_edit_with_recomputed_chain_is_caught_by_the_receipt(tmp_path, ledger, me, peer):
    """Someone who rewrites the amount *and* re-hashes the whole chain still cannot forge the payer's
    signature: verify compares money entries with their receipts."""
    ledger.append(batch(me, peer), TS)
    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE entries SET amount = 1000.0 WHERE id = 3")  # the earned entry
        prev = GENESIS
        for rid, ts, kind, job, step, p, amount, detail in db.execute(
                "SELECT id, ts, kind, job, step, peer, amount, detail FROM entries ORDER BY id").fetchall():
            h = entry_hash(prev, rid, ts, kind, job, step, p, amount, detail)
            db.execute("UPDATE entries SET prev = ?, hash = ? WHERE id = ?", (prev, h, rid))
            prev = h
    db.close()
    assert ledger.verify(me.node_id) == (3, "entry 3: amount differs from its receipt")


def test_paid_entry_with_a_receipt_signed_by_someone_else_fails(ledger, me, peer):
    mallory = Identity.generate()
    r = make_receipt(mallory, "j", "s", peer.node_id, 1.0, TS)  # valid signature, wrong payer
    ledger.append([Entry("paid", "j", "s", peer.node_id, -1.0, {"receipt": r})], TS)
    assert ledger.verify(me.node_id) == (1, "entry 1: receipt is for another payment")
    assert ledger.verify(mallory.node_id) == (1, "")  # it is mallory's payment, not mine


@pytest.mark.parametrize("case", ["forged-sig", "wrong-worker", "wrong-job", "wrong-step", "wrong-sign",
                                  "no-receipt", "earned-from-other", "earned-for-other"])
def test_money_entries_must_match_their_receipt(ledger, me, peer, case):
    other = Identity.generate()
    if case == "forged-sig":
        e = paid(me, peer, "j", "s", 1.0)
        e.detail["receipt"]["amount"] = 2.0
        e = Entry("paid", "j", "s", peer.node_id, -2.0, e.detail)
        expect = "receipt signature does not verify"
    elif case == "wrong-worker":
        e = Entry("paid", "j", "s", other.node_id, -1.0, paid(me, peer, "j", "s", 1.0).detail)
        expect = "receipt is for another payment"
    elif case == "wrong-job":
        e = Entry("paid", "j2", "s", peer.node_id, -1.0, paid(me, peer, "j", "s", 1.0).detail)
        expect = "receipt is for another payment"
    elif case == "wrong-step":
        e = Entry("paid", "j", "s2", peer.node_id, -1.0, paid(me, peer, "j", "s", 1.0).detail)
        expect = "receipt is for another payment"
    elif case == "wrong-sign":  # a payment recorded as a positive amount
        e = Entry("paid", "j", "s", peer.node_id, 1.0, paid(me, peer, "j", "s", 1.0).detail)
        expect = "amount differs from its receipt"
    elif case == "no-receipt":
        e = Entry("earned", "j", "s", peer.node_id, 5.0, {"digest": "d"})
        expect = "credit entry without a receipt"
    elif case == "earned-from-other":  # receipt signed by `other`, entry claims `peer` paid
        e = Entry("earned", "j", "s", peer.node_id, 1.0, earned(me, other, "j", "s", 1.0).detail)
        expect = "receipt is for another payment"
    else:  # a receipt paying someone else, recorded as my earning
        r = make_receipt(peer, "j", "s", other.node_id, 1.0, TS)
        e = Entry("earned", "j", "s", peer.node_id, 1.0, {"receipt": r})
        expect = "receipt is for another payment"
    ledger.append([Entry("agreed", "j", "s", peer.node_id), e], TS)
    assert ledger.verify(me.node_id) == (2, f"entry 2: {expect}")


def test_non_money_entries_need_no_receipt(ledger, me, peer):
    ledger.append([Entry(k, "j", "s", peer.node_id) for k in ("agreed", "disagreed", "no_show")], TS)
    assert ledger.verify(me.node_id) == (3, "")


def test_verify_stops_at_the_first_bad_entry(tmp_path, ledger, me, peer):
    ledger.append(batch(me, peer), TS)
    raw(tmp_path / "ledger.db", "UPDATE entries SET amount = 7 WHERE id IN (2, 4)")
    assert ledger.verify(me.node_id)[0] == 2


def test_sqlite3_cli_edit_is_detected(tmp_path, ledger, me, peer):
    import shutil
    import subprocess
    cli = shutil.which("sqlite3")
    if cli is None:
        pytest.skip("sqlite3 command-line tool not installed (the python-module edits above cover this)")
    ledger.append(batch(me, peer), TS)
    subprocess.run([cli, str(tmp_path / "ledger.db"), "UPDATE entries SET amount = -0.01 WHERE id = 1;"],
                   check=True, timeout=20, capture_output=True)
    assert ledger.verify(me.node_id) == (1, "entry 1 does not match its hash (edited)")


# -- receipts ---------------------------------------------------------------------------------------------

def test_good_receipt(me, peer):
    r = make_receipt(me, "job", "step", peer.node_id, 1.5, TS)
    assert set(r) == {"job", "step", "worker", "amount", "payer", "ts", "sig"}
    assert check_receipt(r) == ""
    assert payer_id(r) == me.node_id
    assert check_receipt(make_receipt(me, "job", "step", peer.node_id, 0, TS)) == ""
    assert check_receipt(make_receipt(me, "job", "step", peer.node_id, 7, TS)) == ""


@pytest.mark.parametrize("field,value", [("amount", 1.5000001), ("amount", 15.0), ("job", "job2"), ("step", "s"),
                                         ("worker", "0" * 64), ("ts", TS + 1)])
def test_tampered_receipt_fails(me, peer, field, value):
    r = make_receipt(me, "job", "step", peer.node_id, 1.5, TS)
    r[field] = value
    assert check_receipt(r) == "receipt signature does not verify"


def test_receipt_resigned_by_another_key_names_another_payer(me, peer):
    mallory = Identity.generate()
    r = make_receipt(me, "job", "step", peer.node_id, 1.5, TS)
    r2 = dict(r, payer=mallory.public_key.hex())
    assert check_receipt(r2) == "receipt signature does not verify"  # my signature, mallory's key
    r3 = make_receipt(mallory, "job", "step", peer.node_id, 1.5, TS)
    assert check_receipt(r3) == "" and payer_id(r3) != payer_id(r)


@pytest.mark.parametrize("mutate,why", [
    (lambda r: r.update(amount="1.5"), "amount is out of range"),
    (lambda r: r.update(amount=True), "amount is out of range"),
    (lambda r: r.update(amount=-1.0), "amount is out of range"),
    (lambda r: r.update(amount=float("nan")), "amount is out of range"),
    (lambda r: r.update(amount=float("inf")), "amount is out of range"),
    (lambda r: r.update(amount=1e9), "amount is out of range"),
    (lambda r: r.update(amount=None), "amount is out of range"),
    (lambda r: r.update(ts=1.0), "timestamp is not an integer"),
    (lambda r: r.update(ts=True), "timestamp is not an integer"),
    (lambda r: r.update(ts="1"), "timestamp is not an integer"),
    (lambda r: r.update(job=1), "field types are wrong"),
    (lambda r: r.update(worker=None), "field types are wrong"),
    (lambda r: r.update(sig=b"\x00" * 64), "field types are wrong"),
    (lambda r: r.update(payer="zz" * 32), "not hex"),
    (lambda r: r.update(sig="xyz"), "not hex"),
    (lambda r: r.update(payer="ab" * 31), "signature does not verify"),
    (lambda r: r.update(sig=""), "signature does not verify"),
    (lambda r: r.pop("sig"), "fields are wrong"),
    (lambda r: r.pop("ts"), "fields are wrong"),
    (lambda r: r.update(bonus=1), "fields are wrong"),
])
def test_check_receipt_rejects_bad_types(me, peer, mutate, why):
    r = make_receipt(me, "job", "step", peer.node_id, 1.5, TS)
    mutate(r)
    result = check_receipt(r)
    assert result and why in result


@pytest.mark.parametrize("thing", [None, [], "receipt", 1.5, {"receipt": {}}])
def test_check_receipt_rejects_non_receipts(thing):
    assert check_receipt(thing) == "receipt fields are wrong"


def test_receipt_check_does_not_mutate(me, peer):
    r = make_receipt(me, "job", "step", peer.node_id, 1.5, TS)
    before = copy.deepcopy(r)
    check_receipt(r)
    assert r == before


def test_group_commit_counts_each_batch_and_dedupes_across_them(ledger, me, peer):
    first, second = batch(me, peer), batch(me, peer)
    assert ledger.append_many([(first, 1000), (second, 1001)]) == [len(first), 0]  # the second repeats the first
    assert ledger.append_many([(first, 1002)]) == [0]
    n, why = ledger.verify(me.node_id)
    assert why == "" and n == len(first)


def test_group_commit_is_all_or_nothing(ledger, me, peer):
    good = batch(me, peer)
    with pytest.raises(LedgerError):
        ledger.append_many([(good, 1000), ([Entry("gift", "j", "s", peer.node_id)], 1000)])
    assert ledger.history() == []


def test_schema_is_migrated_once_and_a_newer_schema_is_refused(tmp_path):
    from ledger.store import SCHEMA_VERSION

    Ledger(tmp_path / "l.db").close()
    Ledger(tmp_path / "l.db").close()  # re-opening applies nothing twice
    db = sqlite3.connect(tmp_path / "l.db")
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="newer than this homemesh"):
        Ledger(tmp_path / "l.db")


def test_a_read_only_database_is_a_clear_ledger_error_and_changes_nothing(ledger, me, peer):
    ledger.append(batch(me, peer), 1000)
    ledger.db.execute("PRAGMA query_only = ON")  # as root cannot make a file unwritable for itself
    with pytest.raises(LedgerError, match="readonly"):
        ledger.append([paid(me, peer, "j9", "s", 1.0)], 1001)
    ledger.db.execute("PRAGMA query_only = OFF")
    n, why = ledger.verify(me.node_id)
    assert why == "" and n == len(batch(me, peer))


# -- the typed receipt ------------------------------------------------------------------------------------

def test_receipt_round_trips_to_the_very_json_it_was_read_from(me, peer):
    from ledger.receipts import Receipt
    from mesh.wire.canonical import canonical

    for amount in (1.5, 7, 0):  # an int amount stays an int: "7" and "7.0" are different signed bytes
        r = make_receipt(me, "job", "step", peer.node_id, amount, TS)
        typed = Receipt.from_json(r)
        assert typed.to_json() == r and canonical(typed.to_json()) == canonical(r)
        assert type(typed.amount) is type(amount)
        assert typed.problem() == "" and typed.payer_id == me.node_id == payer_id(r)
        assert list(typed.to_json()) == ["job", "step", "worker", "amount", "payer", "ts", "sig"]


def test_receipt_from_json_refuses_what_check_receipt_refuses(me, peer):
    from ledger.receipts import BadReceipt, Receipt, verified

    r = make_receipt(me, "job", "step", peer.node_id, 1.5, TS)
    with pytest.raises(BadReceipt, match="fields are wrong"):
        Receipt.from_json({**r, "bonus": 1})
    with pytest.raises(BadReceipt, match="amount is out of range"):
        Receipt.from_json({**r, "amount": True})
    with pytest.raises(BadReceipt, match="signature does not verify"):
        verified({**r, "amount": 2.0})


def test_a_typed_receipt_in_an_entry_is_stored_as_its_json(tmp_path, me, peer):
    """The worker books a Receipt object; the row (and its hash) is the one the plain dict gives."""
    from ledger.receipts import Receipt

    r = make_receipt(peer, "job", "step", me.node_id, 2.5, TS)
    rows = []
    for name, receipt in (("plain", r), ("typed", Receipt.from_json(r))):
        led = Ledger(tmp_path / f"{name}.db")
        led.append([Entry("earned", "job", "step", peer.node_id, 2.5, {"receipt": receipt})], TS)
        assert led.verify(me.node_id) == (1, "")
        rows.append(led.db.execute("SELECT detail, hash FROM entries").fetchall())
        led.close()
    assert rows[0] == rows[1]


def test_a_detail_value_without_json_is_refused(ledger, peer):
    with pytest.raises(TypeError, match="has no to_json"):
        ledger.append([Entry("agreed", "j", "s", peer.node_id, 0.0, {"why": object()})], TS)
    assert ledger.history() == []


# -- signed heads -----------------------------------------------------------------------------------------

def signed(tmp_path, me: Identity) -> Ledger:
    return Ledger(tmp_path / "signed.db", signer=me.sign, node=me.node_id)


def test_heads_are_signed_at_open_every_64_entries_and_the_latest_with_each_write(tmp_path, me, peer):
    led = signed(tmp_path, me)
    assert [h.n for h in led.heads()] == [0]
    led.append([Entry("agreed", "j", f"s{i}", peer.node_id) for i in range(130)], TS)
    assert [h.n for h in led.heads()] == [0, 64, 128, 130]
    led.append([Entry("agreed", "j", "t", peer.node_id)], TS)
    assert [h.n for h in led.heads()] == [0, 64, 128, 131]  # the latest replaces the previous latest
    del led  # killed: never closed
    led = Ledger(tmp_path / "signed.db", readonly=True)
    assert [h.n for h in led.heads()] == [0, 64, 128, 131]
    assert led.verify(me.node_id, me.public_key) == (131, "")
    assert led.verify(me.node_id, peer.public_key)[1].endswith("does not verify with this node's key (forged)")
    led.close()


def test_a_ledger_without_heads_or_missing_one_does_not_verify_with_the_key(tmp_path, me, peer):
    led = Ledger(tmp_path / "plain.db")  # never opened by a node that signs
    led.append([Entry("agreed", "j", "s", peer.node_id)], TS)
    assert led.verify(me.node_id) == (1, "")  # the chain alone
    assert "no signed head" in led.verify(me.node_id, me.public_key)[1]
    led.close()
    led = signed(tmp_path, me)
    led.append([Entry("agreed", "j", f"s{i}", peer.node_id) for i in range(70)], TS)
    led.close()
    raw(tmp_path / "signed.db", "DELETE FROM heads WHERE n = 64")
    led = Ledger(tmp_path / "signed.db", readonly=True)
    assert led.verify(me.node_id, me.public_key) == (64, "no signed head at entry 64 (one is signed every 64): "
                                                          "heads were deleted")
    led.close()


def test_rows_cut_from_the_end_after_a_close_are_seen(tmp_path, me, peer):
    led = signed(tmp_path, me)
    led.append(batch(me, peer), TS)
    led.close()
    raw(tmp_path / "signed.db", "DELETE FROM entries WHERE id = 5")
    led = Ledger(tmp_path / "signed.db", readonly=True)
    n, why = led.verify(me.node_id, me.public_key)
    assert n == 4 and "entries after 4 were deleted" in why
    led.close()


def test_a_ledger_cut_at_one_of_its_own_signed_heads_is_caught_by_the_witness(tmp_path, me, peer):
    """Found 2026-12-05 (open until now): a ledger cut at a signed head (restored from an older copy) held
    together, its later heads gone with what was cut, and `verify` passed. The witness file beside it
    names the newest head signed at a multiple of 64; the node refuses to write on such a ledger."""
    import shutil
    led = signed(tmp_path, me)
    led.append([Entry("agreed", "j", f"s{i}", peer.node_id) for i in range(70)], TS)
    led.close()
    shutil.copy(tmp_path / "signed.db", tmp_path / "backup.db")  # a copy at 70 entries
    led = signed(tmp_path, me)
    led.append([Entry("agreed", "j", f"t{i}", peer.node_id) for i in range(70)], TS)
    assert led.witness().n == 128
    led.close()
    shutil.copy(tmp_path / "backup.db", tmp_path / "signed.db")  # restored: 70 entries, its heads 0, 64, 70
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"signed.db{suffix}").unlink(missing_ok=True)
    led = Ledger(tmp_path / "signed.db", readonly=True)
    n, why = led.verify(me.node_id, me.public_key)
    assert n == 70 and "the ledger ends at entry 70, but its head was signed at entry 128" in why, why
    assert "signed.head" in why
    led.close()
    with pytest.raises(LedgerError, match="cut short or restored from an older copy.*move .*signed.head aside"):
        signed(tmp_path, me)
    (tmp_path / "signed.head").rename(tmp_path / "signed.head.old")  # the owner accepts the loss
    led = signed(tmp_path, me)
    assert led.verify(me.node_id, me.public_key) == (70, "")
    led.close()


def test_a_paid_spot_check_is_explained_as_one_not_as_a_quorum():
    from ledger.explain import explain

    entry = {"id": 7, "kind": "paid", "job": "c" * 20, "step": "prep", "peer": "ab" * 32, "amount": -0.5,
             "detail": {"spot_check": "0.25 CPU-seconds at cpu_s rate"}}
    text = explain(entry, "me")
    assert "spot check" in text and "quorum" not in text and "0.25 CPU-seconds" in text


def test_a_ledger_with_a_page_overwritten_is_refused_when_a_node_opens_it(tmp_path, me):
    """Found by this project's attack round on restarts: 3,000 random bytes written into the middle of a
    stopped node's ledger.db, and the node started and wrote on without a word. The node's writable open
    runs SQLite's quick_check now; the damage is named and nothing is added to the file."""
    path = tmp_path / "ledger.db"
    led = Ledger(path, signer=me.sign, node=me.node_id)
    led.append_many([([Entry("earned", f"j{i}", "s", "p" * 64, 0.5, {"pad": "x" * 400})], 1000 + i)
                     for i in range(400)])
    led.close()
    size = path.stat().st_size
    assert size > 64 * 1024
    with open(path, "r+b") as f:  # a page of the entries' table, not the header
        f.seek(size // 2)
        f.write(bytes(range(256)) * 12)
    with pytest.raises(LedgerError, match="damaged"):
        Ledger(path, signer=me.sign, node=me.node_id)


def test_a_ledger_in_a_folder_named_with_a_hash_opens_read_only_where_it_is(tmp_path):
    """The read-only opener built a SQLite URI of the path unquoted: in a home named 'h#1' it opened 'h' (an
    empty file made in passing) and said 'no such table: entries' (found by the red team, 2026-12-07)."""
    home = tmp_path / "h#1 100%?"
    home.mkdir()
    led = Ledger(home / "ledger.db")
    led.append([Entry("paid", "j", "s", "ab" * 32, -1.5)], 1)
    led.close()
    ro = Ledger(home / "ledger.db", readonly=True)
    assert [e["amount"] for e in ro.history(10)] == [-1.5]
    ro.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [home.name]
