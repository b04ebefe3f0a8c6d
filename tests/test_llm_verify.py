"""Verification by scoring with the real default model: an honest greedy output passes one teacher-forced
pass; the same output with one token changed, or cut from another prompt, fails at that token."""

from __future__ import annotations

import pytest

from mesh.steps.llm import Model
from mesh.steps.models import default_model

pytestmark = [pytest.mark.llm, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def model() -> Model:
    path, sha = default_model()
    return Model(path, sha, 2)


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
