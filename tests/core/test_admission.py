"""The admission policy alone (mesh.core.admission): who may take a worker's step slots, and a stranger's
capped terms. Four fresh keys once held all 16 slots with 3600 s steps."""

from __future__ import annotations

import pytest

from mesh.core.admission import (
    STRANGER_MEMORY,
    STRANGER_TIMEOUT_S,
    UNDERPAID,
    Account,
    Shares,
    Slots,
    Standing,
    credit_refusal,
    terms,
)

pytestmark = pytest.mark.timeout(10)


def stranger(i: int, prefix: str = "10.0.0") -> Standing:
    return Standing(f"s{i}", prefix)


def known(i: int, prefix: str = "10.0.0") -> Standing:
    return Standing(f"k{i}", prefix, reputation=0.7, did_work=True)


def fill(slots: Slots, who: Standing, n: int) -> list[str]:
    """Ask for `n` slots for `who`; the refusals ('' for each taken)."""
    return [slots.take((who.node, i), who) for i in range(n)]


def test_standing_known_needs_reciprocity_or_a_good_reputation():
    assert not Standing("a", "p").known  # a fresh key
    assert not Standing("a", "p", reputation=0.55).known  # a little evidence, no work done here
    assert Standing("a", "p", reputation=0.6).known
    assert Standing("a", "p", reputation=0.5, did_work=True).known  # did work for this node
    assert not Standing("a", "p", reputation=0.4, did_work=True).known  # ... but mostly badly


def test_four_fresh_keys_hold_four_of_sixteen_slots_and_known_peers_still_get_theirs():
    slots = Slots(Shares.of(16, 4))
    taken = [why for i in range(4) for why in fill(slots, stranger(i), 4)]
    assert taken.count("") == 4 and all(w.startswith("busy: requesters that have not worked") for w in taken if w)
    for i in range(3):  # three known peers, same network even: 12 more
        assert fill(slots, known(i), 4) == [""] * 4
    assert slots.use() == {"known": 12, "stranger": 4, "total": 16, "stranger_max": 4, "prefix_max": 12,
                           "per_peer_max": 4}


def test_strangers_never_take_slots_known_peers_are_using_or_the_reserve():
    slots = Slots(Shares.of(16, 4))
    for i in range(3):
        fill(slots, known(i, f"10.0.{i}"), 4)
    fill(slots, known(3, "10.0.3"), 2)  # 14 in use
    assert fill(slots, stranger(0, "10.9.9"), 4) == ["", "", "busy: all 16 step slots are in use",
                                                      "busy: all 16 step slots are in use"]


def test_one_requester_gets_four_at_most():
    slots = Slots(Shares.of(16, 4))
    assert fill(slots, known(0), 5)[-1] == "busy: you have 4 steps running here, the most one requester may"


def test_known_requesters_of_one_network_prefix_hold_twelve_at_most():
    slots = Slots(Shares.of(16, 4))
    for i in range(3):
        fill(slots, known(i, "10.0.0"), 4)
    assert fill(slots, known(3, "10.0.0"), 1)[0].startswith("busy: known requesters from your network (10.0.0) hold 12")
    assert fill(slots, known(4, "10.0.1"), 4) == [""] * 4  # another network: the rest


def test_a_released_slot_is_free_again_and_a_running_step_cannot_be_taken_twice():
    slots = Slots(Shares.of(16, 4))
    who = stranger(0)
    assert slots.take(("s0", "j", "a"), who) == ""
    assert slots.take(("s0", "j", "a"), who).startswith("busy: that step is already running")
    fill(slots, stranger(1), 3)
    assert slots.take(("s2", "j", "a"), stranger(2)) != ""
    slots.release(("s0", "j", "a"))
    assert slots.take(("s2", "j", "a"), stranger(2)) == ""


def test_shares_scale_with_the_limits():
    assert Shares.of(16, 4) == Shares(16, 4, 4, 12)
    assert Shares.of(2, 1) == Shares(2, 1, 1, 2)


def test_a_strangers_time_and_memory_are_capped_and_the_reason_is_given():
    t = terms(stranger(0), 3600)
    assert (t.timeout, t.memory) == (STRANGER_TIMEOUT_S, STRANGER_MEMORY) == (60.0, 256 << 20)
    assert "at most 60 s and 256 MiB" in t.cut and "asked 3600 s" in t.cut
    assert terms(stranger(0), 5).timeout == 5 and "asked" not in terms(stranger(0), 5).cut
    k = terms(known(0), 3600)
    assert (k.timeout, k.memory, k.cut) == (3600, None, "")
    assert terms(known(0), 99999).timeout == 3600 and terms(known(0), 0).timeout == 1


def test_credit_line_counts_this_nodes_ledger_and_unpaid_answers():
    acct = Account().add("earned", 8.0).add("paid", -1.0)  # it did 8 credits of work for them, they 1 for it
    assert acct.balance == -7.0
    assert credit_refusal(acct, 0.0, 10.0) == ""
    why = credit_refusal(acct, 4.0, 10.0)  # 4 more answered and not yet paid: 11 beyond
    assert why.startswith("refused: over this worker's credit line") and "allows 10" in why
    assert credit_refusal(Account(), 0.0, 0.0) == ""  # a fresh submitter owes nothing
    assert Account().add("agreed", 1.0) == Account()


def test_a_receipt_for_a_fraction_of_the_work_counts_the_rest_against_the_line():
    """A submitter paying 0.01 for every step (any amount from 0.01 to the worker's own figure is a valid
    receipt) ran 12 steps, 4.19 CPU-seconds, past a line of 0.5 (found by this session's credit attacker):
    a receipt for less than the worker's measured work (1/UNDERPAID of it) counts the rest as not paid."""
    acct = Account()
    for _ in range(2):
        acct = acct.add("earned", 0.01, measured=0.35)  # 0.35 credits of work, 0.01 paid
    assert acct.earned == pytest.approx(0.02) and acct.short == pytest.approx(2 * (0.35 / UNDERPAID - 0.01))
    assert credit_refusal(acct, 0.0, 1.0) == ""  # 0.02 paid + 0.68 short
    acct = acct.add("earned", 0.01, measured=0.35)
    why = credit_refusal(acct, 0.0, 1.0)
    assert why.startswith("refused: over this worker's credit line") and "1.02 short" in why, why
    honest = Account()
    for _ in range(100):  # paid the median of three, a third below this worker's own figure: the line is work
        honest = honest.add("earned", 0.2, measured=0.3)
    assert honest.short == pytest.approx(10.0) and credit_refusal(honest, 0.0, 30.0) == ""
    assert Account().add("earned", 0.01) == Account(earned=0.01)  # an old entry, without its measure


def test_paying_less_than_the_work_buys_no_more_of_a_credit_line():
    """Attack on real nodes (2026-12-06): under --require-credit 3, a submitter paying the minimum charge for
    steps of ~1 CPU-second got 14 run before it was refused, an honest payer 3: a receipt under the work
    counted only up to a quarter of it. The line is work done for the payer, whatever its receipts say."""
    def steps_until_refused(pays: float) -> int:
        acct, n = Account(), 0
        while not credit_refusal(acct, 0.0, 3.0):
            acct, n = acct.add("earned", pays, 1.0), n + 1
        return n

    assert steps_until_refused(0.01) == steps_until_refused(1.0) == 4
