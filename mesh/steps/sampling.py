"""The sampler of sampled llm steps (temperature above 0), built so a claim can be checked by scoring.

llama.cpp's own sampler draws one uniform number and walks the cumulative probabilities of the
candidates in the order of their logits: a verifier scoring the claim in one batched pass sees logits that
differ slightly from the generator's one-token-at-a-time pass, and those reorder near-ties and move the
edges between candidates, so replaying it refused 93 of 512 honest tokens (measured, gemma3-270m). This
sampler is the Gumbel-max trick instead: each candidate gets its own noise, derived from the job's seed,
the position and the token id alone, and the token with the highest `logit / temperature + noise` is
drawn. That is an exact draw from the softmax at that temperature, order plays no part, and a verifier
checks it like a greedy claim: the claimed token's perturbed score must be within the greedy margin (in
logits, so divided by the temperature) of the best, and few may trail it at all. Pure numpy: no model here.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

TOP_K = 40  # candidates: the k highest logits ...
MIN_P = 0.05  # ... that are at least this fraction as likely as the top one, at the step's temperature


@dataclass(frozen=True)
class Draw:
    ids: np.ndarray  # the candidates, best logit first
    scores: np.ndarray  # logit / temperature + noise, per candidate
    floor: float  # the lowest logit a candidate may have (the k-th logit, or the min-p cut)

    @property
    def token(self) -> int:
        return int(self.ids[int(np.argmax(self.scores))])


def noise(seed: int, position: int, token: int) -> float:
    """Standard Gumbel noise for one token at one position of one seeded draw: from SHA-256, so every
    node computes the same number whatever its build, CPU or numpy."""
    digest = hashlib.sha256(f"{seed}:{position}:{token}".encode()).digest()
    u = (int.from_bytes(digest[:8], "big") + 0.5) / 2.0 ** 64  # in (0, 1), never 0 or 1
    return -math.log(-math.log(u))


def draw(row: np.ndarray, temperature: float, seed: int, position: int) -> Draw:
    """The candidates at one position (`row`: the logits there) and their perturbed scores."""
    k = min(TOP_K, len(row))
    top = np.argpartition(row, -k)[-k:]
    top = top[np.argsort(-row[top], kind="stable")]
    cut = float(row[top[0]]) + temperature * math.log(MIN_P)  # p ≥ MIN_P·p_top at this temperature
    ids = top[row[top] >= cut]
    floor = max(cut, float(row[top[-1]]))
    scores = np.array([row[t] / temperature + noise(seed, position, int(t)) for t in ids])
    return Draw(ids, scores, floor)


def score_of(row: np.ndarray, temperature: float, seed: int, position: int, token: int) -> float:
    """A token's perturbed score at one position, whether or not it is a candidate."""
    return float(row[token]) / temperature + noise(seed, position, token)
