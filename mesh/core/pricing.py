"""What a step is worth. Each agreeing worker is paid at the rate card it signed into its peer record,
for the work the agreeing replicas measured themselves (outside the sandbox): the median of their
figures, so one replica that claims much moves nothing, never more than that worker claimed itself, and
never beyond the step's limits. A worker checks the same bound on each receipt (`ceiling`): a payer cannot
book it more than its own measured work at its own rates. Shared by the node and the simulator."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from mesh.wire.messages import RateCard
from mesh.wire.records import DEFAULT_RATES

MIN_CHARGE = 0.01  # credits: the least an answered step costs
MAX_QUANTITY = 1e6
TOLERANCE = 1e-6  # amounts are rounded to 6 decimals
MAX_DEFAULT = RateCard(cpu_s=4.0, tokens_1k=40.0, scored_1k=10.0, scrape=4.0)  # what a payer pays at most

# kind -> (the rate card's field, the unit in words)
_UNITS = {"python": ("cpu_s", "CPU-seconds"), "llm": ("tokens_1k", "thousand tokens generated"),
          "ask-model": ("tokens_1k", "thousand tokens generated"), "score": ("scored_1k", "thousand tokens scored"),
          "scrape": ("scrape", "pages")}


def unit(kind: str) -> tuple[str, str]:
    """(the rate card's field, the unit in words) a step of `kind` is paid by."""
    return _UNITS.get(kind, _UNITS["python"])


def capped(card: RateCard, most: RateCard) -> RateCard:
    """A worker's card as this payer pays it: each rate at most the payer's own limit (a stranger's
    record may ask a million a CPU-second; it is priced at the limit, which its ceiling still allows)."""
    return RateCard(**{f.name: min(getattr(card, f.name), getattr(most, f.name)) for f in dataclasses.fields(card)})


def quantity(kind: str, work: Mapping[str, object]) -> float:
    """The billable amount of work a replica measured, in its kind's unit (0 when missing or junk)."""
    if kind == "scrape":
        return 1.0
    if kind == "python":
        return _num(work.get("cpu_s"))
    return _num(work.get("tokens")) / 1000


def cap(kind: str, params: Mapping[str, object] | None, timeout: float) -> float:
    """The most work the step's limits allow: CPU-seconds within its time limit, the tokens it asked for
    (or, scoring, the tokens of the claim), one page."""
    params = params or {}
    if kind == "python":
        return max(0.0, float(timeout))
    if kind == "score":
        ids = params.get("token_ids")
        return len(ids) / 1000 if isinstance(ids, list) else 0.0
    if kind in ("llm", "ask-model"):
        return _num(params.get("max_tokens", 64)) / 1000
    return 1.0


def pay(kind: str, works: Mapping[str, Mapping[str, object]], cards: Mapping[str, RateCard], limit: float
        ) -> tuple[dict[str, float], str]:
    """Credits for each agreeing worker (node -> amount) and, in words, how they were measured."""
    if not works:
        return {}, "no agreeing worker"
    field, words = unit(kind)
    claims = {node: min(quantity(kind, w), limit) for node, w in works.items()}
    ordered = sorted(claims.values())
    median = ordered[(len(ordered) - 1) // 2]  # the lower median: of two, the smaller
    out = {node: round(max(MIN_CHARGE, min(median, claims[node]) * getattr(cards.get(node, DEFAULT_RATES), field)), 6)
           for node in works}
    basis = (f"{median:.6g} {words} (the median of {len(works)} agreeing workers' own figures, at most "
             f"{limit:.6g} by the step's limits, and for each at most its own) at each worker's {field} rate, "
             f"at least {MIN_CHARGE}")
    return out, basis


def ceiling(kind: str, work: Mapping[str, object], card: RateCard) -> float:
    """The most a payer may book this worker for a step it measured `work` for, at its own card."""
    field, _ = unit(kind)
    return round(max(MIN_CHARGE, quantity(kind, work) * getattr(card, field)), 6)


def _num(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(min(value, MAX_QUANTITY))
    return 0.0
