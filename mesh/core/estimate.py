"""What a job may cost at most, before it is submitted (`mesh submit` prints it and `--max-cost` refuses
above it). The bound follows the payment rules of mesh.core.pricing: each agreeing replica is paid at
most the step's `cap` (its limits) at its worker's card, capped by the payer's own limit, at least
MIN_CHARGE; a step has at most `replica_limit` replicas, escalations included. Sans-I/O: the caller
hands in the cards of the workers it knows."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mesh.core.dag import MODEL_KINDS, REF, Job
from mesh.core.pricing import MAX_PROMPT_TOKENS, MIN_CHARGE, cap, capped, unit
from mesh.wire.messages import RateCard


@dataclass(frozen=True)
class StepBound:
    step: str
    kind: str
    quantity: float  # the most work one replica may be paid for, in its kind's unit
    unit: str
    rate: float  # the highest rate among the workers that may run it (capped by the payer's limit)
    replicas: int  # the most replicas that may be paid
    credits: float  # quantity × rate (at least MIN_CHARGE) × replicas


@dataclass(frozen=True)
class Estimate:
    total: float
    steps: tuple[StepBound, ...]

    def to_json(self) -> dict:
        return {"total": self.total, "steps": {s.step: {"kind": s.kind, "at_most": s.credits, "replicas": s.replicas,
                                                        "quantity": s.quantity, "unit": s.unit, "rate": s.rate}
                                               for s in self.steps}}


def worst_card(cards: Iterable[RateCard], most: RateCard) -> RateCard:
    """The highest rate of each field among `cards` as this payer pays them (each capped by `most`);
    `most` itself when no card is known, since the payer never pays more than that."""
    known = [capped(c, most) for c in cards]
    if not known:
        return most
    return RateCard(**{f.name: max(getattr(c, f.name) for c in known) for f in dataclasses.fields(most)})


def estimate(job: Job, cards: Mapping[str, RateCard]) -> Estimate:
    """The most the job's steps may be paid in all; `cards`: for each capability ('python', 'llm',
    'scrape'), the worst card (`worst_card`) among the workers that offer it."""
    bounds = []
    for s in job.steps:
        offer = "llm" if s.kind in MODEL_KINDS else s.kind
        card = cards[offer]
        field, words = unit(s.kind)
        params = s.params
        if isinstance(params.get("prompt"), str) and REF.search(params["prompt"]):  # earlier outputs go in: any size
            params = {**params, "prompt": " " * MAX_PROMPT_TOKENS}
        quantity = cap(s.kind, params, job.timeout)
        per = max(MIN_CHARGE, quantity * getattr(card, field))
        if s.kind in MODEL_KINDS and s.compare == "score":  # its verifiers are paid the scoring rate instead
            per = max(per, quantity * card.scored_1k)
        credits = _up(per * job.replica_limit)
        bounds.append(StepBound(s.id, s.kind, quantity, words, getattr(card, field), job.replica_limit, credits))
    return Estimate(_up(sum(b.credits for b in bounds)), tuple(bounds))


def _up(amount: float) -> float:
    """Rounded up to 6 decimals, as payments are rounded: a bound must not round below a payment."""
    return math.ceil(round(amount * 1e6, 3)) / 1e6
