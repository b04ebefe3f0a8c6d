"""Time-decayed beta reputation: neutral at the start, recent behaviour weighs most."""

from __future__ import annotations

import pytest

from ledger.store import Entry, Ledger
from mesh.core.policy import HALF_LIFE_MS, Evidence, RecheckEvidence, StepEvidence, next_streak, reputation

pytestmark = pytest.mark.timeout(10)
T0 = 1_700_000_000_000


def test_new_peer_is_neutral_and_events_move_it():
    ev = Evidence()
    assert ev.score(T0) == 0.5
    ev.add("agreed", T0)
    assert ev.score(T0) == pytest.approx(reputation(1, 0, 0))
    ev.add("disagreed", T0)
    ev.add("penalty", T0)
    assert ev.score(T0) == pytest.approx(reputation(1, 1, 0, 1))
    ev.add("paid", T0)  # not a reputation event
    assert ev.score(T0) == pytest.approx(reputation(1, 1, 0, 1))


def test_evidence_halves_every_half_life():
    ev = Evidence()
    for _ in range(8):
        ev.add("agreed", T0)
    assert ev.score(T0 + HALF_LIFE_MS) == pytest.approx((4 + 1) / (4 + 2))
    assert ev.score(T0 + 50 * HALF_LIFE_MS) == pytest.approx(0.5, abs=1e-6)  # forgotten: neutral again


def test_an_on_off_cheater_is_judged_on_what_it_does_now():
    ev = Evidence()
    for i in range(20):  # behaves for weeks
        ev.add("agreed", T0 + i * HALF_LIFE_MS // 4)
    before = ev.score(T0 + 5 * HALF_LIFE_MS)
    t = T0 + 5 * HALF_LIFE_MS
    for i in range(6):  # then cheats
        ev.add("disagreed", t + i)
    assert before > 0.8
    assert ev.score(t + 6) < 0.5
    undecayed = reputation(20, 6, 0)
    assert ev.score(t + 6) < undecayed  # plain counting would still trust it


def test_a_late_event_is_weighed_as_of_its_own_time():
    a, b = Evidence(), Evidence()
    a.add("agreed", T0)
    a.add("disagreed", T0 + HALF_LIFE_MS)
    b.add("disagreed", T0 + HALF_LIFE_MS)
    b.add("agreed", T0)  # arrives out of order
    assert a.score(T0 + HALF_LIFE_MS) == pytest.approx(b.score(T0 + HALF_LIFE_MS))


def test_a_steps_evidence_is_stored_as_the_json_it_always_was_and_read_back_for_streaks(tmp_path):
    """The submitter hands the ledger a typed StepEvidence; the row holds the same JSON keys as before
    (old ledgers and `mesh ledger explain` read it unchanged), and streaks are decided from it."""
    d = "d" * 64
    why = StepEvidence("majority", 2, 3, d, ("a", "b"), {"a": d, "b": d, "c": "e" * 64}, {}, "0.01 CPU-seconds", "")
    old = {"rule": "majority", "needed": 2, "redundancy": 3, "accepted": d, "agreeing": ["a", "b"],
           "answers": {"a": d, "b": d, "c": "e" * 64}, "failed": {}, "credit_basis": "0.01 CPU-seconds", "reason": ""}
    led = Ledger(tmp_path / "ledger.db")
    try:
        led.append([Entry("agreed", "j", "s1", "a", 0.0, {"why": why}),
                    Entry("agreed", "j", "s2", "a", 0.0, {"why": old}),  # as an older node wrote it
                    Entry("agreed", "j", "s3", "b", 0.0, {"why": {**old, "agreeing": ["b"]}}),  # alone: no credit
                    Entry("agreed", "j", "s4", "c", 0.0, {}),  # from before evidence was kept
                    Entry("disagreed", "j", "s5", "b", 0.0, {"why": RecheckEvidence("r", d)})], T0)
        rows = {r["step"]: r["detail"] for r in led.history()}
        assert rows["s1"] == rows["s2"] == {"why": old}
        assert rows["s5"] == {"why": {"recheck": "r", "accepted": d}}
        assert led.streaks() == {"a": 2, "b": 0, "c": 0}
    finally:
        led.close()
    assert next_streak(5, "agreed", None) == 5 and next_streak(5, "no_show", None) == 5 \
        and next_streak(5, "disagreed", None) == next_streak(5, "spot_failed", None) == 0
