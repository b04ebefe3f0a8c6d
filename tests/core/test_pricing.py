"""Pricing: each agreeing worker is paid at its own rate card for the median of the agreeing replicas'
own measurements, never more than it claimed itself and never beyond the step's limits; a worker's
`ceiling` is the most a receipt may give it."""

from __future__ import annotations

import pytest

from mesh.core.pricing import (
    MAX_DEFAULT,
    MAX_PROMPT_TOKENS,
    MIN_CHARGE,
    PROMPT_SHARE,
    SLOT_GRACE_S,
    SLOT_SHARE,
    TOKEN_SLACK,
    cap,
    capped,
    ceiling,
    observed,
    pay,
)
from mesh.wire.identity import Identity
from mesh.wire.messages import PeerRecord, RateCard
from mesh.wire.records import DEFAULT_RATES, card_problem, check_record, make_record

CARD = DEFAULT_RATES


def test_the_median_claim_is_paid_never_the_largest():
    works = {"a": {"cpu_s": 0.5}, "b": {"cpu_s": 0.7}, "c": {"cpu_s": 999999.0}}
    paid, basis = pay("python", works, {}, cap("python", {}, 10))
    assert paid == {"a": 0.5, "b": 0.7, "c": 0.7}  # median 0.7; a claimed less and gets its own claim
    assert "median" in basis
    paid, _ = pay("python", {"a": {"cpu_s": 0.5}, "b": {"cpu_s": 900.0}}, {}, 10.0)
    assert paid == {"a": 0.5, "b": 0.5}  # of two, the lower: one inflated claim moves nothing


def test_the_step_limits_cap_the_work_paid_for():
    paid, _ = pay("python", {"a": {"cpu_s": 50.0}, "b": {"cpu_s": 60.0}}, {}, cap("python", {}, 10))
    assert paid == {"a": 10.0, "b": 10.0}  # a 10 s step cannot be worth 50 CPU-seconds
    paid, _ = pay("llm", {"a": {"tokens": 5000}, "b": {"tokens": 5000}}, {}, cap("llm", {"max_tokens": 16}, 60))
    assert paid == {"a": 0.16, "b": 0.16}  # 16 tokens asked for × 10 per thousand


def test_each_worker_is_paid_at_its_own_card_and_at_least_the_minimum():
    cheap, dear = RateCard(cpu_s=0.5), RateCard(cpu_s=3.0)
    paid, _ = pay("python", {"a": {"cpu_s": 2.0}, "b": {"cpu_s": 2.0}}, {"a": cheap, "b": dear}, 10.0)
    assert paid == {"a": 1.0, "b": 6.0}
    paid, _ = pay("python", {"a": {"cpu_s": 0.0001}}, {}, 10.0)
    assert paid == {"a": MIN_CHARGE}
    paid, _ = pay("scrape", {"a": {"cpu_s": 40.0}, "b": {}}, {"b": RateCard(scrape=2.0)}, 1.0)
    assert paid == {"a": 1.0, "b": 2.0}  # a page, whatever it took
    assert pay("python", {}, {}, 10.0) == ({}, "no agreeing worker")


@pytest.mark.parametrize("junk", [float("nan"), float("inf"), -5, True, "9", None, [1]])
def test_junk_figures_count_as_no_work(junk):
    paid, _ = pay("python", {"a": {"cpu_s": junk}, "b": {"cpu_s": 3.0}}, {}, 10.0)
    assert paid == {"a": MIN_CHARGE, "b": MIN_CHARGE}  # the lower median is a's 0
    assert ceiling("python", {"cpu_s": junk}, CARD) == MIN_CHARGE


def test_a_payer_pays_a_card_at_most_its_own_limit():
    greedy = RateCard(cpu_s=1e6, tokens_1k=1.0, scored_1k=1e6, scrape=0.5)
    assert capped(greedy, MAX_DEFAULT) == RateCard(cpu_s=4.0, tokens_1k=1.0, scored_1k=10.0, scrape=0.5)
    paid, _ = pay("python", {"g": {"cpu_s": 2.0}}, {"g": capped(greedy, MAX_DEFAULT)}, 10.0)
    assert paid == {"g": 8.0} and paid["g"] <= ceiling("python", {"cpu_s": 2.0}, greedy)


def test_a_worker_ceiling_is_its_own_work_at_its_own_rates():
    assert ceiling("python", {"cpu_s": 0.25}, CARD) == 0.25
    assert ceiling("llm", {"tokens": 64}, RateCard(tokens_1k=20.0)) == 1.28
    assert ceiling("score", {"tokens": 64}, CARD) == 0.16
    assert ceiling("scrape", {}, CARD) == 1.0
    # what pay gives a worker never exceeds its ceiling, whatever the others claim
    works = {"a": {"cpu_s": 0.3}, "b": {"cpu_s": 5.0}, "c": {"cpu_s": 9.0}}
    paid, _ = pay("python", works, {}, 10.0)
    assert all(paid[n] <= ceiling("python", works[n], CARD) for n in works)


def test_a_python_step_pays_rent_for_the_wall_time_it_held_its_slot():
    # slept 60 s on no CPU: a quarter of its wall time past the grace, not the minimum charge
    assert ceiling("python", {"cpu_s": 0.02, "seconds": 60.0}, CARD) == SLOT_SHARE * (60.0 - SLOT_GRACE_S)
    assert ceiling("python", {"cpu_s": 8.0, "seconds": 10.0}, CARD) == 8.0  # busy: its CPU, as before
    assert ceiling("python", {"cpu_s": 0.022, "seconds": 0.13}, CARD) == 0.022  # quick: its CPU, as before
    paid, _ = pay("python", {"a": {"cpu_s": 0.0, "seconds": 41.0}, "b": {"cpu_s": 0.0, "seconds": 10_000.0}},
                  {}, cap("python", {}, 60))
    assert paid == {"a": 10.0, "b": 10.0}  # the lower median; 10,000 s claimed moves nothing
    # its wall time is held to the payer's wait for the answer; other kinds' seconds are only shown
    assert observed("python", {"cpu_s": 0.0, "seconds": 600.0}, 1, 20.0)["seconds"] == 20.0
    assert ceiling("scrape", {"seconds": 600.0}, CARD) == 1.0
    for junk in (float("nan"), -1, "9", True):
        assert ceiling("python", {"cpu_s": 0.0, "seconds": junk}, CARD) == MIN_CHARGE


def test_a_prompt_read_is_paid_at_its_share_and_no_more_than_the_prompt_sent():
    """A prompt of 2,032 tokens with max_tokens 1 cost each worker 22-23 CPU-seconds and paid the minimum
    charge, 0.01 (this project's attack round on the llm path, 2026-12-06)."""
    prompt = "word " * 2032
    params = {"prompt": prompt, "max_tokens": 1}
    work = {"tokens": 1, "prompt_tokens": 2033, "token_ids": [5]}
    assert ceiling("llm", work, CARD) == pytest.approx((1 + PROMPT_SHARE * 2033) / 1000 * CARD.tokens_1k)
    assert ceiling("llm", work, CARD) > 10 * MIN_CHARGE
    paid, _ = pay("llm", {n: observed("llm", work, "x", 1.0, params) for n in "abc"}, {}, cap("llm", params, 60))
    assert set(paid.values()) == {round((1 + PROMPT_SHARE * 2033) / 1000 * CARD.tokens_1k, 6)}
    # a claim of more prompt tokens than the prompt's bytes is cut to them, and the step's cap holds it too
    liar = observed("llm", {**work, "prompt_tokens": 10**6}, "x", 1.0, {"prompt": "short", "max_tokens": 1})
    assert liar["prompt_tokens"] == len("short") + TOKEN_SLACK
    assert observed("llm", {**work, "prompt_tokens": 10**6}, "x", 1.0, params)["prompt_tokens"] == MAX_PROMPT_TOKENS
    assert observed("llm", {**work, "prompt_tokens": 10**6}, "x", 1.0, {})["prompt_tokens"] == 0  # no prompt
    # never more than the models' context holds
    from mesh.steps.llm import N_CTX

    assert MAX_PROMPT_TOKENS == N_CTX
    assert cap("llm", {"prompt": "x" * 10**6, "max_tokens": 1}, 60) == pytest.approx((1 + PROMPT_SHARE * N_CTX) / 1000)
    # a verifier reads the prompt too: the score cap counts it
    assert cap("score", {"token_ids": [1, 2], "prompt": "ab"}, 60) == pytest.approx((2 + PROMPT_SHARE * 10) / 1000)


def test_a_rate_card_is_signed_and_checked_in_the_record():
    me = Identity.generate()
    rec = make_record(me, "net", "127.0.0.1:4750", ["python"], [], True, 1_000, rates=RateCard(cpu_s=2.0))
    assert rec.rates.cpu_s == 2.0 and check_record(rec, "net", 2_000) == ""
    forged = PeerRecord(**{**rec.__dict__, "rates": RateCard(cpu_s=0.001)})
    assert check_record(forged, "net", 2_000) == "bad-record"  # the signature covers the card
    assert card_problem(RateCard(cpu_s=float("inf"))) and card_problem(RateCard(scrape=float("nan")))
    for bad in (0.0, -1.0, 1e7):  # (inf and nan cannot even be signed: canonical JSON has no such numbers)
        rec = make_record(me, "net", "127.0.0.1:4750", ["python"], [], True, 1_000, rates=RateCard(tokens_1k=bad))
        assert check_record(rec, "net", 2_000) == "bad-rates"
