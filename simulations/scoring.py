"""Verification by scoring (`"compare": "score"`), modelled. The simulator runs no model, so a greedy llm
step's output and the claims made for it are abstract, and a scoring verifier's verdict is whether a
claim lies in the real rule's acceptance region (mesh.steps.llm: every token within MARGIN of the
verifier's top choice, at most off_top_budget(n) of them off it):

- the honest greedy text: inside (every honest generator on one build makes the same text);
- a *steered* claim: the honest text with near-ties swapped, within the margin and the off-top budget.
  Inside: bench/llm_steer.py moved the answer in 10/10 factual prompts on the real model and every
  scoring verifier accepted it. Yet it is another text, so under exact comparison it disagrees with
  every honest generator;
- anything else (a random or colluding wrong answer): its tokens are far from the top: outside.

A steered claim carries the honest text it was steered from: the stand-in for "each token is a near-tie
of the verifier's own top choice at that position", which holds only for the prompt it was steered on."""

from __future__ import annotations

from typing import Any

from mesh.wire.canonical import digest

TOKENS = 16  # tokens of a simulated llm output: what generating and scoring it are paid for
SCORE_COST = 0.25  # a verifier's time against a generator's (bench/llm_verify: about a quarter)
STEERED = "steered"


def greedy_text(bits: int) -> str:
    """The honest greedy output of a simulated llm step (its truth)."""
    return f"greedy {bits:010x}"


def steered(truth: Any, group: str) -> list:
    """The claim a steering generator of `group` makes instead of `truth`. The same for every member:
    the steering search is deterministic given the model, its build and the prompt."""
    return [STEERED, group, truth]


def is_steered(claim: Any, truth: Any) -> bool:
    """Whether `claim` was steered from the honest output `truth` (of this very step)."""
    return isinstance(claim, list) and len(claim) == 3 and claim[0] == STEERED and claim[2] == truth


def accepts(truth: Any, claim: Any) -> bool:
    """An honest scoring verifier's verdict on `claim`, `truth` being the step's honest greedy output."""
    return claim == truth or is_steered(claim, truth)


def token_ids(output: Any) -> list[int]:
    """The token ids a generator hands its verifiers: TOKENS ids from the output's digest (a stand-in;
    a simulated verifier judges the claim itself)."""
    h = digest(output)
    return [int(h[i:i + 4], 16) for i in range(0, 4 * TOKENS, 4)]
