"""`mesh submit`'s cost estimate: the job's upper bound (mesh.core.estimate) at the rate cards of the
workers the node knows now, read from its status, each capped by what the node pays at most."""

from __future__ import annotations

import dataclasses
import math

from mesh.core.dag import Job
from mesh.core.estimate import Estimate, estimate, worst_card
from mesh.errors import UserError
from mesh.wire.messages import RateCard

OFFERS = ("python", "llm", "scrape")  # what a peer's `kinds` name: llm and ask-model both need "llm"


def _card(raw: object, most: RateCard) -> RateCard:
    """A card from status JSON; anything that is not a finite number of 0 or more counts as the most."""
    raw = raw if isinstance(raw, dict) else {}

    def rate(name: str) -> float:
        value = raw.get(name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        return float(value) if ok else getattr(most, name)

    return RateCard(**{f.name: rate(f.name) for f in dataclasses.fields(RateCard)})


def job_estimate(status: dict, job: Job) -> Estimate:
    """The most `job` may cost, from the node's `GET /status`: its peers' cards and its own --max-rate."""
    most = _card(status.get("max_rates"), RateCard(**{f.name: math.inf for f in dataclasses.fields(RateCard)}))
    peers = [p for p in status.get("peers", []) if isinstance(p, dict)]
    cards = {offer: worst_card([_card(p.get("rates"), most) for p in peers
                            if isinstance(p.get("kinds"), list) and offer in p["kinds"]], most)
             for offer in OFFERS}
    return estimate(job, cards)


def show(amount: float) -> str:
    """Credits rounded up to the cent, for an upper bound shown to a person."""
    return f"{math.ceil(amount * 100 - 1e-6) / 100:.2f}".rstrip("0").rstrip(".")


def check_max_cost(est: Estimate, max_cost: float | None) -> None:
    """UserError, naming the dearest steps, when the estimate is above --max-cost."""
    if max_cost is None:
        return
    if not 0 <= max_cost < math.inf:
        raise UserError("--max-cost is a number of credits, 0 or more")
    if est.total <= max_cost:
        return
    dearest = sorted(est.steps, key=lambda s: -s.credits)[:3]
    parts = ", ".join(f"{s.step} ({s.kind}) {show(s.credits)}: {s.replicas} replicas × {s.quantity:g} "
                      f"{s.unit} × {s.rate:g}" for s in dearest)
    raise UserError(f"estimated cost of at most {show(est.total)} credits is above --max-cost {max_cost:g}; "
                    f"nothing submitted (dearest steps: {parts}; python's bound is the job's timeout in "
                    "CPU-seconds, an llm step's its max_tokens)")
