"""Outvotes in shared reputation (mesh.core.trust): what a disagreed ledger entry proves (outvote_of), and
how a node weighs a proven outvote (Shared.take_outvote) — by who outvoted the worker, never by who passes
the proof on — against an attacker whose ids only vouch for one another."""

from __future__ import annotations

import pytest

from mesh.core.policy import HALF_LIFE_MS, Reputations, StepEvidence
from mesh.core.trust import (
    FULL_FLOW,
    MAX_PROOFS_PER_WORKER,
    MIN_WEIGHT,
    UNKNOWN_PREFIX,
    Shared,
    Testimony,
    outvote_of,
)
from mesh.wire.proof import Outvote

DAY = 86_400_000
T0 = 1_000 * DAY
ME = "R"


# -- helpers ----------------------------------------------------------------------------------------------

def evidence(accepted: str, agreeing: tuple[str, ...], answers: dict[str, str]) -> StepEvidence:
    return StepEvidence("majority", 2, len(answers), accepted, agreeing, answers, {}, "cpu", "")


def verified(reps: Reputations, peer: str, n: int, ts: int = T0) -> None:
    """`n` verified results of `peer` for this node, all at `ts` (so, weighed at `ts`, exactly n)."""
    for _ in range(n):
        reps.fold("agreed", peer, ts, None)


def vote(accused: str = "W", submitter: str = "S", job: str = "job1", step: str = "a",
         majority: tuple[str, ...] = ("X", "Y"), stamp: int = T0) -> Outvote:
    return Outvote(accused, submitter, job, step, majority, stamp)


def trusting(*nodes: str, prefixes: dict[str, str] | None = None, n: int = 6) -> Shared:
    """This node (R) has `n` verified results from each of `nodes` (n=6: trust 0.6 at T0)."""
    own = Reputations()
    for node in nodes:
        verified(own, node, n)
    return Shared(ME, own, dict(prefixes if prefixes is not None else {"X": "p1", "Y": "p2", "Z": "p3"}))


# -- outvote_of: what a disagreed entry proves ----------------------------------------------------------------

def test_a_disagreed_entry_of_an_accepted_step_proves_an_outvote():
    why = evidence("a", ("y", "x"), {"x": "a", "y": "a", "p": "b"})
    assert outvote_of("S", "disagreed", "p", "job1", "s1", why, 1234) == \
        Outvote("p", "S", "job1", "s1", ("x", "y"), 1234)


def test_the_majority_is_only_those_that_gave_the_accepted_answer_other_than_submitter_and_accused():
    why = evidence("a", ("z", "S", "y", "x"), {"x": "a", "y": "a", "z": "c", "S": "a", "p": "b"})
    assert outvote_of("S", "disagreed", "p", "j", "s", why, 0).majority == ("x", "y")


@pytest.mark.parametrize("kind, why", [
    ("agreed", evidence("a", ("x", "y"), {"x": "a", "y": "a", "p": "b"})),
    ("no_show", evidence("a", ("x", "y"), {"x": "a", "y": "a", "p": "b"})),
    ("disagreed", evidence("", ("x", "y"), {"x": "a", "y": "a", "p": "b"})),  # the step failed
    ("disagreed", evidence("", ("x", "y"), {"x": "", "y": "", "p": "b"})),  # failed, even if two "agree" on ''
    ("disagreed", evidence("a", ("x",), {"x": "a", "p": "b"})),  # only one other agreed
    ("disagreed", evidence("a", ("S", "x"), {"S": "a", "x": "a", "p": "b"})),  # the submitter is no witness
    ("disagreed", evidence("a", ("x", "y"), {"x": "a", "y": "b", "p": "b"})),  # y did not give the answer
    ("disagreed", evidence("a", ("x", "y"), {"x": "a", "y": "a"})),  # p gave no answer to prove
    ("disagreed", evidence("a", ("x", "y", "p"), {"x": "a", "y": "a", "p": "a"})),  # p agreed
    ("disagreed", None),
    ("disagreed", {"accepted": "a", "agreeing": ["x", "y"], "answers": {"x": "a", "y": "a", "p": "b"}}),
], ids=["agreed", "no-show", "failed-step", "failed-step-empty", "one-other", "submitter-agreeing", "answer-not-accepted",
        "no-answer", "peer-agreed", "why-none", "why-untyped"])
def test_entries_that_prove_no_outvote(kind, why):
    assert outvote_of("S", kind, "p", "job1", "s1", why, T0) is None


def test_the_submitter_among_the_agreeing_is_left_out_of_the_majority():
    why = evidence("a", ("S", "y", "x"), {"S": "a", "x": "a", "y": "a", "p": "b"})
    assert outvote_of("S", "disagreed", "p", "j", "s", why, 7) == Outvote("p", "S", "j", "s", ("x", "y"), 7)


# -- weighing an outvote ------------------------------------------------------------------------------------

def test_a_majority_this_node_has_no_evidence_of_counts_for_nothing():
    shared = Shared(ME, Reputations(), {"X": "p1", "Y": "p2"})
    assert shared.take_outvote(vote(), T0) == "untrusted"
    assert shared.proven == {} and shared.reported() == []
    assert shared.standing("W", T0).evidence.bad == 0


def test_two_trusted_ids_on_two_prefixes_make_an_outvote_count_once():
    shared = trusting("X", "Y")
    assert shared.trust("X", T0) == pytest.approx(0.6) and shared.trust("Y", T0) >= MIN_WEIGHT
    assert shared.take_outvote(vote(), T0) == ""
    assert shared.proven == {"W": {("S", "job1", "a"): T0}}
    assert shared.take_outvote(vote(), T0) == "known"
    assert shared.take_outvote(vote(majority=("X", "Y", "Q"), stamp=T0 - 5), T0) == "known"  # same step
    assert shared.proven == {"W": {("S", "job1", "a"): T0}}
    assert shared.take_outvote(vote(step="b"), T0) == ""  # another step is another outvote
    assert set(shared.proven["W"]) == {("S", "job1", "a"), ("S", "job1", "b")}


def test_trust_is_verified_work_over_full_flow_and_min_weight_is_the_line():
    """Trust = (good - bad) / FULL_FLOW: five results are 0.5 = MIN_WEIGHT, four are not enough."""
    assert FULL_FLOW * MIN_WEIGHT == 5
    own = Reputations()
    verified(own, "X", 5)
    verified(own, "Y", 4)
    shared = Shared(ME, own, {"X": "p1", "Y": "p2"})
    assert shared.trust("X", T0) == 0.5 and shared.trust("Y", T0) == pytest.approx(0.4)
    assert shared.take_outvote(vote(), T0) == "untrusted"
    verified(own, "Y", 1)
    assert shared.take_outvote(vote(), T0) == ""
    # bad evidence offsets good: one wrong answer of X's puts it under the line again
    own.fold("disagreed", "X", T0, None)
    assert shared.trust("X", T0) == pytest.approx(0.4)
    assert shared.weigh_outvote(vote(step="b"), T0) == "untrusted"


def test_verified_work_decays_so_old_trust_runs_out():
    shared = trusting("X", "Y")  # 6 results each at T0: 3 a half-life later
    assert shared.weigh_outvote(vote(), T0) == ""
    assert shared.trust("X", T0 + HALF_LIFE_MS) == pytest.approx(0.3)
    assert shared.weigh_outvote(vote(), T0 + HALF_LIFE_MS) == "untrusted"
    assert trusting("X", "Y", n=12).weigh_outvote(vote(), T0 + HALF_LIFE_MS) == ""


def test_two_trusted_ids_on_one_prefix_are_one_witness():
    shared = trusting("X", "Y", prefixes={"X": "p1", "Y": "p1", "Z": "p2"})
    assert shared.take_outvote(vote(), T0) == "untrusted"
    assert shared.proven == {}
    # untrusted ids on other prefixes add nothing either
    assert shared.take_outvote(vote(majority=("X", "Y", "Q1", "Q2")), T0) == "untrusted"
    verified(shared.own, "Z", 6)
    assert shared.take_outvote(vote(majority=("X", "Y", "Z")), T0) == ""


def test_an_outvote_about_or_by_this_node_is_its_own_business():
    shared = trusting("X", "Y")
    assert shared.take_outvote(vote(accused=ME), T0) == "own"
    assert shared.take_outvote(vote(submitter=ME), T0) == "own"
    assert shared.proven == {}


def test_the_stamp_is_the_accused_s_clock_so_it_is_clamped_to_this_node_s():
    shared = trusting("X", "Y")
    assert shared.take_outvote(vote(stamp=T0 + DAY), T0) == ""
    assert shared.take_outvote(vote(step="b", stamp=-5), T0) == ""
    assert shared.proven["W"] == {("S", "job1", "a"): T0, ("S", "job1", "b"): 0}


def test_at_most_max_proofs_per_worker_are_kept_the_newest():
    shared = trusting("X", "Y")
    n = MAX_PROOFS_PER_WORKER + 4
    for i in range(n):
        assert shared.take_outvote(vote(step=f"s{i:02d}", stamp=T0 - (n - i) * 1000), T0) == ""
    held = shared.proven["W"]
    assert len(held) == MAX_PROOFS_PER_WORKER
    assert set(held) == {("S", "job1", f"s{i:02d}") for i in range(4, n)}
    assert min(held.values()) == T0 - MAX_PROOFS_PER_WORKER * 1000
    # other workers have their own room
    assert shared.take_outvote(vote(accused="V"), T0) == "" and len(shared.proven["V"]) == 1


def test_an_outvote_older_than_all_held_does_not_push_out_a_newer_one():
    shared = trusting("X", "Y")
    for i in range(MAX_PROOFS_PER_WORKER):
        shared.take_outvote(vote(step=f"s{i:02d}", stamp=T0 - 1000 + i), T0)
    shared.take_outvote(vote(step="old", stamp=T0 - DAY), T0)
    held = shared.proven["W"]
    assert len(held) == MAX_PROOFS_PER_WORKER and ("S", "job1", "s00") in held


# -- what a kept outvote does ------------------------------------------------------------------------------

def test_a_kept_outvote_is_reported_once_until_a_newer_one():
    shared = trusting("X", "Y")
    assert shared.reported() == []
    shared.take_outvote(vote(stamp=T0 - 5000), T0)
    assert shared.reported() == ["W"]
    assert shared.reported() == []
    shared.take_outvote(vote(step="b", stamp=T0 - 9000), T0)  # older than the one reported
    assert shared.reported() == []
    shared.take_outvote(vote(step="c", stamp=T0 - 1000), T0)
    assert shared.reported() == ["W"]
    assert shared.acted == {"W": T0 - 1000}


def test_a_kept_outvote_is_bad_evidence_decayed_like_own():
    shared = trusting("X", "Y")
    assert shared.standing("W", T0).evidence.bad == 0
    shared.take_outvote(vote(), T0)
    st = shared.standing("W", T0)
    assert st.evidence.bad == 1.0 and st.evidence.good == 0 and st.vouchers == 0
    assert st.evidence.score(T0) == pytest.approx(1 / 3)
    shared.take_outvote(vote(step="b"), T0)
    assert shared.standing("W", T0).evidence.bad == 2.0
    assert shared.standing("W", T0 + HALF_LIFE_MS).evidence.bad == pytest.approx(1.0)
    assert shared.standing("V", T0).evidence.bad == 0  # only the accused's


def own_run(shared: Shared, worker: str, n: int, start: int) -> None:
    """`n` validated results of `worker` (each agreed on by two) from `start`, a second apart."""
    why = evidence("d", (worker, "witness"), {worker: "d", "witness": "d"})
    for k in range(n):
        shared.own.fold("agreed", worker, start + k * 1000, why)


@pytest.mark.parametrize("stamp, streak", [(T0 + 500, 0), (T0 + 10_000, 0), (T0, 3), (T0 - 1, 3)],
                         ids=["after-start", "after-last", "at-start", "before-start"])
def test_an_outvote_breaks_a_run_that_began_before_it(stamp, streak):
    shared = trusting("X", "Y")
    own_run(shared, "W", 3, T0)
    now = T0 + 10_000
    assert shared.own.streak("W") == 3 and shared.own.since["W"] == T0
    assert shared.standing("W", now).streak == 3
    assert shared.take_outvote(vote(stamp=stamp), now) == ""
    st = shared.standing("W", now)
    assert st.streak == streak
    assert st.evidence.good == pytest.approx(3, rel=1e-4) and st.evidence.bad == pytest.approx(1, rel=1e-4)


# -- the attacker: a ring of ids vouching for each other ------------------------------------------------

RING = [f"S{i:02d}" for i in range(50)]


def ring_world() -> tuple[Shared, int]:
    """R trusts X and Y (6 results each); 50 sybils testify that each other did a thousand verified results
    for them. None did any work for R."""
    shared = trusting("X", "Y", prefixes={"X": "p1", "Y": "p2"})
    t = T0 + 1000
    for issuer in RING:
        for worker in RING:
            if worker != issuer:
                assert shared.take(Testimony(issuer, worker, 1000.0, 0.0, 1000, t - 1000, 0, t))
    return shared, t


def test_a_sybil_ring_that_did_no_work_here_never_reaches_min_weight():
    shared, t = ring_world()
    assert len(shared.about["S00"]) == 49
    assert all(shared.trust(s, t) == 0.0 for s in RING)
    assert shared.refresh(t) == {}
    assert shared.take_outvote(vote(majority=tuple(RING[:5]), stamp=t), t) == "untrusted"
    assert shared.take_outvote(vote(majority=tuple(RING), stamp=t), t) == "untrusted"
    # one trusted id among them is still one witness
    assert shared.take_outvote(vote(majority=("X", *RING[:5]), stamp=t), t) == "untrusted"
    assert shared.proven == {} and shared.reported() == []
    assert shared.standing("W", t).evidence.bad == 0


def test_a_ring_member_s_little_work_here_lends_the_ring_no_more_than_it():
    """S00 did 4 verified results for R: flow to each ring id is capped by that edge (0.4 < MIN_WEIGHT)."""
    shared, t = ring_world()
    verified(shared.own, "S00", 4, t)
    assert shared.trust("S00", t) == pytest.approx(0.4)
    assert shared.trust("S17", t) == pytest.approx(0.4)  # through S00, capped by what S00 did here
    assert shared.take_outvote(vote(majority=tuple(RING[:5]), stamp=t), t) == "untrusted"
    assert shared.take_outvote(vote(majority=("X", *RING[:5]), stamp=t), t) == "untrusted"
    assert shared.take_outvote(vote(majority=("X", "Y", *RING[:5]), stamp=t), t) == ""


def test_one_ring_member_with_enough_work_here_cannot_lend_the_ring_a_second_witness():
    """Found by this file: with two-hop trust, S00's 5 verified results here lifted every id it vouches
    for to 0.5, and any two ring ids outvoting an honest worker counted. Outvotes count first-hand work
    only: S00 is one witness, the rest none."""
    shared, t = ring_world()
    verified(shared.own, "S00", 5, t)
    assert shared.trust("S17", t) == pytest.approx(0.5)  # testimony weight still flows two hops
    assert shared.take_outvote(vote(majority=tuple(RING[:5]), stamp=t), t) == "untrusted"
    assert shared.take_outvote(vote(majority=("S00", "X"), stamp=t), t) == "untrusted"  # S00's network unseen
    shared.prefix_of = {**shared.prefix_of, "S00": "p9"}
    assert shared.take_outvote(vote(majority=("S00", "X"), stamp=t), t) == ""  # S00 and X: two witnesses


@pytest.mark.parametrize("prefixes", [{"X": "p1"}, {"X": "p1", "Y": UNKNOWN_PREFIX}], ids=["not-linked", "relayed"])
def test_a_witness_whose_network_cannot_be_seen_is_no_second_prefix(prefixes):
    """Red team H (F2): two sybils reached only through relays passed the two-prefix rule and framed an
    honest worker. Peers of unseen network (relayed, or not linked now) are one group at most, and that
    group is no second prefix beside one seen: an operator's machine plus its ids behind relays is one."""
    assert trusting("X", "Y", prefixes=prefixes).take_outvote(vote(), T0) == "untrusted"
    assert trusting("X", "Y", prefixes={"X": "p1", "Y": "p2"}).take_outvote(vote(), T0) == ""
