"""Time-decayed beta reputation: neutral at the start, recent behaviour weighs most."""

from __future__ import annotations

import pytest

from mesh.core.policy import HALF_LIFE_MS, Evidence, reputation

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
