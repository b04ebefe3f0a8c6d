"""What the owner's dashboard reads from a ledger (ledger/activity.py): credits earned in a window and
as a series bucketed down to at most 200 points, the entries where a peer's work earned nothing with a
reason, the earnings of payers this node does not trust, and an entry explained (ledger.views)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger import activity, views
from ledger.export import PayerView
from ledger.store import Entry, Ledger

ME, PAYER, STRANGER, WORKER = "a" * 64, "b" * 64, "c" * 64, "d" * 64
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def led(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.db")
    yield ledger
    ledger.close()


def earn(led: Ledger, n: int, ts0: int, step_ms: int, payer: str = PAYER) -> None:
    led.append_many([([Entry("earned", f"j{payer[0]}{i}", "s", payer, 0.5)], ts0 + i * step_ms) for i in range(n)])


def test_the_series_is_cumulative_and_bucketed_to_at_most_200_points(led):
    earn(led, 1000, 1_000_000, 37)
    series = activity.earned_series(led)
    assert 150 <= len(series) <= activity.MAX_POINTS
    times = [t for t, _ in series]
    assert times == sorted(set(times)) and times[-1] == 1_000_000 + 999 * 37
    values = [v for _, v in series]
    assert values == sorted(values) and values[-1] == pytest.approx(500.0)
    assert len(activity.earned_series(led, 10)) <= 10


def test_a_short_series_keeps_every_entry_and_an_empty_one_is_empty(led):
    assert activity.earned_series(led) == []
    earn(led, 3, 5000, 1000)
    assert activity.earned_series(led) == [[5000, 0.5], [6000, 1.0], [7000, 1.5]]


def test_earned_in_a_window(led):
    earn(led, 10, 0, 1000)
    assert activity.earned_since(led, 7000) == {"steps": 3, "credits": 1.5}
    assert activity.earned_since(led, 100_000) == {"steps": 0, "credits": 0.0}


def test_what_peers_did_for_nothing_each_with_its_reason(led):
    led.append([Entry("agreed", "j", "a", WORKER),
                Entry("disagreed", "j", "a", PAYER, detail={"why": {"answers": {PAYER: "ff"}, "accepted": "00"}}),
                Entry("no_show", "j", "b", WORKER, detail={"why": {"failed": {WORKER: "timeout"}}}),
                Entry("no_show", "j", "c", WORKER, detail={"reason": "busy: too many steps in flight"}),
                Entry("spot_failed", "j", "d", STRANGER, detail={"expected": "00", "got": "ff"})], 42)
    got = activity.judged_unpaid(led)
    assert [(i["step"], i["reason"]) for i in got] == [
        ("d", "failed a spot check"), ("c", "no usable answer"), ("b", "timed out"), ("a", "outvoted")]
    assert [i["entry"] for i in got] == [5, 4, 3, 2] and all(i["ts"] == 42 for i in got)
    assert len(activity.judged_unpaid(led, limit=2)) == 2


def test_earnings_from_payers_not_trusted(led):
    earn(led, 2, 0, 10)
    earn(led, 3, 100, 10, payer=STRANGER)
    earn(led, 1, 200, 10, payer=WORKER)
    views_of = {PAYER: PayerView(True, 0.9), STRANGER: PayerView(False), WORKER: PayerView(True, 0.1)}
    got = activity.untrusted_earnings(led, views_of.__getitem__)
    assert [(i["peer"], i["reason"]) for i in got] == [(WORKER, "paid by a distrusted payer")] + \
        [(STRANGER, "paid by an unknown payer")] * 3
    assert [i["entry"] for i in got] == [6, 5, 4, 3] and all(i["amount"] == 0.5 for i in got)
    assert activity.untrusted_earnings(led, lambda p: PayerView(True)) == []


def test_an_entry_explained_as_the_cli_says_it(led):
    led.append([Entry("disagreed", "job1", "a", PAYER, detail={"why": {"answers": {PAYER: "ff" * 8}, "accepted": "00"}})], 1)
    got = views.explained(led, 1, ME)
    assert got["id"] == 1 and got["kind"] == "disagreed"
    assert got["explanation"].startswith(f"Entry 1: {PAYER[:12]} loses reputation for step 'a' of job job1")
    assert views.explained(led, 2, ME) is None


def test_a_payer_that_only_linked_once_is_no_payer_to_believe(led, tmp_path):
    """Attack on real nodes (2026-12-06): a key that linked to a node once, and did nothing else, signed
    1,000 receipts for 999,999,000 credits to a made-up worker, and that node's `verify-receipts` counted them
    all as trusted: its signed record (peers.json) made it 'known'. Only dealings in the ledger do now."""
    import json

    from ledger.export import FORMAT, judge_with, verify_receipts
    from ledger.receipts import make_receipt
    from mesh.wire.identity import Identity

    me, linked, paid_me = Identity.generate(bits=0), Identity.generate(bits=0), Identity.generate(bits=0)
    led.append([Entry("earned", "j0", "s", paid_me.node_id, 0.5)], 42)  # it paid this node once
    judge = judge_with(led, me.node_id, [linked.public_key.hex()], 42)
    assert judge(linked.node_id).met_only and not judge(linked.node_id).trusted
    assert judge(paid_me.node_id).trusted and judge(me.node_id).trusted
    worker = "ab" * 32
    out = tmp_path / "laundered.json"
    out.write_text(json.dumps({"format": FORMAT, "node": worker, "receipts": [
        {"receipt": make_receipt(payer, f"j{i}", "s", worker, amount, 42), "payer": {}}
        for i, (payer, amount) in enumerate(((linked, 999_999.0), (linked, 999_999.0), (paid_me, 999_999.0),
                                             (paid_me, 4.0), (paid_me, 1.5)))]}))
    check = verify_receipts(out, judge).to_json()
    assert check["ok"] and check["unknown"] == {"receipts": 2, "credits": 1_999_998.0, "payers": [linked.node_id]}
    # ... and one that paid it 0.5 once is believed for VOUCH_FACTOR times that: 4 of the 5, not its 999,999
    # (it counted as trusted, whole, before)
    assert judge(paid_me.node_id).limit == 5.0 and judge(me.node_id).limit is None
    assert check["total"] == 4.0 and check["trusted"]["receipts"] == 1
    assert check["over_limit"] == {"receipts": 2, "credits": 1_000_000.5, "payers": [paid_me.node_id]}
