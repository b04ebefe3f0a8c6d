"""What a worker is paid when its own figures are all there is to go by (found by an attack on the core,
2026-12-05): a generator whose claim the verifiers scored, a passed spot check, an answered replica of a
cancelled job. Each was paid whatever the worker claimed up to the step's limits: 2,048 tokens for one,
300 CPU-seconds for a check of a step that took 0.01, 300 for a wrong answer of a cancelled job."""

from __future__ import annotations

import random

import pytest

from mesh.core.dag import parse_job
from mesh.core.effects import Record, Send
from mesh.core.jobrun import UNVERIFIED_CPUS, JobRun
from mesh.core.policy import Candidate, StepEvidence, next_streak
from mesh.core.pricing import DEFAULT_RATES, JSON_SPACING, STEP_CPUS, TOKEN_SLACK, overclaimed
from mesh.core.spotcheck import SYNTHETIC_WORTH, WORTH_SLACK
from mesh.core.submission import Config, Submission, step_evidence
from mesh.wire.canonical import digest

pytestmark = pytest.mark.timeout(30)
CLAIM = 300.0  # CPU-seconds: the whole timeout, claimed for a step that took 0.01


def paid_entries(effects) -> list[tuple[str, str, float, dict]]:
    return [(e.job, le.peer, -le.amount, le.detail or {}) for e in effects if isinstance(e, Record)
            for le in e.entries if le.kind == "paid"]


def test_a_scored_generator_is_paid_for_the_tokens_its_claim_holds_not_for_what_it_says():
    job = parse_job({"redundancy": 3, "steps": [{"id": "a", "kind": "llm", "compare": "score",
                                                 "params": {"prompt": "Say hi", "max_tokens": 2048}}]})
    pool = {"llm:default": [Candidate(f"w{i}", 0.9, f"10.0.{i}") for i in range(6)]}
    run = JobRun("j", job, random.Random(2))
    (gen,) = run.advance(pool, 0.0)
    run.on_result("a", gen.node, True, digest(" hi"), " hi", {"tokens": 2048, "token_ids": [6754]}, "")
    for d in run.advance(pool, 0.0):
        run.on_result("a", d.node, True, digest({"accepted": True}), {"accepted": True, "first_bad": -1},
                      {"tokens": len(d.params["token_ids"])}, "")
    run.advance(pool, 0.0)
    (o,) = run.take_outcomes()
    assert o.accepted and o.credit_of(gen.node) == pytest.approx(max(0.01, 1 / 1000 * DEFAULT_RATES.tokens_1k))


def test_a_passed_spot_check_is_paid_at_most_a_few_times_what_its_step_took():
    job = parse_job({"redundancy": 3, "timeout": 300,
                     "steps": [{"id": "a", "kind": "python", "params": {"code": "output = 42"}}]})
    sub = Submission(Config(seed=7, spot_rate=1.0, check_spread_s=1.0))
    pool = {"python": [Candidate(n, 0.5, f"10.0.{i}", 0) for i, n in enumerate(("h1", "h2", "h3", "evil"))]}
    paid, checks, now = [], [], 0.0
    for j in range(4):
        effects = sub.submit(f"job{j}", job, j)
        for _ in range(5):
            effects = sub.tick(f"job{j}", pool, now)
            paid += paid_entries(effects)
            checks += [e for e in effects if isinstance(e, Send) and e.check is not None]
            for s in (e for e in effects if isinstance(e, Send) and e.check is None):
                work = {"cpu_s": CLAIM if s.node == "evil" else 0.01}
                paid += paid_entries(sub.on_result(s.node, s.job, s.step, True, digest(42), 42, work, "", now + 0.1))
            now += 1.0
        for e in sub.on_alarm(now + 2.0):
            checks += [e] if isinstance(e, Send) and e.check is not None else []
        now += 3.0
        while checks:
            c = checks.pop()
            work = {"cpu_s": CLAIM if c.node == "evil" else 0.01}
            paid += paid_entries(sub.on_result(c.node, c.job, c.step, True, digest(c.check.expected),
                                               c.check.expected, work, "", now))
    by_evil = [amount for _, peer, amount, detail in paid if peer == "evil" and "spot_check" in detail]
    assert by_evil, "no check of the inflating worker passed"
    replayed = 0.01 * WORTH_SLACK * DEFAULT_RATES.cpu_s
    assert all(a <= max(SYNTHETIC_WORTH * WORTH_SLACK * DEFAULT_RATES.cpu_s, 0.01) + 1e-9 for a in by_evil), by_evil
    assert any(a <= max(replayed, 0.01) + 1e-9 for a in by_evil), by_evil  # a check replaying an accepted step


def test_a_cancelled_jobs_answers_are_paid_at_most_the_median_of_their_claims():
    job = parse_job({"redundancy": 3, "quorum": "unanimous",
                     "steps": [{"id": "a", "kind": "python", "params": {"code": "output = 42"}}]})
    sub = Submission(Config(seed=3))
    pool = {"python": [Candidate(n, 0.5, f"10.0.{i}", 0) for i, n in enumerate(("h1", "h2", "evil"))]}
    sub.submit("j", job, 1)
    sent = {s.node for s in sub.tick("j", pool, 0.0) if isinstance(s, Send)}
    assert {"h1", "evil"} <= sent
    sub.on_result("evil", "j", "a", True, digest(666), 666, {"cpu_s": CLAIM}, "", 0.5)
    sub.on_result("h1", "j", "a", True, digest(42), 42, {"cpu_s": 0.01}, "", 0.5)
    paid = {peer: amount for _, peer, amount, _ in paid_entries(sub.abort("j", "cancelled by its submitter"))}
    assert paid["evil"] <= max(0.01, 0.01 * DEFAULT_RATES.cpu_s) + 1e-9, paid
    assert paid["h1"] == pytest.approx(max(0.01, 0.01 * DEFAULT_RATES.cpu_s))


def test_a_cancelled_steps_only_answer_is_paid_at_most_one_cpu_for_the_time_it_took():
    """Found by this project's red team (2026-12-06): a worker sent a made-up answer at 1/16 of a 300 s
    timeout, claiming all of it, while the honest replicas still ran; the owner cancelled, and the one
    answer was paid its claim within 16 CPUs × its wait (1,199.98 credits at a rate of 4)."""
    job = parse_job({"redundancy": 3, "timeout": 300,
                     "steps": [{"id": "a", "kind": "python", "params": {"code": "output = 42"}}]})
    sub = Submission(Config(seed=3))
    pool = {"python": [Candidate(n, 0.5, f"10.0.{i}", 0) for i, n in enumerate(("h1", "h2", "evil"))]}
    sub.submit("j", job, 1)
    assert "evil" in {s.node for s in sub.tick("j", pool, 0.0) if isinstance(s, Send)}
    sub.on_result("evil", "j", "a", True, digest("garbage"), "garbage", {"cpu_s": CLAIM, "seconds": 18.75}, "", 18.75)
    paid = {peer: amount for _, peer, amount, _ in paid_entries(sub.abort("j", "cancelled by its submitter"))}
    assert set(paid) == {"evil"} and paid["evil"] <= 18.75 * DEFAULT_RATES.cpu_s + 1e-9, paid  # not 300


def run_alone(kind: str, params: dict, output, work: dict, answered_after: float) -> dict[str, float]:
    """One step of a job with adaptive replication, placed among a worker with a long run (so it runs alone,
    unless drawn for an audit) and fresh ones; every worker answers `output`, the long-run one claiming
    `work` `answered_after` seconds after it was asked. What each worker is paid."""
    job = parse_job({"redundancy": 3, "adaptive": 5, "timeout": 300, "steps": [{"id": "a", "kind": kind, "params": params}]})
    for seed in range(40):
        sub = Submission(Config(seed=seed))
        pool = {k: [Candidate("trusted", 0.9, "10.0.0", 500)] + [Candidate(f"h{i}", 0.5, f"10.0.{i + 1}") for i in range(3)]
                for k in ("python", "llm:default")}
        sub.submit("j", job, seed)
        sends = [e for e in sub.tick("j", pool, 100.0) if isinstance(e, Send)]
        if [s.node for s in sends] != ["trusted"]:
            continue  # an audit: drawn again
        paid = paid_entries(sub.on_result("trusted", "j", "a", True, digest(output), output, work, "",
                                          100.0 + answered_after))
        paid += paid_entries(sub.tick("j", pool, 100.0 + answered_after))
        return {peer: amount for _, peer, amount, _ in paid}
    raise AssertionError("the long-run worker was never sent a step alone")


def test_a_lone_python_claim_is_paid_at_most_one_cpu_for_the_wait_for_it():
    """A worker trusted to run steps alone claimed the whole timeout for a step answered in 50 ms, and was
    paid 300 CPU-seconds for it: nobody else ran the step, so nothing compared its claim. Then (attack on real
    nodes, 2026-12-06) one held a 2 ms answer a sixteenth of the timeout and claimed STEP_CPUS over the wait:
    250.9 credits. Alone, a step is paid at most one CPU for the time it took: what an honest busy CPU earns."""
    paid = run_alone("python", {"code": "output = 42"}, 42, {"cpu_s": CLAIM}, 0.05)
    assert paid["trusted"] <= 0.05 * UNVERIFIED_CPUS * DEFAULT_RATES.cpu_s + 0.01, paid
    held = run_alone("python", {"code": "output = 42"}, 42, {"cpu_s": 16 * 4.0}, 4.0)  # held 4 s, 16 CPUs claimed
    assert held["trusted"] == pytest.approx(4.0 * UNVERIFIED_CPUS * DEFAULT_RATES.cpu_s), held
    honest = run_alone("python", {"code": "output = 42"}, 42, {"cpu_s": 2.5}, 3.0)  # a claim the wait allows
    assert honest["trusted"] == pytest.approx(2.5 * DEFAULT_RATES.cpu_s)
    parallel = run_alone("python", {"code": "output = 42"}, 42, {"cpu_s": 7.5}, 3.0)  # several processes at once:
    assert parallel["trusted"] == pytest.approx(3.0 * DEFAULT_RATES.cpu_s)  # alone, one CPU's worth (where others
    # measured too, the median of their figures pays it, up to STEP_CPUS)


def test_a_worker_claiming_far_more_than_the_others_where_they_measured_too_loses_its_run():
    """Where others ran the step too the median pays an inflated claim no more, so an inflater lost nothing by
    inflating there, kept its run and so its steps alone, where its claims are all there is. A claim over
    OVERCLAIM times the others' median is evidence against it: its run of validated results ends."""
    job = parse_job({"redundancy": 2, "timeout": 300,
                     "steps": [{"id": "a", "kind": "python", "params": {"code": "output = 42"}}]})
    pool = {"python": [Candidate("greedy", 0.5, "10.0.1"), Candidate("honest", 0.5, "10.0.2")]}
    run = JobRun("j", job, random.Random(1))
    for d in run.advance(pool, 0.0):
        cpu = 16 * 19.0 if d.node == "greedy" else 0.05
        run.on_result("a", d.node, True, digest(42), 42, {"cpu_s": cpu}, "", 20.0)
    run.advance(pool, 20.0)
    (o,) = run.take_outcomes()
    assert o.accepted and o.overclaimed == ("greedy",)
    assert o.credit_of("greedy") == pytest.approx(max(0.01, 0.05 * DEFAULT_RATES.cpu_s))  # the median, as before
    why = step_evidence(job, o, run.steps["a"].replicas)
    assert StepEvidence.from_json(why.to_json()).overclaimed == ("greedy",)
    assert next_streak(9, "agreed", why, "greedy") == 0 and next_streak(9, "agreed", why, "honest") == 10
    fair = {"a": {"cpu_s": 1.0}, "b": {"cpu_s": 15.0}, "c": {"cpu_s": 17.0}}  # machines differ; 16-fold is rare
    assert overclaimed("python", fair) == () and overclaimed("python", {"a": {"cpu_s": 0.001}, "b": {"cpu_s": 1.5}}) == ()
    assert overclaimed("python", {"a": {"cpu_s": 0.001}, "b": {"cpu_s": 1.7}}) == ("b",)  # over 16 × the 0.1 floor


def test_a_lone_generation_is_paid_at_most_the_tokens_its_answer_holds():
    """2,048 tokens claimed for a one-token answer (max_tokens 2,048), run alone: paid 20.48."""
    params = {"prompt": "Say hi", "max_tokens": 2048}
    paid = run_alone("llm", params, " hi", {"tokens": 2048, "token_ids": [6754]}, 30.0)
    assert paid["trusted"] == pytest.approx(max(0.01, 1 / 1000 * DEFAULT_RATES.tokens_1k)), paid
    bare = run_alone("llm", params, " hi", {"tokens": 2048}, 30.0)  # no token ids: at most the answer's bytes and a few
    assert bare["trusted"] <= (3 + TOKEN_SLACK) / 1000 * DEFAULT_RATES.tokens_1k + 1e-9, bare
    honest = run_alone("llm", params, "word " * 300, {"tokens": 300, "token_ids": [7] * 300}, 30.0)
    assert honest["trusted"] == pytest.approx(300 / 1000 * DEFAULT_RATES.tokens_1k)


def test_a_lone_json_answer_is_paid_at_most_the_tokens_its_value_could_have_taken():
    """A json_schema step hands on a JSON value, not text: with no token ids (or made-up ones) a worker
    running it alone was paid 2,048 tokens for `{"ok": true}` (found by this session's credit attacker)."""
    params = {"prompt": "Is it ok?", "max_tokens": 2048,
              "json_schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}}
    most = (JSON_SPACING * len(b'{"ok":true}') + TOKEN_SLACK) / 1000 * DEFAULT_RATES.tokens_1k
    for work in ({"tokens": 2048}, {"tokens": 2048, "token_ids": [5] * 2048}):
        paid = run_alone("llm", params, {"ok": True}, work, 30.0)
        assert paid["trusted"] <= most + 1e-9, (work, paid)
    odd = run_alone("llm", {"prompt": "Say hi", "max_tokens": 2048}, ["x"], {"tokens": 2048}, 30.0)  # not text at all
    assert odd["trusted"] <= (JSON_SPACING * len(b'["x"]') + TOKEN_SLACK) / 1000 * DEFAULT_RATES.tokens_1k + 1e-9


def test_a_spot_check_is_paid_at_most_what_the_wait_for_it_allows_and_its_worth_is_what_was_paid():
    """Two sybils holding both seats of a step claimed its whole timeout: each was paid what the wait
    allowed, but the step was remembered as worth 300 CPU-seconds, and every check replaying it, answered
    in 0.1 s, was paid 300 (found by this session's credit attacker)."""
    job = parse_job({"redundancy": 2, "timeout": 300,
                     "steps": [{"id": "a", "kind": "python", "params": {"code": "output = 42"}}]})
    sub = Submission(Config(seed=11, spot_rate=1.0, check_spread_s=1.0))
    pool = {"python": [Candidate(n, 0.5, f"10.0.{i}", 0) for i, n in enumerate(("s1", "s2", "s3"))]}
    paid, now, checks = [], 0.0, 0
    most = 0.1 * STEP_CPUS * DEFAULT_RATES.cpu_s + 1e-9  # every answer comes 0.1 s after it was asked
    for j in range(6):
        sub.submit(f"job{j}", job, j)
        for effects in (sub.tick(f"job{j}", pool, now), sub.on_alarm(now + 2.0)):
            for s in (e for e in effects if isinstance(e, Send)):
                at = (now if s.check is None else now + 2.0) + 0.1
                output = 42 if s.check is None else s.check.expected
                checks += s.check is not None
                paid += paid_entries(sub.on_result(s.node, s.job, s.step, True, digest(output), output,
                                                   {"cpu_s": CLAIM}, "", at))
        paid += paid_entries(sub.tick(f"job{j}", pool, now + 3.0))
        now += 10.0
    assert checks and paid
    assert all(amount <= most for _, _, amount, _ in paid), paid


def test_a_scoring_claim_longer_than_max_tokens_is_refused_before_any_verifier_is_paid_for_it():
    """4,000 token ids claimed for a step of max_tokens 16: each verifier was asked to score, and was
    paid for, all of them (20.16 in all, against 0.24 held to max_tokens)."""
    job = parse_job({"redundancy": 3, "steps": [{"id": "a", "kind": "llm", "compare": "score",
                                                 "params": {"prompt": "Say hi", "max_tokens": 16}}]})
    pool = {"llm:default": [Candidate(f"w{i}", 0.9, f"10.0.{i}") for i in range(6)]}
    run = JobRun("j", job, random.Random(2))
    (gen,) = run.advance(pool, 0.0)
    run.on_result("a", gen.node, True, digest(" hi"), " hi", {"tokens": 4000, "token_ids": [7] * 4000}, "", 1.0)
    assert "max_tokens" in run.steps["a"].tally.failures[gen.node]
    sent = run.advance(pool, 3.0)  # another generation, no scoring of the long claim
    assert sent and all(d.kind == "llm" and "token_ids" not in d.params for d in sent), sent


def test_a_worker_asked_again_after_a_lost_link_is_bounded_by_the_time_since_it_was_first_asked():
    """Found by this project's attack round on restarts: the submitter's laptop slept 40 s, its links to the
    workers were lost, and once awake it asked them again; each answered at once with the step it had run
    meanwhile (1.5 CPU-seconds), and was paid for 16 × the few milliseconds since the second ask: 9-37% of
    its work. The bound runs from the first ask."""
    job = parse_job({"redundancy": 3, "timeout": 300,
                     "steps": [{"id": "a", "kind": "python", "params": {"code": "output = 42"}}]})
    pool = {"python": [Candidate(f"w{i}", 0.5, f"10.0.{i}", 0) for i in range(3)]}
    run = JobRun("j", job, random.Random(1))
    first = run.advance(pool, 0.0)
    assert len(first) == 3
    for d in first:
        run.on_failure("a", d.node, "connection lost")  # the sleep: every link dropped
    assert run.advance(pool, 0.1) == []  # (each waits RETRY_AFTER_S, and may come back)
    again = run.advance(pool, 40.0)  # awake: each asked again
    assert len(again) >= 2 and {d.node for d in again} <= {d.node for d in first}  # (a quorum's worth)
    for d in again:
        run.on_result("a", d.node, True, digest(42), 42, {"cpu_s": 1.5}, "", now=40.02)
    run.advance(pool, 40.02)
    (o,) = run.take_outcomes()
    assert o.accepted and all(o.credit_of(d.node) == pytest.approx(1.5 * DEFAULT_RATES.cpu_s) for d in again), \
        [o.credit_of(d.node) for d in again]
    assert 16 * 0.02 * DEFAULT_RATES.cpu_s < 1.5 * DEFAULT_RATES.cpu_s  # (what the retry's own wait allowed)
