"""Quorum rules and tallies (mesh.core.quorum), placement and reputation (mesh.core.policy), and one job's run as a
sans-I/O state machine (mesh.core.jobrun), driven with fake candidates and answers."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.core.dag import parse_job
from mesh.core.jobrun import Dispatch, JobRun, Outcome
from mesh.core.policy import MIN_WEIGHT, Candidate, place, reputation
from mesh.core.quorum import MARGIN_EXTRA, Accept, GiveUp, NeedMore, QuorumRule, Tally, Wait
from mesh.errors import JobError
from mesh.wire.canonical import digest

pytestmark = pytest.mark.timeout(60)

D, E, F = "d" * 64, "e" * 64, "f" * 64
MAJ, UNA = QuorumRule.parse("majority"), QuorumRule.parse("unanimous")


def tally(rule: QuorumRule = MAJ, r: int = 3, limit: int = 6, issue: tuple[str, ...] = ("n1", "n2", "n3")) -> Tally:
    t = Tally(rule, r, limit)
    for n in issue:
        t.issue(n)
    return t


# -- QuorumRule -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("r,needed", [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (16, 9)])
def test_majority_needs_more_than_half(r, needed):
    assert MAJ.needed(r) == needed


def test_unanimous_and_k_of_n_needed():
    assert [UNA.needed(r) for r in (1, 3, 5)] == [1, 3, 5]
    rule = QuorumRule.parse("2-of-5")
    assert (rule.k, rule.n, rule.spec) == (2, 5, "2-of-5")
    assert rule.needed(5) == 2 and rule.needed(9) == 2


@pytest.mark.parametrize("spec", ["0-of-1", "3-of-2", "1-of-17", "majority ", "k-of-n", 2, None])
def test_bad_rules(spec):
    with pytest.raises(JobError):
        QuorumRule.parse(spec)


# -- Tally ------------------------------------------------------------------------------------------------

def test_majority_accepts_two_agreeing_only_once_nobody_is_pending():
    t = tally()
    assert t.decide() == Wait()
    assert t.answer("n1", D)
    assert t.decide() == Wait()
    assert t.answer("n2", D)
    assert t.decide() == Wait()  # quorum reached but n3 has not been heard yet
    assert t.answer("n3", E)
    assert t.decide() == Accept(D, ("n1", "n2"), ("n3",), ())


def test_dissent_and_failures_are_recorded_in_the_accept():
    t = tally(issue=("a", "b", "c", "d", "e"), r=5, limit=10)
    t.answer("c", D)
    t.answer("a", D)
    t.answer("e", E)
    t.fail("b", "crashed")
    assert t.decide() == Wait()
    t.answer("d", D)
    assert t.decide() == Accept(D, ("a", "c", "d"), ("e",), ("b",))


def test_one_failure_out_of_three_still_waits_for_the_others():
    t = tally()
    t.fail("n1", "timeout")
    assert t.decide() == Wait()  # n2 and n3 can still make 2 agreeing


def test_failures_lead_to_need_more():
    t = tally()
    t.fail("n1", "timeout")
    t.fail("n2", "unreachable")
    assert t.decide() == NeedMore(1)
    t.fail("n3", "timeout")
    assert t.decide() == NeedMore(2)


def test_disagreement_leads_to_need_more():
    t = tally()
    t.answer("n1", D)
    t.answer("n2", E)
    t.answer("n3", F)
    assert t.decide() == NeedMore(1)
    t.issue("n4")
    t.answer("n4", E)
    assert t.decide() == Accept(E, ("n2", "n4"), ("n1", "n3"), ())


def test_replica_limit_decides_between_need_more_and_give_up():
    for limit, expect in ((4, GiveUp), (5, NeedMore), (6, NeedMore)):
        t = tally(rule=UNA, r=3, limit=limit)
        t.answer("n1", D)
        t.fail("n2", "x")
        t.fail("n3", "x")
        decision = t.decide()  # 2 more needed, limit - 3 allowed
        assert isinstance(decision, expect), (limit, decision)
    assert decision == NeedMore(2)


def test_give_up_with_evidence_when_the_limit_is_exhausted():
    t = tally(limit=3, issue=("node-alpha-0001", "node-beta-00002", "node-gamma-0003"))
    t.fail("node-alpha-0001", "crashed")
    assert t.decide() == Wait()
    t.answer("node-beta-00002", D)
    t.answer("node-gamma-0003", E)
    decision = t.decide()
    assert isinstance(decision, GiveUp)
    assert "no quorum possible" in decision.reason
    assert "2 agreeing needed" in decision.reason and "3 replicas" in decision.reason
    assert "node-alpha-0" in decision.reason and "failed (crashed)" in decision.reason
    assert f"node-beta-00 said {D[:12]}" in decision.reason
    assert f"node-gamma-0 said {E[:12]}" in decision.reason


def test_give_up_as_soon_as_no_quorum_is_possible_even_with_pending():
    t = tally(limit=3)
    t.answer("n1", D)
    t.answer("n2", E)
    assert isinstance(t.decide(), Wait)  # n3 could still side with either
    t2 = tally(r=5, limit=5, issue=("a", "b", "c", "d", "e"))
    for n, d in (("a", D), ("b", E), ("c", F)):
        t2.answer(n, d)
    assert t2.decide() == Wait()  # d and e could still both say D: 3 of 5
    t2.fail("d", "timeout")
    decision = t2.decide()  # best 1 + 1 pending + 0 budget < 3
    assert isinstance(decision, GiveUp) and "e pending" in decision.reason and "d failed (timeout)" in decision.reason


def test_unanimous_breaks_on_dissent():
    t = tally(rule=UNA)
    t.answer("n1", D)
    assert t.decide() == Wait()
    t.answer("n2", E)
    decision = t.decide()
    assert isinstance(decision, GiveUp)
    assert "unanimous quorum broken" in decision.reason
    assert D[:12] in decision.reason and E[:12] in decision.reason


def test_unanimous_accepts_when_all_agree_and_replaces_failures():
    t = tally(rule=UNA)
    t.answer("n1", D)
    t.fail("n2", "timeout")
    t.answer("n3", D)
    assert t.decide() == NeedMore(1)
    t.issue("n4")
    t.answer("n4", D)
    assert t.decide() == Accept(D, ("n1", "n3", "n4"), (), ("n2",))


def test_k_of_n():
    rule = QuorumRule.parse("2-of-4")
    t = tally(rule=rule, r=4, limit=8, issue=("a", "b", "c", "d"))
    t.answer("a", D)
    t.answer("b", E)
    t.answer("c", D)
    assert t.decide() == Wait()
    t.answer("d", F)
    assert t.decide() == Accept(D, ("a", "c"), ("b", "d"), ())


def test_one_of_one():
    t = tally(rule=QuorumRule.parse("1-of-1"), r=1, limit=2, issue=("solo",))
    t.answer("solo", D)
    assert t.decide() == Accept(D, ("solo",), (), ())


def test_a_node_cannot_be_issued_twice():
    t = tally()
    with pytest.raises(ValueError, match="already holds a replica"):
        t.issue("n1")
    t.answer("n1", D)
    with pytest.raises(ValueError):
        t.issue("n1")
    t.fail("n2", "x")
    with pytest.raises(ValueError):
        t.issue("n2")
    assert t.issued == 3


def test_answers_from_nodes_never_asked_or_twice_return_false():
    t = tally()
    assert t.answer("stranger", D) is False
    assert t.fail("stranger", "x") is False
    assert t.answer("n1", D) is True
    assert t.answer("n1", E) is False  # duplicate: first answer stands
    assert t.fail("n1", "x") is False
    assert t.fail("n2", "x") is True
    assert t.answer("n2", D) is False  # late
    assert t.answers == {"n1": D} and t.failures == {"n2": "x"} and t.pending == ["n3"]
    assert "stranger" not in t.answers


def test_evidence():
    assert Tally(MAJ, 3, 6).evidence() == "no replica answered"
    t = tally()
    t.answer("n1", D)
    t.fail("n2", "boom")
    assert t.evidence() == f"n1 said {D[:12]}; n2 failed (boom); n3 pending"


# -- Tally properties -------------------------------------------------------------------------------------

NODES = [f"node{i}" for i in range(8)]
DIGESTS = [D, E, F]

rules = st.one_of(
    st.tuples(st.sampled_from([MAJ, UNA]), st.integers(1, 6)),
    st.integers(1, 6).flatmap(lambda n: st.integers(1, n).map(lambda k: (QuorumRule.parse(f"{k}-of-{n}"), n))),
)
events = st.lists(st.tuples(st.sampled_from(["issue", "answer", "fail"]), st.integers(0, 7), st.integers(0, 2)),
                  max_size=40)


@pytest.mark.mesh  # 2 s on its own: out of the fast suite (`-m "not mesh"`), in the full one
@settings(max_examples=400, deadline=None)
@given(rules, st.integers(0, 6), events, st.booleans(), st.booleans(), st.booleans())
def test_tally_invariants_under_random_events(rule_r, extra_limit, evs, margin, more, new_prefixes):
    rule, r = rule_r
    limit = r + extra_limit
    t = Tally(rule, r, limit, margin=margin)
    needed = rule.needed(r)
    issued: set[str] = set()
    for op, i, j in evs:
        node = NODES[i]
        if op == "issue":
            if node in issued:
                with pytest.raises(ValueError):
                    t.issue(node)
            else:
                t.issue(node)
                issued.add(node)
        elif op == "answer":
            was_pending = node in t.pending
            assert t.answer(node, DIGESTS[j]) is was_pending
        else:
            was_pending = node in t.pending
            assert t.fail(node, "x") is was_pending
        assert t.issued == len(issued)
        assert set(t.pending) | set(t.answers) | set(t.failures) == issued
        assert not (set(t.answers) & set(t.failures))

        decision = t.decide(more, new_prefixes=new_prefixes)
        assert decision == t.decide(more, new_prefixes=new_prefixes)  # pure
        if isinstance(decision, Accept):
            assert len(decision.agreeing) >= needed
            tops = sorted(Counter(t.answers.values()).values())
            assert len(tops) < 2 or tops[-1] > tops[-2]  # never a tie picked at random
            if margin and more and t.issued < limit:
                extra = MARGIN_EXTRA if new_prefixes and decision.dissenting else 0
                assert len(decision.agreeing) >= needed + len(decision.dissenting) + extra
            assert not set(decision.agreeing) & set(decision.dissenting)
            assert all(t.answers[n] == decision.key for n in decision.agreeing)
            assert all(t.answers[n] != decision.key for n in decision.dissenting)
            assert set(decision.agreeing) | set(decision.dissenting) == set(t.answers)
            assert set(decision.failed) == set(t.failures)
            assert not t.pending
            if rule.spec == "unanimous":
                assert not decision.dissenting
        elif isinstance(decision, NeedMore):
            assert 1 <= decision.count <= limit - t.issued
            # at most a quorum's worth, or (failed seats filled before a bare quorum stands) the seats
            # still empty up to the redundancy: a 1-of-3 step with one answer and one failure asks 2
            assert decision.count <= max(needed, r - len(t.answers))
        elif isinstance(decision, GiveUp):
            assert decision.reason
        else:
            assert isinstance(decision, Wait)


@settings(max_examples=200, deadline=None)
@given(rules, st.integers(0, 6), st.randoms(use_true_random=False), st.floats(0, 1), st.booleans())
def test_a_driver_obeying_need_more_always_settles(rule_r, extra_limit, rnd, p_fail, margin):
    """Follow the tally's advice with random answers: it always ends in Accept or GiveUp, never
    exceeding the replica limit."""
    rule, r = rule_r
    limit = r + extra_limit
    t = Tally(rule, r, limit, margin=margin)
    fresh = iter(f"w{i}" for i in range(1000))
    for _ in range(r):
        t.issue(next(fresh))
    for _ in range(200):
        decision = t.decide()
        if isinstance(decision, (Accept, GiveUp)):
            break
        if isinstance(decision, NeedMore):
            for _ in range(decision.count):
                t.issue(next(fresh))
        node = rnd.choice(t.pending)
        if rnd.random() < p_fail:
            t.fail(node, "x")
        else:
            t.answer(node, rnd.choice(DIGESTS[:2]))
    else:
        pytest.fail("tally never settled")
    assert t.issued <= limit


# -- policy -----------------------------------------------------------------------------------------------

def cands(n: int, prefixes: int | None = None, rep: float = 0.5) -> list[Candidate]:
    prefixes = prefixes or n
    return [Candidate(f"node{i:02d}", rep, f"10.0.{i % prefixes}") for i in range(n)]


def test_reputation_is_neutral_at_start():
    assert reputation(0, 0, 0) == 0.5
    assert reputation(8, 0, 0) == 0.9
    assert reputation(0, 8, 0) == 0.1
    assert reputation(0, 0, 8) == reputation(0, 8, 0)
    assert reputation(3, 3, 0) == 0.5
    assert 0 < reputation(0, 1000, 1000) < reputation(1, 1000, 1000) < 0.5


@pytest.mark.parametrize("k", [0, 1, 3, 10, 20])
def test_place_returns_distinct_nodes_never_more_than_k(k):
    c = cands(10, 4)
    c += [Candidate("node03", 0.9, "10.9.9"), Candidate("node03", 0.9, "10.9.8")]  # listed three times
    for seed in range(20):
        chosen = place(c, k, random.Random(seed))
        assert len(chosen) == len(set(chosen)) == min(k, 10)
        assert set(chosen) <= {x.node for x in c}


def test_place_on_nobody():
    assert place([], 3, random.Random(0)) == []


def test_place_prefers_distinct_prefixes():
    c = cands(9, 3)  # three /24s with three nodes each
    by_node = {x.node: x.prefix for x in c}
    for seed in range(50):
        chosen = place(c, 3, random.Random(seed))
        assert len({by_node[n] for n in chosen}) == 3
        chosen = place(c, 5, random.Random(seed))
        assert len(chosen) == 5 and len({by_node[n] for n in chosen}) == 3


def test_place_spreads_even_over_high_reputation_on_one_prefix():
    c = [Candidate(f"sybil{i}", 1.0, "6.6.6") for i in range(20)] + [Candidate("home", 0.1, "1.2.3")]
    hits = sum("home" in place(c, 2, random.Random(seed)) for seed in range(50))
    assert hits == 50


def test_place_is_deterministic_for_a_seeded_random():
    c = cands(12, 5)
    for seed in range(10):
        first = place(c, 4, random.Random(seed))
        assert place(c, 4, random.Random(seed)) == first
        shuffled = c[:]
        random.Random(seed + 100).shuffle(shuffled)
        assert place(shuffled, 4, random.Random(seed)) == first  # input order does not matter
    assert len({tuple(place(c, 4, random.Random(s))) for s in range(20)}) > 1  # the RNG does matter


def test_low_reputation_nodes_are_chosen_less_often():
    rng = random.Random(1234)
    c = [Candidate("good", 0.9, "a"), Candidate("bad", 0.1, "b")]
    trials = 3000
    counts = Counter(place(c, 1, rng)[0] for _ in range(trials))
    assert counts["bad"] < 0.2 * trials  # expected 10%
    assert counts["good"] > 4 * counts["bad"]
    assert counts["bad"] > 0  # still gets the odd chance


def test_zero_reputation_still_gets_the_odd_chance():
    rng = random.Random(99)
    c = [Candidate("ok", 0.5, "a"), Candidate("zero", 0.0, "b")]
    counts = Counter(place(c, 1, rng)[0] for _ in range(3000))
    expected = MIN_WEIGHT / (MIN_WEIGHT + 0.5) * 3000  # ≈ 115
    assert 0.4 * expected < counts["zero"] < 2 * expected


def test_reputation_weighting_among_many():
    rng = random.Random(5)
    c = [Candidate(f"hi{i}", 0.9, f"h{i}") for i in range(5)] + [Candidate(f"lo{i}", 0.1, f"l{i}") for i in range(5)]
    counts = Counter(n[:2] for _ in range(1000) for n in place(c, 3, rng))
    assert counts["hi"] > 3 * counts["lo"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 5)), min_size=0, max_size=15),
       st.integers(0, 20), st.integers(0, 2**32))
def test_place_properties(specs, k, seed):
    c = [Candidate(f"n{i}", rep, f"p{pfx}") for i, (rep, pfx) in enumerate(specs)]
    chosen = place(c, k, random.Random(seed))
    assert len(chosen) == len(set(chosen)) == min(k, len(c))
    prefix = {x.node: x.prefix for x in c}
    assert len({prefix[n] for n in chosen}) == min(k, len(set(prefix.values())))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3)), min_size=0, max_size=15),
       st.dictionaries(st.integers(0, 3).map(lambda i: f"p{i}"), st.integers(1, 3), max_size=3),
       st.integers(1, 6), st.integers(0, 2**32))
def test_no_prefix_supplies_a_majority_of_a_steps_replicas_while_others_can(specs, held, k, seed):
    """An operator's ids on one network prefix (the attacker) never hold most of a step's replicas —
    counting those the step already has — unless the other prefixes have nobody left to give."""
    c = [Candidate(f"n{i}", rep, f"p{pfx}") for i, (rep, pfx) in enumerate(specs)]
    chosen = place(c, k, random.Random(seed), held=held)
    assert len(chosen) == len(set(chosen)) == min(k, len(c))
    prefix = {x.node: x.prefix for x in c}
    counts = Counter(held) + Counter(prefix[n] for n in chosen)
    total = sum(held.values()) + len(chosen)
    for p in {prefix[n] for n in chosen}:
        if 2 * counts[p] > total and counts[p] >= 2:  # p was given a majority: no swap could have avoided it
            better = [x for x in c if x.node not in chosen and counts[x.prefix] + 1 < counts[p]]
            assert not better, (p, counts, better)


def test_a_sybil_prefix_with_the_best_reputation_still_gets_a_minority_of_an_escalation():
    sybils = [Candidate(f"s{i}", 1.0, "evil") for i in range(10)]
    honest = [Candidate(f"h{i}", 0.3, f"h{i}") for i in range(3)]
    for seed in range(50):
        chosen = place(sybils + honest, 2, random.Random(seed), held={"evil": 1, "h0": 1})
        assert sum(n.startswith("s") for n in chosen) <= 1, chosen  # evil ends with 2 of 4 at most


# -- JobRun -----------------------------------------------------------------------------------------------

def two_step_job(**extra):
    return parse_job({"name": "two", "steps": [
        {"id": "a", "kind": "python", "params": {"code": "output = 6 * 7"}},
        {"id": "b", "kind": "llm", "params": {"prompt": "The answer is {a.output}."}},
    ], **extra})


def workers(n_py: int = 4, n_llm: int = 4) -> dict[str, list[Candidate]]:
    """Candidates by capability; keyed both by kind and by Step.needs ('llm:default')."""
    py = [Candidate(f"py{i}", 0.5, f"10.0.{i}") for i in range(n_py)]
    lm = [Candidate(f"lm{i}", 0.5, f"10.1.{i}") for i in range(n_llm)]
    return {"python": py, "llm": lm, "llm:default": lm}


def test_two_step_job_completes_and_passes_output_on():
    run = JobRun("job1", two_step_job(), random.Random(7))
    w = workers()
    first = run.advance(w, now=100.0)
    assert len(first) == 3
    assert {d.step for d in first} == {"a"} and {d.kind for d in first} == {"python"}
    assert len({d.node for d in first}) == 3 and all(d.node.startswith("py") for d in first)
    assert all(d.params == {"code": "output = 6 * 7", "inputs": {}} for d in first)
    assert all(d.deadline == 100.0 + 300.0 for d in first)
    assert run.advance(w, now=101.0) == []  # nothing new while waiting
    assert run.steps["b"].status == "waiting"

    honest1, honest2, liar = sorted(d.node for d in first)
    assert run.on_result("a", honest1, True, digest(42), 42, {"cpu_s": 0.5}, "")
    assert run.on_result("a", honest2, True, digest(42), 42, {"cpu_s": 0.7}, "")
    assert run.advance(w, now=102.0) == []  # quorum, but the third is still out
    assert run.on_result("a", liar, True, digest(41), 41, {"cpu_s": 1000.0}, "")
    (extra,) = run.advance(w, now=103.0)  # 2 against 1 could be two colluders: one more must outvote the dissent
    assert extra.step == "a" and extra.node not in (honest1, honest2, liar)
    assert run.steps["a"].status == "running"
    assert run.on_result("a", extra.node, True, digest(42), 42, {"cpu_s": 0.6}, "")
    second = run.advance(w, now=103.5)
    assert run.steps["a"].status == "done" and run.steps["a"].output == 42

    assert len(second) == 3 and {d.step for d in second} == {"b"}
    assert all(d.node.startswith("lm") for d in second)
    assert all(d.params == {"prompt": "The answer is 42."} for d in second)

    (oa,) = run.take_outcomes()
    assert oa == Outcome("a", "python", True, digest(42), tuple(sorted((honest1, honest2, extra.node))), (liar,),
                         (), 0.5, basis="0.6 CPU-seconds (the median of 3 agreeing workers' own figures, at most "
                         "300 by the step's limits, and for each at most its own) at each worker's cpu_s rate, at "
                         "least 0.01", credits={honest1: 0.5, honest2: 0.6, extra.node: 0.6})
    assert liar not in oa.agreeing  # no credit for the dissenter, and its claim does not raise the credit

    for i, d in enumerate(sorted(second, key=lambda d: d.node)):
        assert run.on_result("b", d.node, True, digest("Yes."), "Yes.", {"tokens": 10 + i}, "")
    assert run.advance(w, now=104.0) == []
    (ob,) = run.take_outcomes()
    assert ob.accepted and ob.step == "b" and ob.credit == 0.1
    assert ob.agreeing == tuple(sorted(d.node for d in second))
    assert run.finished and run.status == "done"

    report = run.report()
    assert report["status"] == "done" and report["job_id"] == "job1" and report["name"] == "two"
    assert report["steps"]["a"]["output"] == 42 and report["steps"]["b"]["output"] == "Yes."
    agreed = {r["node"]: r["agreed"] for r in report["steps"]["a"]["replicas"]}
    assert agreed == {honest1: True, honest2: True, extra.node: True, liar: False}


def test_python_step_gets_dependency_outputs_as_inputs():
    job = parse_job({"steps": [
        {"id": "a", "kind": "python", "params": {"code": "output = [1, 2]"}},
        {"id": "b", "kind": "python", "params": {"code": "output = sum(inputs['a'])"}, "after": ["a"]},
    ], "redundancy": 1})
    run = JobRun("j", job, random.Random(0))
    (d,) = run.advance(workers(), 0.0)
    run.on_result("a", d.node, True, digest([1, 2]), [1, 2], {}, "")
    (d2,) = run.advance(workers(), 1.0)
    assert d2.step == "b" and d2.params["inputs"] == {"a": [1, 2]}


def test_unexpected_results_are_refused():
    run = JobRun("j", two_step_job(), random.Random(0))
    dispatched = run.advance(workers(), 0.0)
    node = dispatched[0].node
    assert run.on_result("a", "stranger", True, D, 1, {}, "") is False
    assert run.on_result("b", node, True, D, 1, {}, "") is False  # b is not running
    assert run.on_result("zzz", node, True, D, 1, {}, "") is False
    assert run.on_result("a", node, True, D, 1, {}, "") is True
    assert run.on_result("a", node, True, E, 2, {}, "") is False  # duplicate
    assert run.on_failure("a", node, "late") is False
    assert run.steps["a"].replicas[node].digest == D


def test_failed_answers_count_as_failures():
    run = JobRun("j", two_step_job(), random.Random(0))
    nodes = [d.node for d in run.advance(workers(), 0.0)]
    assert run.on_result("a", nodes[0], False, "", None, {}, "ZeroDivisionError: x")
    assert run.steps["a"].tally.failures == {nodes[0]: "ZeroDivisionError: x"}
    assert run.steps["a"].replicas[nodes[0]].error == "ZeroDivisionError: x"


def test_fewer_eligible_workers_than_redundancy_fails_the_step_clearly():
    run = JobRun("j", two_step_job(), random.Random(0))
    assert run.advance(workers(n_py=2), 0.0) == []
    (o,) = run.take_outcomes()
    assert o.step == "a" and not o.accepted and o.credit == 0.0 and o.agreeing == ()
    assert "needs 3 workers" in o.reason and "offers 2" in o.reason
    assert run.steps["a"].status == "failed" and run.steps["a"].error == o.reason
    assert run.steps["b"].status == "skipped" and run.steps["b"].error == "an earlier step failed"
    assert run.finished and run.status == "failed"
    assert run.report()["steps"]["a"]["error"] == o.reason


def test_llm_step_without_llm_workers_fails_after_python_succeeds():
    run = JobRun("j", two_step_job(redundancy=1), random.Random(0))
    (d,) = run.advance(workers(n_llm=0), 0.0)
    run.on_result("a", d.node, True, digest(1), 1, {}, "")
    assert run.advance(workers(n_llm=0), 1.0) == []
    oa, ob = run.take_outcomes()
    assert oa.accepted and not ob.accepted and "offers 0" in ob.reason
    assert run.status == "failed"


def test_losing_two_of_three_nodes_dispatches_a_replacement():
    run = JobRun("j", two_step_job(), random.Random(3))
    w = workers(n_py=4)
    first = run.advance(w, 0.0)
    used = {d.node for d in first}
    (spare,) = {c.node for c in w["python"]} - used
    lost1, lost2, kept = sorted(used)
    run.on_node_lost(lost1, "connection closed")
    assert run.advance(w, 1.0) == []  # majority still reachable with the two left
    run.on_node_lost(lost2, "connection closed")
    (replacement,) = run.advance(w, 2.0)
    assert replacement.node == spare and replacement.step == "a"
    assert run.steps["a"].tally.failures == {lost1: "connection closed", lost2: "connection closed"}
    run.on_result("a", kept, True, digest(42), 42, {"cpu_s": 1}, "")
    run.on_result("a", spare, True, digest(42), 42, {"cpu_s": 1}, "")
    run.advance(w, 3.0)
    (o,) = run.take_outcomes()
    assert o.accepted and o.agreeing == tuple(sorted([kept, spare])) and o.failed == (lost1, lost2)


def test_losing_a_node_under_unanimous_quorum_dispatches_a_replacement():
    run = JobRun("j", two_step_job(quorum="unanimous"), random.Random(3))
    w = workers(n_py=5)
    first = run.advance(w, 0.0)
    lost = first[0].node
    run.on_node_lost("someone-else", "bye")  # not involved: no effect
    assert run.advance(w, 0.5) == []
    run.on_node_lost(lost, "bye")
    (replacement,) = run.advance(w, 1.0)
    assert replacement.node not in {d.node for d in first}
    assert run.steps["a"].tally.pending.count(replacement.node) == 1


def test_losing_a_node_without_spares_gives_up_with_evidence():
    run = JobRun("j", two_step_job(quorum="unanimous"), random.Random(3))
    w = workers(n_py=3)
    first = run.advance(w, 0.0)
    run.on_node_lost(first[0].node, "bye")
    assert run.advance(w, 1.0) == []
    (o,) = run.take_outcomes()
    assert not o.accepted and "no unused worker left" in o.reason and "failed (bye)" in o.reason
    assert run.steps["a"].tally.pending == []  # the replicas still out are released
    assert run.status == "failed"


def test_deadline_passing_fails_the_replica_and_replaces_it():
    run = JobRun("j", two_step_job(quorum="unanimous", timeout=10), random.Random(3))
    w = workers(n_py=4)
    first = run.advance(w, 0.0)
    run.on_result("a", first[0].node, True, D, 1, {}, "")
    run.on_time(9.9)
    assert run.advance(w, 9.9) == []
    run.on_time(10.0)
    assert run.steps["a"].tally.failures == {d.node: "timeout" for d in first[1:]}
    assert len(run.advance(w, 10.0)) == 1  # 3 of 3 needed, one answered, one spare left


def _drive(seed: int) -> list[tuple]:
    run = JobRun("job", two_step_job(redundancy=3), random.Random(seed))
    w = workers(n_py=8, n_llm=8)
    log: list[Dispatch] = []
    now = 0.0
    while not run.finished:
        batch = run.advance(w, now)
        log += batch
        for d in batch:
            out = 42 if d.step == "a" else f"answer {d.params['prompt']}"
            if d.node.endswith("3"):
                run.on_result(d.step, d.node, True, digest("lie"), "lie", {}, "")
            else:
                run.on_result(d.step, d.node, True, digest(out), out, {"cpu_s": 1, "tokens": 3}, "")
        now += 1.0
        assert now < 50
    return log


def test_same_seed_and_inputs_give_identical_dispatch_sequences():
    assert _drive(11) == _drive(11)
    assert len(_drive(11)) >= 6
    assert len({tuple((d.step, d.node) for d in _drive(s)) for s in range(10)}) > 1


def test_new_ids_start_with_a_fifth_of_the_weight_and_earn_the_rest_by_verified_work():
    """A thousand fresh ids must not draw a thousand shares: an id with no verified results weighs
    START_WEIGHT of its reputation, one with EARN_RESULTS (or more) its whole reputation."""
    from mesh.core.policy import EARN_RESULTS, START_WEIGHT

    fresh = Candidate("new", 0.5, "p1", verified=0.0)
    half = Candidate("half", 0.5, "p2", verified=EARN_RESULTS / 2)
    proven = Candidate("old", 0.5, "p3", verified=EARN_RESULTS * 3)
    assert fresh.weight == pytest.approx(0.5 * START_WEIGHT) and proven.weight == pytest.approx(0.5)
    assert fresh.weight < half.weight < proven.weight
    assert Candidate("unmeasured", 0.5, "p4").weight == 0.5  # drivers that count nothing: reputation alone
    rng = random.Random(3)
    firsts = Counter(place([fresh, proven], 1, rng)[0] for _ in range(3000))
    share = firsts["new"] / 3000  # Efraimidis–Spirakis: w_new / (w_new + w_old) for the first pick
    assert abs(share - START_WEIGHT / (1 + START_WEIGHT)) < 0.03, share
