"""The cost bound `mesh submit` prints: never below what the payment rules can pay, at hostile cards too."""

from __future__ import annotations

import pytest

from mesh.cli.cost import job_estimate, show
from mesh.core.dag import parse_job
from mesh.core.estimate import estimate, worst_card
from mesh.core.pricing import MAX_DEFAULT, MAX_PROMPT_TOKENS, PROMPT_SHARE, TOKEN_SLACK, cap, pay
from mesh.wire.messages import RateCard

pytestmark = pytest.mark.timeout(30)

JOB = {"timeout": 20, "redundancy": 3, "steps": [
    {"id": "p", "kind": "python", "params": {"code": "output = 1"}},
    {"id": "l", "kind": "llm", "params": {"prompt": "x", "max_tokens": 400}},
    {"id": "s", "kind": "scrape", "params": {"url": "https://example.org"}},
    {"id": "v", "kind": "llm", "compare": "score", "params": {"prompt": "x"}}]}


def test_each_kind_is_bounded_by_its_limits_times_the_replica_limit():
    job = parse_job(JOB)
    est = estimate(job, {k: RateCard() for k in ("python", "llm", "scrape")})
    by = {s.step: s for s in est.steps}
    assert by["p"].credits == 20 * 1.0 * 6  # the timeout in CPU-seconds at 1 a CPU-second, 2 × 3 replicas
    prompt = PROMPT_SHARE * (1 + TOKEN_SLACK)  # a prompt of one byte, read: its tokens' share
    assert by["l"].credits == pytest.approx((400 + prompt) / 1000 * 10 * 6)  # 400 tokens at 10 a thousand
    assert by["s"].credits == 1 * 1.0 * 6  # one page
    assert by["v"].credits == pytest.approx((64 + prompt) / 1000 * 10 * 6)  # default max_tokens 64
    assert est.total == pytest.approx(120 + 6 + (464 + 2 * prompt) / 1000 * 60)


def test_the_bound_is_never_below_a_payment_the_rules_allow():
    job = parse_job(JOB)
    cards = {k: RateCard(cpu_s=2, tokens_1k=30, scrape=3) for k in ("python", "llm", "scrape")}
    est = {s.step: s for s in estimate(job, cards).steps}
    for step in job.steps:
        limit = cap(step.kind, step.params, job.timeout)
        work = {"cpu_s": 1e6, "tokens": 1e6}  # workers claiming far beyond the limits
        paid, _ = pay(step.kind, {n: work for n in "abcdef"}, {n: cards["python"] for n in "abcdef"}, limit)
        assert sum(paid.values()) <= est[step.id].credits + 1e-9, step.id


def test_a_prompt_that_takes_earlier_outputs_is_bounded_by_the_context():
    """Its rendered prompt may be any length the context holds: the bound counts the context, so no
    rendering of it can be paid past the estimate."""
    job = parse_job({"timeout": 20, "redundancy": 1, "steps": [
        {"id": "a", "kind": "python", "params": {"code": "output = 'x' * 100000"}},
        {"id": "b", "kind": "llm", "after": ["a"], "params": {"prompt": "{a.output}", "max_tokens": 4}}]})
    b = {s.step: s for s in estimate(job, {k: RateCard() for k in ("python", "llm")}).steps}["b"]
    assert b.quantity == pytest.approx((4 + PROMPT_SHARE * MAX_PROMPT_TOKENS) / 1000)
    rendered = {"prompt": "x" * 100000, "max_tokens": 4}
    assert cap("llm", rendered, 20) <= b.quantity


def test_hostile_cards_are_priced_at_the_payers_limit():
    greedy = RateCard(cpu_s=1e9, tokens_1k=1e9, scored_1k=1e9, scrape=1e9)
    assert worst_card([greedy, RateCard()], MAX_DEFAULT) == MAX_DEFAULT
    assert worst_card([], MAX_DEFAULT) == MAX_DEFAULT  # no worker known: the most this node would pay
    status = {"max_rates": vars(MAX_DEFAULT), "peers": [
        {"kinds": ["python"], "rates": {"cpu_s": "lots", "tokens_1k": float("nan")}},
        {"kinds": "python", "rates": None}, "junk"]}
    job = parse_job({"timeout": 5, "steps": [{"id": "p", "kind": "python", "params": {"code": "output = 1"}}]})
    assert job_estimate(status, job).total == 5 * 4.0 * 6  # junk rates count as the most


def test_an_upper_bound_is_shown_rounded_up():
    assert show(40) == "40" and show(0.101) == "0.11" and show(3.84) == "3.84" and show(1806.96) == "1806.96"
