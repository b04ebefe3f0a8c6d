"""Pure policies shared by the node and the simulator: placement, reputation and credit. No I/O, no
clock, randomness only from the RNG passed in."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

MIN_WEIGHT = 0.02  # a peer at the bottom still gets the odd chance to redeem itself


@dataclass(frozen=True)
class Candidate:
    node: str
    reputation: float  # 0..1
    prefix: str  # network prefix (e.g. /24 of its address) for sybil spreading


def reputation(agreed: int, disagreed: int, no_show: int, penalty: int = 0) -> float:
    """Beta reputation with a neutral prior: (a + 1) / (a + d + n + p + 2); a new peer scores 0.5.
    Disagreements, no-shows and gateway penalties (abuse of the peer link) all count against it."""
    return (agreed + 1) / (agreed + disagreed + no_show + penalty + 2)


def place(candidates: list[Candidate], k: int, rng: random.Random) -> list[str]:
    """Pick up to k distinct nodes, weighted by reputation (Efraimidis–Spirakis keys), taking one per
    network prefix first and filling from the rest only when prefixes run out."""
    keyed = sorted(
        ((rng.random() ** (1.0 / max(c.reputation, MIN_WEIGHT)), c) for c in sorted(candidates, key=lambda c: c.node)),
        key=lambda kc: -kc[0],
    )
    chosen: list[str] = []
    prefixes: set[str] = set()
    for _, c in keyed:
        if len(chosen) < k and c.prefix not in prefixes and c.node not in chosen:
            chosen.append(c.node)
            prefixes.add(c.prefix)
    for _, c in keyed:
        if len(chosen) < k and c.node not in chosen:
            chosen.append(c.node)
    return chosen


def step_credit(kind: str, works: list[dict]) -> float:
    """Credit granted to each agreeing worker: measured work, the lowest claim among agreeing workers
    (as BOINC grants), so no worker is paid for what it alone claims. llm: 0.01 per token generated;
    python: CPU-seconds, at least 0.01."""
    if not works:
        return 0.0
    if kind == "llm":
        tokens = min(_num(w.get("tokens")) for w in works)
        return round(max(0.01, 0.01 * tokens), 6)
    cpu = min(_num(w.get("cpu_s")) for w in works)
    return round(max(0.01, cpu), 6)


def _num(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(min(value, 1e6))
    return 0.0
