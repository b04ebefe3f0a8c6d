"""Shared reputation (mesh.core.trust): testimony from an honest issuer, weighed by a receiver, against an
attacker that runs a cluster of ids vouching for each other."""

from __future__ import annotations

import json
import math

import pytest

from mesh.core.policy import Reputations, StepEvidence
from mesh.core.trust import (
    FULL_FLOW,
    LEND_RUN,
    SHARED_CAP,
    SUSPECT_EVERY_MS,
    BadTestimony,
    Shared,
    Testimony,
    attest,
    more_right_than_wrong,
)

DAY = 86_400_000
T0 = 1_000 * DAY


def agreed(reps: Reputations, peer: str, n: int, start: int = T0, other: str = "witness") -> int:
    """`n` validated results of `peer` (each agreed on by two), one a second from `start`; the next time."""
    why = StepEvidence("majority", 2, 3, "d", (peer, other), {peer: "d", other: "d"}, {}, "", "")
    for k in range(n):
        reps.fold("agreed", peer, start + k * 1000, why)
    return start + n * 1000


def honest_world(receiver: str = "R") -> tuple[Shared, Reputations, Reputations]:
    """The receiver R has seen issuers A and B (other prefixes) do FULL_FLOW verified work each; A and B have
    each seen worker W validated 30 times, which R never met."""
    own, a, b = Reputations(), Reputations(), Reputations()
    t = agreed(own, "A", int(FULL_FLOW) + 1)  # one more than enough: the evidence decays a little
    t = agreed(own, "B", int(FULL_FLOW) + 1, t)
    t = agreed(a, "W", 30, t)
    t = agreed(b, "W", 30, t)
    shared = Shared(receiver, own, {"A": "p1", "B": "p2", "W": "p3", "S1": "p9", "S2": "p9", "S3": "p9"})
    for issuer, reps in (("A", a), ("B", b)):
        shared.take(attest(issuer, "W", reps, t))
    return shared, a, b


def test_testimony_round_trips_and_refuses_what_a_peer_could_forge():
    reps = Reputations()
    agreed(reps, "W", 3)
    t = attest("A", "W", reps, T0 + 10_000)
    assert t is not None and Testimony.from_json(json.loads(json.dumps(t.to_json()))) == t
    assert t.streak == 3 and t.since == T0 and t.last_bad == 0
    good = t.to_json()
    for bad in ({**good, "good": -1}, {**good, "good": float("nan")}, {**good, "bad": 1e300},
                {**good, "streak": 1.5}, {**good, "streak": True}, {**good, "since": good["stamp"] + 1},
                {**good, "worker": "A"}, {**good, "issuer": ""}, {**good, "issuer": "x" * 500},
                {**good, "extra": 1}, {k: v for k, v in good.items() if k != "bad"}, [good], "testimony"):
        with pytest.raises(BadTestimony):
            Testimony.from_json(bad)


def test_an_issuer_that_did_verified_work_for_the_receiver_lends_it_its_record_of_a_stranger():
    shared, _, _ = honest_world()
    assert shared.standing("W", T0 + DAY).streak == 0  # not weighed yet: refresh() weighs issuers
    weights = shared.refresh(T0 + 60_000)
    assert weights == {"A": 1.0, "B": 1.0}
    st = shared.standing("W", T0 + 60_000)
    assert st.vouchers == 2 and st.shared_good == SHARED_CAP  # 60 agreements reported, capped
    assert st.streak == 60  # two trusted issuers on two prefixes confirm their runs
    assert st.evidence.score(T0 + 60_000) > 0.95


def test_one_issuer_alone_cannot_make_a_stranger_run_alone():
    shared, _, _ = honest_world()
    del shared.about["W"]["B"]
    shared.refresh(T0 + 60_000)
    st = shared.standing("W", T0 + 60_000)
    assert st.streak == 0 and st.shared_good == pytest.approx(30, rel=1e-3)


def test_a_sybil_cluster_that_did_no_work_for_the_receiver_weighs_nothing():
    """Attacker: S1..S3 (one operator) attest that each other and a fake worker F did a thousand verified
    results each, and that the honest W cheated. None did any work for R or for an issuer R trusts."""
    shared, _, _ = honest_world()
    t = T0 + DAY
    for s in ("S1", "S2", "S3"):
        for other in ("S1", "S2", "S3", "F"):
            if other != s:
                shared.take(Testimony(s, other, 1000.0, 0.0, 1000, t - 1000, 0, t))
        shared.take(Testimony(s, "W", 0.0, 500.0, 0, 0, t, t))
    weights = shared.refresh(t)
    assert set(weights) == {"A", "B"}
    fake = shared.standing("F", t)
    assert fake.vouchers == 0 and fake.streak == 0 and fake.evidence.score(t) == 0.5
    honest = shared.standing("W", t)
    assert honest.streak == 60 and honest.evidence.score(t) > 0.95  # the slander counts for nothing


def test_a_sybil_gains_weight_only_as_far_as_its_verified_work_for_trusted_nodes_flows_to_it():
    """S1 did 3 verified results for A (whom R trusts): its testimony weighs 3 / FULL_FLOW, and the ids it
    vouches for gain nothing towards running alone (one voucher, one prefix)."""
    shared, _, _ = honest_world()
    a_reps = Reputations()
    t = agreed(a_reps, "S1", 3, T0 + DAY)
    shared.take(attest("A", "S1", a_reps, t))
    shared.take(Testimony("S1", "F", 1000.0, 0.0, 1000, t - 1000, 0, t))
    weights = shared.refresh(t)
    assert weights["S1"] == pytest.approx(3 / FULL_FLOW, rel=1e-3)  # decayed a little
    fake = shared.standing("F", t)
    assert fake.streak == 0 and fake.shared_good == SHARED_CAP  # at most the cap, and no solo runs


def test_a_trusted_issuers_wrong_answer_report_is_an_opinion_that_counts_against_no_one():
    """A trusted issuer that says it saw a wrong answer no longer confirms the worker's run (its own run
    ended), but its word adds no bad evidence here until this node sees the worker misbehave itself:
    sybils that did real work would say it of every honest worker (vouching-30 accepted 19% wrong answers
    and earned 96% of the credits while it did)."""
    shared, a, _ = honest_world()
    t = T0 + DAY
    a.fold("disagreed", "W", t, None)
    shared.take(attest("A", "W", a, t))
    shared.refresh(t)
    st = shared.standing("W", t)
    assert st.streak == 0  # B alone confirms its run: one issuer is not enough
    assert st.evidence.bad == 0
    for k in range(5):  # workers R found right, that the sybils below say right too
        agreed(shared.own, f"O{k}", 1, t)
    for s in ("S1", "S2", "S3"):  # three sybils that each did full verified work here slander A
        agreed(shared.own, s, int(FULL_FLOW) + 1, t)
        shared.take(Testimony(s, "A", 0.0, 500.0, 0, 0, t, t))
        for k in range(5):  # borne out five times, contradicted once (A is right here): still trusted
            shared.take(Testimony(s, f"O{k}", 9.0, 0.0, 9, T0, 0, t))
    shared.refresh(t)
    assert shared.weights["S1"] == pytest.approx(15 / 16)  # more_right_than_wrong(5, 1)
    assert shared.standing("A", t).evidence.bad == 0
    assert shared.suspected(t) == ([], ["W", "A"])  # opinions: a sample of their lone steps, nothing more
    shared.own.fold("disagreed", "A", t + 1, None)  # A misbehaved here itself: now their word counts,
    assert shared.standing("A", t + 1).evidence.bad == pytest.approx(1 + SHARED_CAP)  # capped as lent good is


def test_a_wrong_answer_report_is_sampled_once_an_hour_and_only_from_a_trusted_issuer():
    """What `suspected` hands the submitter: a trusted issuer's newer wrong-answer report, as an opinion
    (a sample of what the worker ran alone is rerun) at most once per SUSPECT_EVERY_MS, or as evidence
    once this node has seen the worker misbehave itself; a weightless id's never. `reported` is for
    outvote proofs only."""
    shared, a, _ = honest_world()
    t = T0 + DAY
    for s in ("S1", "S2"):
        shared.take(Testimony(s, "W", 0.0, 500.0, 0, 0, t, t))
    shared.refresh(t)
    assert shared.suspected(t) == ([], [])  # the slander: weightless issuers
    a.fold("disagreed", "W", t + 1000, None)
    shared.take(attest("A", "W", a, t + 1000))
    shared.refresh(t + 1000)
    assert shared.suspected(t + 1000) == ([], ["W"])
    assert shared.suspected(t + 1000) == ([], [])  # once
    assert shared.reported() == []  # an opinion, not a proof
    a.fold("spot_failed", "W", t + 3000, None)
    shared.take(attest("A", "W", a, t + 3000))
    assert shared.suspected(t + 3000) == ([], [])  # newer, but within the hour
    assert shared.suspected(t + 1000 + SUSPECT_EVERY_MS) == ([], ["W"])
    assert shared.suspected(t + 1000 + 2 * SUSPECT_EVERY_MS) == ([], [])  # nothing newer went wrong
    shared.own.fold("disagreed", "W", t + 5000, None)  # seen here too: the next report is acted on at once
    a.fold("disagreed", "W", t + 6000, None)
    shared.take(attest("A", "W", a, t + 6000))
    assert shared.suspected(t + 6000 + 2 * SUSPECT_EVERY_MS + 1) == (["W"], [])


def test_stale_and_self_testimony_are_ignored_and_storage_is_bounded():
    shared, a, _ = honest_world()
    old = shared.about["W"]["A"]
    assert not shared.take(Testimony("A", "W", 1.0, 0.0, 1, old.stamp - 5, 0, old.stamp - 1))
    assert not shared.take(Testimony("R", "W", 1.0, 0.0, 1, 0, 0, T0))  # the receiver's own
    assert not shared.take(Testimony("A", "R", 1.0, 0.0, 1, 0, 0, T0))  # about the receiver
    for i in range(200):
        shared.take(Testimony(f"X{i:03d}", "W", 1.0, 0.0, 1, T0, 0, T0 + i))
    assert len(shared.about["W"]) == 64


def test_a_crowd_of_weightless_ids_cannot_push_out_what_trusted_issuers_said():
    """Attacker: 200 fresh ids (no verified work) each testify about W, newer than A's and B's items."""
    shared, _, _ = honest_world()
    shared.refresh(T0 + 60_000)
    for i in range(200):
        shared.take(Testimony(f"Y{i:03d}", "W", 0.0, 100.0, 0, 0, T0 + DAY, T0 + DAY + i))
    assert {"A", "B"} <= set(shared.about["W"]) and len(shared.about["W"]) == 64
    st = shared.standing("W", T0 + 2 * DAY)
    assert st.streak == 60 and st.evidence.bad == 0  # the crowd's slander weighs nothing


def test_one_sybil_that_worked_here_cannot_lend_its_ring_a_confirmed_run():
    """Attacker: S00 did FULL_FLOW verified results for R, so every id S00 vouches for weighs 1 through it
    (each bounded by that one edge, not all together). 49 more ids — on prefixes of their own — then
    confirmed a run of 1000 for a worker W that never worked for R or anyone honest, and W would have
    run steps alone 98% of the time (found while attacking outvote proofs). Issuers now confirm a run by
    anchor (where their weight comes from): the ring is one anchor, and one anchor confirms nothing. W's
    reputation may still rise (capped at SHARED_CAP agreements); its run does not."""
    own = Reputations()
    t = agreed(own, "S00", int(FULL_FLOW) + 1)
    ring = [f"S{i:02d}" for i in range(50)]
    shared = Shared("R", own, {s: f"p{i}" for i, s in enumerate(ring)})
    for issuer in ring:
        for worker in [*ring, "W"]:
            if worker != issuer:
                assert shared.take(Testimony(issuer, worker, 1000.0, 0.0, 1000, t - 1000, 0, t))
    weights = shared.refresh(t)
    assert len(weights) == 50 and min(weights.values()) == 1.0  # the per-issuer bound, as it is
    assert set(shared.anchors.values()) == {"S00"}  # every ring id's weight comes through S00
    st = shared.standing("W", t)
    assert st.streak == 0, "a ring lent by one sybil confirmed a run"
    assert st.shared_good == SHARED_CAP
    # an honest issuer of first-hand weight on another prefix that saw W validated 30 times: now two
    # anchors confirm, and the ring's runs add up. Inflated, but past 1/REPLICATE_FLOOR = 50 a run buys
    # nothing: W is replicated 2% of the time either way, and it had to behave for A 30 times first
    t = agreed(own, "A", int(FULL_FLOW) + 1, t)
    shared.prefix_of = {**shared.prefix_of, "A": "pa"}
    assert shared.take(Testimony("A", "W", 30.0, 0.0, 30, t - 1000, 0, t))
    shared.refresh(t)
    assert shared.anchors["A"] == "A" and shared.standing("W", t).streak == 1000  # STREAK_CAP


def test_short_runs_at_many_issuers_do_not_add_up_past_a_wrong_answer_one_of_them_saw():
    """A worker wrong half the time has runs of one or two at each of many submitters, and wrong answers at
    others. Summed while those were ignored, the runs made 10 and it ran alone (large-10k: 1,532 wrong
    answers in 200,000 steps). Now a run reported before the newest reported wrong answer counts for
    nothing, and one begun after it still does."""
    own = Reputations()
    t = T0
    issuers = [f"I{k}" for k in range(12)]
    for i in issuers:
        t = agreed(own, i, int(FULL_FLOW) + 1, t)
    shared = Shared("R", own, {i: f"p{k}" for k, i in enumerate(issuers)} | {"C": "pc"})
    for i in issuers[:10]:  # ten runs of two, begun one after another
        reps = Reputations()
        t = agreed(reps, "C", 2, t)
        shared.take(attest(i, "C", reps, t))
    shared.refresh(t)
    assert shared.standing("C", t).streak == 20  # no wrong answer reported: they add up
    wrong = Reputations()
    t = agreed(wrong, "C", 1, t)
    wrong.fold("disagreed", "C", t, None)  # I10 saw it wrong, after every run above began
    shared.take(attest("I10", "C", wrong, t))
    shared.refresh(t)
    assert shared.standing("C", t).streak == 0
    late = Reputations()
    t = agreed(late, "C", 3, t + 1000)  # runs begun after the wrong answer count again
    shared.take(attest("I11", "C", late, t))
    reps = Reputations()
    t = agreed(reps, "C", 2, t)
    shared.take(attest("I0", "C", reps, t))  # I0's newer testimony: a run begun after it too
    shared.refresh(t)
    assert shared.standing("C", t).streak == 5


def test_a_slanderers_report_ends_only_the_runs_others_lend_never_the_receivers_own():
    shared, _, _ = honest_world()
    t = agreed(shared.own, "W", 12, T0 + DAY)  # R's own run of 12 with W
    t = agreed(shared.own, "S", int(FULL_FLOW) + 1, t)
    shared.prefix_of = {**shared.prefix_of, "S": "p8"}
    for k in range(3):  # S's word of three others R found right bears it out: one report against W does not
        t = agreed(shared.own, f"O{k}", 1, t)
        shared.take(Testimony("S", f"O{k}", 9.0, 0.0, 9, T0, 0, t))
    shared.take(Testimony("S", "W", 0.0, 5.0, 0, 0, t, t))  # a trusted issuer says W was wrong just now
    assert shared.refresh(t)["S"] == pytest.approx(13 / 16)  # P(Bin(5, 1/2) <= 3): borne out 3, contradicted 1
    st = shared.standing("W", t)
    assert st.streak == 12  # A's and B's runs (60) are ended; R's own run stands
    assert st.evidence.bad == 0  # and the report adds no bad evidence: W never misbehaved here


def test_testimony_nets_good_against_bad_across_issuers_and_slander_adds_no_bad():
    """A worker wrong half the time at many submitters: counted only where an issuer netted good, it
    looked honest to everyone. Now the issuers' good and bad offset; slander can cancel what others lend
    and nothing more."""
    shared, a, b = honest_world()
    t = T0 + DAY
    for i, s in enumerate(("S1", "S2")):
        agreed(shared.own, s, int(FULL_FLOW) + 1, t)
        shared.prefix_of = {**shared.prefix_of, s: f"q{i}"}
    shared.take(Testimony("S1", "W", 0.0, 30.0, 0, 0, t, t))  # as much bad as A's good
    shared.refresh(t)
    st = shared.standing("W", t)
    assert st.shared_good == pytest.approx(30, rel=0.01) and st.evidence.bad == 0  # A + B - S1
    shared.take(Testimony("S2", "W", 0.0, 1e6, 0, 0, t, t))  # a slanderer's huge claim
    shared.refresh(t)
    st = shared.standing("W", t)
    assert st.shared_good == 0 and st.evidence.bad == 0 and st.evidence.score(t) == 0.5  # back to its own


def test_issuers_with_first_hand_work_are_their_own_anchors_though_a_busier_issuer_vouches_for_them():
    """Honest case the sybil-ring rule must not break: A and B did enough verified work for R themselves,
    and C (who saw far more of them) also says they did work for it. Anchored at the largest source, A
    and B were both anchored at C, one anchor, and the runs they saw of W were never confirmed —
    `baseline` still replicated 16% of its steps in full between steps 2,000 and 4,000."""
    own = Reputations()
    t = agreed(own, "A", int(FULL_FLOW) + 1)
    t = agreed(own, "B", int(FULL_FLOW) + 1, t)
    t = agreed(own, "C", 40, t)
    shared = Shared("R", own, {"A": "pa", "B": "pb", "C": "pc", "W": "pw"})
    for issuer in ("A", "B"):
        assert shared.take(Testimony("C", issuer, 30.0, 0.0, 30, t - 30_000, 0, t))
        assert shared.take(Testimony(issuer, "W", 6.0, 0.0, 6, t - 6_000, 0, t))
    shared.refresh(t)
    assert shared.anchors["A"] == "A" and shared.anchors["B"] == "B"
    assert shared.standing("W", t).streak == 12
    # an issuer short of first-hand weight is still anchored where most of its weight comes from
    own2 = Reputations()
    t = agreed(own2, "A", 3)
    t = agreed(own2, "C", 40, t)
    shared2 = Shared("R", own2, {"A": "pa", "C": "pc"})
    assert shared2.take(Testimony("C", "A", 30.0, 0.0, 30, t - 30_000, 0, t))
    assert shared2.take(Testimony("A", "W", 6.0, 0.0, 6, t - 6_000, 0, t))
    shared2.refresh(t)
    assert shared2.anchors["A"] == "C"


def test_an_issuer_wrong_here_lately_lends_no_run_until_its_own_run_here_is_long_again():
    """Attacker: two sybils on two prefixes did verified work for R (so each is its own anchor and weighs
    1) and vouch for a fellow id W with a long run. One of them just answered R wrong: its own run here
    is broken, so the two together confirm nothing until it has LEND_RUN validated results again. (An
    issuer never seen wrong lends at once: S1 here, and test_issuers_with_first_hand_work...)"""
    own = Reputations()
    t = agreed(own, "S1", int(FULL_FLOW) + 1)
    t = agreed(own, "S2", int(FULL_FLOW) + 1, t)
    why = StepEvidence("majority", 2, 3, "d", ("x", "y"), {"x": "d", "y": "d", "S2": "e"}, {}, "", "")
    own.fold("disagreed", "S2", t, why)
    t = agreed(own, "S2", 12, t + 1000)  # net good stays over MIN_WEIGHT × FULL_FLOW: weight 1
    shared = Shared("R", own, {"S1": "p1", "S2": "p2", "W": "p3"})
    for issuer in ("S1", "S2"):
        assert shared.take(Testimony(issuer, "W", 500.0, 0.0, 500, 1, 0, t))
    shared.refresh(t)
    assert shared.weights["S2"] == 1.0 and own.streak("S2") == 12
    assert shared.standing("W", t).streak == 1000  # S2's own run here is long: both lend

    own.fold("disagreed", "S2", t + 1000, why)
    t = agreed(own, "S2", LEND_RUN - 1, t + 2000)
    shared.refresh(t)
    assert shared.weights["S2"] == 1.0
    assert shared.standing("W", t).streak == 0, "an issuer wrong here lately lent a run"
    t = agreed(own, "S2", 1, t)
    assert shared.standing("W", t).streak == 1000


def test_a_worker_outvoted_here_once_is_not_rechecked_at_every_slander_forever():
    """Attacker: sybils that did real work here accuse honest A of a wrong answer every round. A was once
    outvoted here (a colluding majority won a step), so their word was acted on as evidence — at every
    round after, each rerunning all A ran alone (vouching-30: 981 such reports in 50,000 steps). Now it is
    acted on so only while A's own run here since is shorter than LEND_RUN; after that it is an opinion
    again (a sample rerun, once an hour). It still counts against A's standing: A was wrong here once."""
    shared, _, _ = honest_world()
    t = T0 + DAY
    for s in ("S1", "S2"):
        agreed(shared.own, s, int(FULL_FLOW) + 1, t)
    shared.own.fold("disagreed", "A", t, None)  # outvoted once
    for k, s in enumerate(("S1", "S2")):
        shared.take(Testimony(s, "A", 0.0, 500.0, 0, 0, t + 1000, t + 1000 + k))
    shared.refresh(t + 1000)
    assert shared.suspected(t + 1000) == (["A"], [])  # seen wrong here lately: the report is evidence
    t2 = agreed(shared.own, "A", LEND_RUN, t + 2000)
    for k, s in enumerate(("S1", "S2")):
        shared.take(Testimony(s, "A", 0.0, 500.0, 0, 0, t2, t2 + k))
    shared.refresh(t2)
    assert shared.suspected(t2) == ([], [])  # right LEND_RUN times in a row since: an opinion again
    # and one contradicted by this node's own record: A is right here, S1 and S2 still say it is not, and
    # that was all they said (more_right_than_wrong(0, 1) = 1/4): they no longer weigh enough for a sample
    assert shared.weights["S1"] == shared.weights["S2"] == 0.25
    assert shared.suspected(t + 1000 + SUSPECT_EVERY_MS) == ([], [])


def full_scan(shared: Shared, now_ms: int) -> tuple[list[str], list[str]]:
    """`Shared.suspected` as it was before it kept `pending`: every worker held looked at, every round."""
    from mesh.core.trust import MIN_WEIGHT

    for gone in [w for w in shared.suspect if w not in shared.about]:
        del shared.suspect[gone]
    firm: list[str] = []
    soft: list[str] = []
    for worker, said in shared.about.items():
        latest = max((t.last_bad for i, t in said.items() if shared.weights.get(i, 0.0) >= MIN_WEIGHT), default=0)
        seen, when = shared.suspect.get(worker, (0, -SUSPECT_EVERY_MS))
        if latest <= seen:
            continue
        if shared._wrong_lately(worker):
            firm.append(worker)
        elif now_ms - when >= SUSPECT_EVERY_MS:
            soft.append(worker)
        else:
            continue
        shared.suspect[worker] = (latest, now_ms)
    return firm, soft


@pytest.mark.parametrize("seed", range(40))
def test_suspected_looks_only_at_pending_workers_and_answers_as_the_full_scan(seed):
    """Two receivers fed the same testimony, own evidence and re-weighings (issuers' weights rising past
    MIN_WEIGHT and falling back, reports with and without wrong answers, opinions held back for
    SUSPECT_EVERY_MS): the one that looks only at pending workers acts on the same workers, in the same
    order, at every round, as one that looks at every worker it holds."""
    import random

    rng = random.Random(seed)
    own = Reputations()
    issuers = [f"I{k}" for k in range(6)]
    workers = [f"W{k}" for k in range(10)]
    fast, slow = Shared("R", own), Shared("R", own)
    t = T0
    acted = 0
    for _ in range(400):
        t += rng.choice((1000, 60_000, SUSPECT_EVERY_MS // 3))
        op = rng.random()
        if op < 0.45:
            bad = rng.random() < 0.4
            item = Testimony(rng.choice(issuers), rng.choice(workers), rng.uniform(0, 20), 3.0 if bad else 0.0,
                             0, 0, t - rng.randrange(0, 5000) if bad else 0, t)
            assert fast.take(item) == slow.take(item)
        elif op < 0.65:
            peer = rng.choice(issuers + workers)
            if rng.random() < 0.7:
                agreed(own, peer, rng.randrange(1, 8), t)
            else:
                own.fold("disagreed", peer, t, None)
        elif op < 0.8:
            assert fast.refresh(t) == slow.refresh(t)
        else:
            got = fast.suspected(t)
            assert got == full_scan(slow, t)
            acted += len(got[0]) + len(got[1])
    assert acted > 0


# -- found by this session's reputation attacker (2026-12-05) ---------------------------------------------

def test_issuers_whose_prefix_is_not_known_here_count_as_one_prefix_not_one_each():
    """Two attacker ids on one machine lent a cheater a run of 1000 by hanging up before the receiver
    weighed its issuers again: only linked peers' prefixes were known, and an unknown one counted as a
    prefix of its own. The cheater then ran alone in 10 of 10 jobs, its wrong answer accepted."""
    shared, _, _ = honest_world()
    shared.prefix_of = {"W": "p3"}  # A and B were seen (on prefixes p1, p2) but are not linked now
    shared.refresh(T0 + 60_000)
    assert shared.standing("W", T0 + 60_000).streak == 0
    shared.prefix_of = {"A": "p1", "B": "p2", "W": "p3"}
    assert shared.standing("W", T0 + 60_000).streak == 60  # known apart: they confirm the run


def test_a_worker_wrong_here_lately_is_lent_no_run_whatever_start_its_issuers_state():
    """A reported run's start is the issuer's word: stated as 'just now', it postdated every wrong answer
    the receiver had seen (the cheater had just been outvoted here ten times) and was lent at once."""
    shared, _, _ = honest_world()
    t = T0 + DAY
    why = StepEvidence("majority", 2, 3, "d", ("x", "y"), {"x": "d", "y": "d", "W": "e"}, {}, "", "")
    shared.own.fold("disagreed", "W", t, why)
    for issuer in ("A", "B"):
        assert shared.take(Testimony(issuer, "W", 30.0, 0.0, 1000, t + 1000, 0, t + 1000))
    shared.refresh(t + 1000)
    assert shared.standing("W", t + 1000).streak == 0
    t = agreed(shared.own, "W", LEND_RUN, t + 2000)  # right here LEND_RUN times in a row again
    assert shared.standing("W", t).streak == 1000


def test_wrong_answer_reports_weigh_only_while_the_worker_is_wrong_here_lately_and_at_most_shared_cap():
    """One disagreement here, ever, made every report of a wrong answer count, unbounded and from any
    issuer with weight: a teller with one verified result (weight 0.1) reporting bad=1e6 took an honest
    worker with 200 verified results from 0.99 to 0.002, below a brand-new id."""
    own = Reputations()
    why = StepEvidence("majority", 2, 3, "d", ("x", "y"), {"x": "d", "y": "d", "H": "e"}, {}, "", "")
    own.fold("disagreed", "H", T0, why)
    t = agreed(own, "H", 200, T0 + 1000)
    t = agreed(own, "L", 1, t)  # a teller of little weight
    t = agreed(own, "S", int(FULL_FLOW) + 1, t)  # and a trusted one
    shared = Shared("R", own, {"H": "ph", "L": "pl", "S": "ps"})
    for issuer in ("L", "S"):
        assert shared.take(Testimony(issuer, "H", 0.0, 1e6, 0, 0, t, t))
    shared.refresh(t)
    # H is right here (200 in a row since): both reports are contradicted (more_right_than_wrong(0, 1) = 1/4)
    assert 0 < shared.weights["L"] < 0.5 and shared.weights["S"] == 0.25
    assert shared.standing("H", t).evidence.bad == pytest.approx(own.evidence["H"].decayed(t)[1])  # right since
    own.fold("disagreed", "H", t + 1000, why)  # wrong here again, just now: S's report is borne out
    assert shared.refresh(t + 1000)["S"] == 1.0
    st = shared.standing("H", t + 1000)
    assert st.evidence.bad <= own.evidence["H"].decayed(t + 1000)[1] + SHARED_CAP + 1e-9


def test_an_issuer_that_says_workers_right_here_were_wrong_loses_its_weight_whatever_work_it_did():
    """honest-voucher-20: ids that work honestly (trusted issuers by flow) say every other id gave them a wrong
    answer just now. Judged on the workers this node has a verdict of its own on, such an issuer is more
    often wrong than right: its weight goes, and with it its power to end the runs others lend."""
    shared, _, _ = honest_world()
    t = agreed(shared.own, "W", 2, T0 + DAY)  # validated here twice, never wrong here: right here
    t = agreed(shared.own, "S", int(FULL_FLOW) + 1, t)
    shared.prefix_of = {**shared.prefix_of, "S": "p8"}
    assert shared.trust("S", t) == 1.0  # by flow: full
    for k in range(4):
        t = agreed(shared.own, f"H{k}", 1, t)
        shared.take(Testimony("S", f"H{k}", 0.0, 20.0, 0, 0, t, t))  # slander of workers R found right
    shared.take(Testimony("S", "W", 0.0, 20.0, 0, 0, t, t))
    weights = shared.refresh(t)
    assert weights["S"] == pytest.approx(more_right_than_wrong(0, 5)) and weights["S"] < 0.05
    assert min(weights["A"], weights["B"]) > 0.99  # the honest issuers were never contradicted (a day's decay)
    assert shared.standing("W", t).streak == 60  # A's and B's runs stand


def test_more_right_than_wrong_is_the_beta_tail_and_its_approximation_agrees():
    assert more_right_than_wrong(0, 1) == 0.25 and more_right_than_wrong(1, 1) == 0.5
    assert more_right_than_wrong(5, 1) == pytest.approx(15 / 16)
    assert more_right_than_wrong(19, 75) < 1e-8 and more_right_than_wrong(70, 2) > 0.999999
    for a, c in ((120, 90), (100, 120), (150, 49)):  # n past EXACT_UP_TO: the normal approximation
        n = a + c + 1
        exact = sum(math.comb(n, j) for j in range(a + 1)) / 2 ** n
        assert more_right_than_wrong(a, c) == pytest.approx(exact, abs=1e-3)


def borne_out_full_scan(shared: Shared) -> dict[str, float]:
    """`Shared._borne_out` as it was before it looked only at workers with a record here: every worker held."""
    from mesh.core.trust import more_right_than_wrong

    verdict = {}
    for worker in shared.about:
        if shared._wrong_lately(worker):
            verdict[worker] = False
        elif shared.own.streak(worker):
            verdict[worker] = True
    agreed: dict[str, int] = {}
    contra: dict[str, int] = {}
    for worker, right in verdict.items():
        for issuer, t in shared.about[worker].items():
            if t.good == t.bad or (t.good > t.bad and not right):
                continue
            if (t.good > t.bad) == right:
                agreed[issuer] = agreed.get(issuer, 0) + 1
            else:
                contra[issuer] = contra.get(issuer, 0) + 1
    return {i: more_right_than_wrong(agreed.get(i, 0), c) for i, c in contra.items()}


@pytest.mark.parametrize("seed", range(20))
def test_borne_out_looks_only_at_workers_with_a_record_here_and_answers_as_the_full_scan(seed):
    """Testimony about many workers, own evidence of a few (runs, wrong answers, runs rebuilt after them):
    weighing issuers against only the workers this node has a record of gives what weighing them against
    every worker held gave."""
    import random

    rng = random.Random(seed)
    own = Reputations()
    shared = Shared("R", own)
    issuers = [f"I{k}" for k in range(8)]
    workers = [f"W{k}" for k in range(60)]
    t = T0
    for _ in range(500):
        t += rng.choice((1000, 60_000))
        if rng.random() < 0.7:
            good, bad = rng.uniform(0, 20), rng.choice((0.0, 0.0, rng.uniform(0, 20)))
            shared.take(Testimony(rng.choice(issuers), rng.choice(workers), good, bad, 0, 0, t if bad else 0, t))
        elif rng.random() < 0.7:
            agreed(own, rng.choice(workers[:15]), rng.randrange(1, 8), t)
        else:
            own.fold("disagreed", rng.choice(workers[:15] + ["never-held"]), t, None)
        assert shared._borne_out() == borne_out_full_scan(shared)
    assert borne_out_full_scan(shared)  # some issuer was contradicted: the comparison meant something
