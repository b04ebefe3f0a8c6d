"""Verification by scoring with the real default model: an honest greedy output passes one teacher-forced
pass; the same output with one token changed, or cut from another prompt, fails at that token; a claim
steered through every near-tie the old rule let pass is refused."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from actors.messages import RunStep, StepDone
from actors.model_runner import ModelRunnerActor
from bench.llm_steer import OLD, steer
from mesh.core.dag import parse_job
from mesh.core.jobrun import JobRun
from mesh.core.policy import Candidate
from mesh.errors import StepFailed
from mesh.steps.llm import MARGIN, N_CTX, Model, off_top_budget
from mesh.steps.models import default_model
from mesh.wire.canonical import digest

from ..conftest import ROOT

pytestmark = [pytest.mark.llm, pytest.mark.mesh, pytest.mark.timeout(300)]  # (mesh: the real model, 11 s: out of the fast suite)


@pytest.fixture(scope="module")
def model() -> Model:
    """One thread, as every node of the tests runs its model: two of llama.cpp's threads wait for each other
    by spinning, which costs a CPU the suite's other worker needs (the thread counts are tested below)."""
    path, sha = default_model()
    return Model(path, sha, 1)


def test_honest_output_is_accepted_and_a_changed_token_is_caught(model):
    gen = model.generate("The history of Paris begins", 48)
    assert gen.token_ids and len(gen.token_ids) == gen.tokens
    honest = model.verify("The history of Paris begins", list(gen.token_ids))
    assert honest.ok and honest.first_bad == -1 and honest.tokens == gen.tokens
    tampered = list(gen.token_ids)
    tampered[10] = (tampered[10] + 1) % 1000 + 100
    verdict = model.verify("The history of Paris begins", tampered)
    assert not verdict.ok and verdict.first_bad == 10 and verdict.worst_gap > 5


def test_an_answer_to_another_prompt_is_rejected(model):
    other = model.generate("Water boils at a temperature of", 24)
    assert not model.verify("The history of Paris begins", list(other.token_ids)).ok


def test_nonsense_claims_are_rejected_not_crashing(model):
    assert not model.verify("Hello", []).ok
    assert not model.verify("Hello", [10**9]).ok
    assert not model.verify("Hello", [-1]).ok


_THREADS = """
import os, sys
from mesh.steps.llm import Model
from mesh.steps.models import default_model
path, sha = default_model()
model = Model(path, sha, 1)
before = len(os.listdir("/proc/self/task"))
gen = model.generate("The history of Paris begins", 16)
model.verify("The history of Paris begins " * 8, list(gen.token_ids))
print(before, len(os.listdir("/proc/self/task")))
"""


def test_a_model_given_one_thread_reads_prompts_and_scores_on_one():
    """llama.cpp reads a prompt and scores a claim in batches with threads of their own, all the CPUs by
    default: a node told `--threads 1` (or capped by `--max-cpu` to one CPU) ran those on every CPU, whose
    threads spin while they wait for each other. In a fresh interpreter (llama.cpp's thread pool lives as
    long as its process), a one-thread model's generation and scoring start no thread."""
    out = subprocess.run([sys.executable, "-c", _THREADS], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = map(int, out.stdout.split()[-2:])
    assert after == before, f"{after - before} more threads after generating and scoring on one"


# -- one context size; a claim that does not fit is no verdict ------------------------------------------------

PARIS = "The history of Paris begins with a small fishing village on an island in the river. "


@pytest.fixture(scope="module")
def small() -> Model:
    """The default model with a 256-token context (llama.cpp's smallest): claims that fill it without
    long (slow) prompts."""
    path, sha = default_model()
    return Model(path, sha, 1, n_ctx=256)


def test_generator_and_scorer_share_one_context(model, small):
    """The scorer once had 1024 tokens to the generator's 2048: an honest claim after a prompt of over
    1024 tokens was refused as if it disagreed."""
    assert model.llm.n_ctx() == model._scorer().n_ctx() == N_CTX
    assert small.llm.n_ctx() == small._scorer().n_ctx() == 256


def test_an_honest_claim_filling_the_context_is_accepted(small):
    prompt = PARIS * 13
    gen = small.generate(prompt, 256 - len(small._tokens(prompt)))
    assert gen.prompt_tokens + gen.tokens > 240  # most of the context
    verdict = small.verify(prompt, list(gen.token_ids))
    assert verdict.ok and verdict.first_bad == -1 and verdict.tokens == gen.tokens


def test_a_claim_that_does_not_fit_the_context_is_a_failure_not_a_rejection(small):
    ids = list(small.generate("Hello", 8).token_ids)
    with pytest.raises(StepFailed, match="exceed the context of 256"):
        small.verify(PARIS * 16, ids)


class _RunnerProbe(ModelRunnerActor):
    """The model runner's message handling, without an actor system: what it would send is kept."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.sent = model, []

    def send(self, target, message) -> None:
        self.sent.append(message)


class _TooLong:
    """A model worker (actors.model_runner.ModelWorker) whose scoring fails as a claim too long would."""

    sha256 = "0" * 64

    def call(self, op, params, on_progress=None):
        assert op == "score"
        raise StepFailed("cannot score: prompt (3000 tokens) + claim (8 tokens) exceed the context of 2048")


def test_the_model_runner_answers_an_unscorable_claim_with_a_failed_step():
    runner = _RunnerProbe(_TooLong())
    runner.receiveMsg_RunStep(RunStep("r1", "score", {"prompt": "p", "token_ids": [1, 2], "claim": "x"}, 10), None)
    (done,) = runner.sent
    assert isinstance(done, StepDone) and not done.ok and "exceed the context" in done.error
    assert done.output is None  # no {"accepted": ...}: not a verdict


def test_a_verifier_that_cannot_score_is_a_no_show_never_a_dissenter():
    job = parse_job({"redundancy": 3, "steps": [{"id": "a", "kind": "llm", "compare": "score",
                                                 "params": {"prompt": "Once", "max_tokens": 4}}]})
    workers = {"llm:default": [Candidate(f"w{i}", 0.9, f"10.0.{i}") for i in range(6)]}
    run = JobRun("j", job, random.Random(2))
    (gen,) = run.advance(workers, 0.0)
    run.on_result("a", gen.node, True, digest(" upon"), " upon", {"tokens": 1, "token_ids": [10]}, "")
    first, second = run.advance(workers, 0.0)
    assert run.on_result("a", first.node, False, "", None, {}, "cannot score: ... exceed the context of 2048")
    run.on_result("a", second.node, True, "", {"accepted": True, "first_bad": -1}, {"tokens": 1}, "")
    (third,) = run.advance(workers, 0.0)  # a majority of 3 already, but the failed seat is filled first
    assert third.kind == "score" and third.node not in (gen.node, first.node, second.node)
    run.on_result("a", third.node, True, "", {"accepted": True, "first_bad": -1}, {"tokens": 1}, "")
    assert run.advance(workers, 0.0) == []
    (o,) = run.take_outcomes()
    assert o.accepted and first.node in o.failed and first.node not in o.dissenting
    assert ("disagreed", first.node) not in o.verdicts()


# -- float differences are absorbed; steering through near-ties is not (issue 19) ---------------------------


@pytest.fixture(scope="module")
def two_threads() -> Model:
    path, sha = default_model()
    return Model(path, sha, 2)


# the second is the measured worst case: an honest digit 0.991 nats below the batched pass's top choice
HONEST = [("The history of Paris begins", 48), ("The speed of light in a vacuum is about", 64),
          ("Q: Who painted the Mona Lisa?\nA: Leonardo da Vinci.\nQ: What is the largest ocean on Earth?\nA:", 64)]


@pytest.mark.mesh  # slow: two models loaded, six claims generated and scored
@pytest.mark.timeout(240)
@pytest.mark.parametrize("generator_threads", [1, 2])
def test_an_honest_claim_is_accepted_whatever_the_thread_counts(model, two_threads, generator_threads):
    generator, scorer = (model, two_threads) if generator_threads == 1 else (two_threads, model)
    for prompt, n in HONEST:
        gen = generator.generate(prompt, n)
        v = scorer.verify(prompt, list(gen.token_ids), claim=gen.text)
        assert v.ok, (prompt, v)
        assert v.worst_gap <= MARGIN and v.off_top <= off_top_budget(v.tokens)


@pytest.mark.mesh  # slow: a 24-token steered generation, scored at every step
@pytest.mark.timeout(240)
def test_a_claim_steered_through_the_old_margin_is_refused(model):
    """The adversary takes, at every step, a token other than the verifier's top choice whenever one is
    within the old rule's margin (1 nat, any number of them): the old rule accepted the result, the
    off-top budget refuses it."""
    prompt = "The capital of France is"
    honest = list(model.generate(prompt, 24).token_ids)
    s = steer(model, prompt, None, 24, OLD)
    ids = list(s.token_ids)
    assert ids != honest and s.off_top > off_top_budget(24)
    old = model.verify(prompt, ids, margin=1.0, claim=s.text, max_off_top=len(ids))
    assert old.ok and old.off_top == s.off_top
    assert abs(old.worst_gap - s.planned_worst_gap) < 1e-3  # the adversary planned with the verifier's numbers
    new = model.verify(prompt, ids, claim=s.text)
    assert not new.ok and new.off_top == s.off_top and new.first_bad > 0


# -- sampled claims: the seeded draw (mesh.steps.sampling) replayed by scoring --------------------------------

STORY = "Write one sentence about a lighthouse keeper:"


def test_a_sampled_draw_is_the_same_for_one_seed_and_differs_for_another(model):
    a, b = model.generate(STORY, 24, seed=7, temperature=0.9), model.generate(STORY, 24, seed=7, temperature=0.9)
    other = model.generate(STORY, 24, seed=8, temperature=0.9)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert other.token_ids != a.token_ids


@pytest.mark.mesh  # seconds each: real generations scored
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_honest_sampled_claim_is_accepted_and_a_drawn_token_changed_is_caught(model, seed):
    gen = model.generate(STORY, 32, seed=seed, temperature=0.8)
    ids = list(gen.token_ids)
    honest = model.verify_sampled(STORY, ids, 0.8, seed, [], 32, claim=gen.text)
    assert honest.ok, honest
    swapped = ids[:10] + [(ids[10] + 1) % 1000 + 100] + ids[11:]  # a token no sampler would draw there
    verdict = model.verify_sampled(STORY, swapped, 0.8, seed, [], 32)
    assert not verdict.ok and verdict.first_bad == 10


@pytest.mark.mesh  # seconds each: real generations scored
def test_a_generator_that_ignores_the_seed_is_refused(model):
    """The likeliest continuation claimed as the seed's draw: its tokens differ from the draw too often."""
    greedy = list(model.generate("Once upon a time", 32).token_ids)
    refused = [not model.verify_sampled("Once upon a time", greedy, 0.8, seed, [], 32).ok for seed in (1, 2, 3)]
    assert all(refused), refused


@pytest.mark.mesh  # seconds each: real generations scored
def test_a_claim_drawn_with_another_seed_or_cut_short_or_run_past_its_stop_is_refused(model):
    gen = model.generate(STORY, 40, seed=5, temperature=0.8)
    ids = list(gen.token_ids)
    assert len(ids) == 40
    assert not model.verify_sampled(STORY, ids, 0.8, 6, [], 40).ok  # another seed
    assert not model.verify_sampled(STORY, ids[:20], 0.8, 5, [], 40).ok  # stopped where nothing ended it
    assert not model.verify_sampled(STORY, ids, 0.8, 5, [], 40, claim=gen.text + "!").ok  # not its text
    word = model._text(ids[:10]).split()[-1]
    # a stop string seen early, and the claim still runs on
    assert not model.verify_sampled(STORY, ids, 0.8, 5, [word], 40).ok


@pytest.mark.mesh  # seconds each: real generations scored
def test_a_sampled_claim_ending_at_its_stop_string_is_accepted(model):
    free = model.generate(STORY, 40, seed=5, temperature=0.8)
    stop = free.text.split()[3]
    gen = model.generate(STORY, 40, seed=5, temperature=0.8, stop=[stop])
    assert len(gen.token_ids) < 40 and stop not in gen.text
    assert model.verify_sampled(STORY, list(gen.token_ids), 0.8, 5, [stop], 40, claim=gen.text).ok
