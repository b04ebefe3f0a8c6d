"""Greedy llm steps verified by scoring, in the simulator: the claim model (honest, steered, wrong), the
steering adversary (issue 19 item 9), and how far it moves answers under `score` against `exact`."""

from __future__ import annotations

import random

import pytest

from simulations.adversaries import Colluding, RandomWrong, Request, Steering, Strategy
from simulations.run import simulate
from simulations.scenario import ScenarioError, load, parse_text
from simulations.scoring import accepts, greedy_text, is_steered, steered, token_ids

from ..conftest import run_cli
from .test_simulator import replay_every_job

pytestmark = pytest.mark.timeout(300)

LLM = {"prompt": "step 0", "max_tokens": 16}
PY = {"code": "step 0"}


def ask(job: str, params: dict) -> Request:
    return Request("sub", job, "s0", "llm" if "prompt" in params else "python", params)


def small(name: str, steps: int, **changes):
    s, text = load(name)
    return s.replace(steps=steps, **changes), text


def test_honest_scoring_accepts_the_honest_text_and_steered_ones_and_refuses_the_rest():
    truth, other = greedy_text(1), greedy_text(2)
    assert accepts(truth, truth) and accepts(truth, steered(truth, "ring"))
    assert not accepts(truth, other) and not accepts(truth, steered(other, "ring"))  # steered for another prompt
    assert not accepts(truth, ["wrong", 7]) and not accepts(truth, ["collude", "ring", 7]) and not accepts(truth, None)
    assert is_steered(steered(truth, "ring"), truth) and not is_steered(truth, truth)
    assert token_ids(truth) == token_ids(truth) != token_ids(steered(truth, "ring")) and len(token_ids(truth)) == 16


def test_steering_moves_llm_answers_only_at_its_rate_and_all_members_alike():
    a, b = (Steering(random.Random(i), 0.5, "ring") for i in (1, 2))
    truths = [greedy_text(i) for i in range(400)]
    answers = [a.respond(ask("j", LLM), t, 0.0) for t in truths]
    moved = [t for t, out in zip(truths, answers, strict=True) if out != t]
    assert 140 <= len(moved) <= 260 and a.steered == len(moved)  # about half
    assert all(is_steered(out, t) for t, out in zip(truths, answers, strict=True) if out != t)
    assert answers == [b.respond(ask("k", LLM), t, 9.0) for t in truths]  # one text per step for the group
    assert all(a.respond(ask("j", PY), t, 0.0) == t for t in truths)  # python steps: honest
    always = Steering(random.Random(3), 1.0, "ring")
    assert all(is_steered(always.respond(ask("j", LLM), t, 0.0), t) for t in truths[:20])


@pytest.mark.parametrize("strategy", [Strategy, Steering, RandomWrong, Colluding])
def test_verdicts_are_honest_for_every_builtin_strategy(strategy):
    """A steering verifier needs no collusion: its group's claims are inside the honest region already."""
    v, truth = strategy(random.Random(1), 1.0, "ring"), greedy_text(5)
    verdict = lambda claim: v.verify(Request("sub", "j", "s0", "score", {**LLM, "claim": claim}), truth, 0.0)  # noqa: E731
    assert verdict(truth) == {"accepted": True} and verdict(steered(truth, "other")) == {"accepted": True}
    assert verdict(["wrong", 1]) == {"accepted": False}


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_a_steering_run_gives_one_trace_per_seed():
    s, text = small("steering-20", 600)
    first, sim = simulate(s, text, "t", 7)
    assert simulate(s, text, "t", 7)[0]["trace_hash"] == first["trace_hash"]
    assert simulate(s, text, "t", 8)[0]["trace_hash"] != first["trace_hash"]
    assert first["llm_steps"] > 200 and sum(n.strategy.steered for n in sim.world.nodes.values()
                                            if isinstance(n.strategy, Steering)) > 0


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_steered_answers_pass_scoring_and_are_outvoted_when_every_replica_generates():
    """(a) under `score` the steering generator's wrong answers are accepted (no verifier refuses one);
    (b) the same network with the llm steps compared exactly catches nearly all of them."""
    s, text = small("steering-20", 1500)
    score, _ = simulate(s, text, "t", 1)
    exact, _ = simulate(s.replace(**{"jobs.llm_compare": "exact"}), text, "t", 1)
    assert score["llm_steps"] == exact["llm_steps"] > 500  # the same steps, llm ones alike
    assert score["llm_wrong_per_1000"] >= 50, score  # about 0.2 of generators × rate 0.5
    assert score["llm_wrong_per_1000"] > 5 * exact["llm_wrong_per_1000"], (score, exact)
    assert score["wrong_accepted"] == score["llm_wrong_accepted"]  # python steps: answered right
    assert score["score_fallbacks"] == 0 and score["caught"] == 0  # nothing notices a steered claim
    assert score["llm_generations_per_step"] < 1.1 and score["llm_scorings_per_step"] >= 1.9
    # what scoring saves (1.5 generations' time against 2.4 before testimony was shared; exact comparison
    # replicates less since trusted workers' records travel: 1.51 against 2.38 at this size and seed)
    assert score["llm_cost_per_step"] < exact["llm_cost_per_step"] / 1.4
    assert exact["reputation_auc"] > 0.9 > score["reputation_auc"]  # only disagreement exposes them


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_honest_claims_are_never_refused_and_random_wrong_claims_always_are():
    honest, _ = simulate(*small("baseline", 800, **{"jobs.llm_share": 0.5, "jobs.llm_compare": "score"}), "t", 2)
    assert honest["llm_steps"] > 300 and honest["wrong_accepted"] == 0 and honest["score_fallbacks"] == 0
    assert honest["accepted"] == 800
    sab, _ = simulate(*small("malicious-20", 1000, **{"jobs.llm_share": 0.5, "jobs.llm_compare": "score"}), "t", 2)
    # (17 fallbacks at this seed: saboteurs that others report wrong half the time are placed less)
    assert sab["score_fallbacks"] > 10 and sab["llm_wrong_accepted"] == 0, sab


@pytest.mark.parametrize("setting, message", [
    ("llm_share = 1.5", "llm_share in [0, 1]"), ("llm_compare = 'similar:0.5'", "llm_compare 'exact' or 'score'")])
def test_bad_llm_settings_are_one_clear_error(setting, message):
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_text(f"name = 'x'\nsteps = 10\n[jobs]\n{setting}", "bad.toml")


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_the_cli_shows_the_llm_figures_and_takes_the_compare_as_a_bare_word():
    res = run_cli("simulate", "steering-20", "--steps", "300", "--set", "jobs.llm_compare=exact", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "llm_wrong_per_1000" in res.stdout and "llm_scorings_per_step    0.0" in res.stdout
    plain = run_cli("simulate", "baseline", "--steps", "100", "--quiet")
    assert plain.returncode == 0 and "llm_steps" not in plain.stdout


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_core_logs_of_scored_jobs_replay_to_the_same_decisions():
    s, _ = small("steering-20", 300)
    scored = sum(any(r.role == "verify" for st in sj.run.steps.values() for r in st.replicas.values())
                 for sj in replay_every_job(s))
    assert scored > 50
