"""Pure policies shared by the node and the simulator: placement and reputation (credit: pricing.py). No I/O, no
clock, randomness only from the RNG passed in."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.wire.messages import RateCard

MIN_WEIGHT = 0.02  # a peer at the bottom still gets the odd chance to redeem itself
START_WEIGHT = 0.2  # a new id's placement weight, as a share of what its reputation alone would give it
EARN_RESULTS = 10.0  # verified results (decayed, own and weighed testimony) that earn an id its full weight


@dataclass(frozen=True)
class Candidate:
    node: str
    reputation: float  # 0..1
    prefix: str  # network prefix (e.g. /24 of its address) for sybil spreading
    streak: int = 0  # consecutive validated (replicated and agreeing) results: adaptive replication
    group: str = ""  # reputation group (see reputation_group); '' → its prefix
    rates: RateCard = RateCard()  # what it charges (its signed record's rate card)
    verified: float | None = None  # its verified results as this node counts them (None: not counted, full weight)
    per_peer: int = 4  # requests it takes from one requester at once (its record's offer, --max-steps)
    # holding a request of this submitter's: sent and not yet answered (one past its deadline that nobody
    # answered counts until the worker is next sent one); set by the core (Submission._trusted), not the driver
    engaged: bool = False

    @property
    def cohort(self) -> str:
        return self.group or self.prefix

    @property
    def weight(self) -> float:
        """Placement weight: reputation, scaled from START_WEIGHT for a new id up to 1 as verified results
        reach EARN_RESULTS — ids cost nothing to make, so a thousand fresh ones must not draw a thousand
        shares of the work."""
        earned = 1.0 if self.verified is None else min(1.0, self.verified / EARN_RESULTS)
        return max(self.reputation * (START_WEIGHT + (1.0 - START_WEIGHT) * earned), MIN_WEIGHT)


def candidate_from(data: dict) -> Candidate:
    """A Candidate from its logged form (dataclasses.asdict, for replays): the rate card comes back typed."""
    rates = data.get("rates")
    return Candidate(**({**data, "rates": RateCard(**rates)} if isinstance(rates, dict) else data))


BANDS = ((0.8, "proven"), (0.6, "good"), (0.45, "new"), (0.0, "doubtful"))


def reputation_group(prefix: str, reputation: float) -> str:
    """Peers that could be one operator's: same network prefix and the same reputation band. Sybils
    and colluders that joined together climb (or fall) together, so when collusion is suspected the
    escalation replicas come from groups none of the step's answerers is in."""
    band = next(name for floor, name in BANDS if reputation >= floor)
    return f"{prefix}|{band}"


HALF_LIFE_MS = 7 * 24 * 3600_000  # what a peer did a week ago weighs half as much as what it did today
GOOD = ("agreed",)
BAD = ("disagreed", "no_show", "penalty", "spot_failed")
WEIGHT = {"spot_failed": 5.0}  # a wrong answer to a known question is damning
MISBEHAVIOUR = ("disagreed", "penalty", "spot_failed")  # bad events that are not just absence (no_show)


def reputation(agreed: float, disagreed: float, no_show: float, penalty: float = 0) -> float:
    """Beta reputation with a neutral prior: (a + 1) / (a + d + n + p + 2); a new peer scores 0.5.
    Disagreements, no-shows and gateway penalties (abuse of the peer link) all count against it."""
    return (agreed + 1) / (agreed + disagreed + no_show + penalty + 2)


def next_streak(streak: int, kind: str, why: StepEvidence | None, peer: str = "") -> int:
    """A worker's run of validated results after one more reputation entry: +1 for agreeing in a step at
    least two agreed on, back to 0 on a disagreement, penalty or failed spot check, or on agreeing while
    claiming far more work than the others (`peer` in why.overclaimed: a run earns steps run alone, where
    nobody measures against its claim). A no-show leaves it
    as it was: it is absence, not a wrong answer (its reputation still pays), and an honest worker
    queued past a deadline by a busy mesh lost a long run to it, which only audits at 1/run rebuild.
    `why` is the step's evidence (None for entries without one, which never lengthen a run)."""
    if kind == "agreed":
        if why is not None and peer and peer in why.overclaimed:
            return 0
        return streak + (why is not None and len(why.agreeing) >= 2)
    return 0 if kind in MISBEHAVIOUR else streak


@dataclass(frozen=True)
class StepEvidence:
    """Why a settled step's ledger entries say what they say (stored under `why` in each entry's detail,
    read back by `mesh ledger explain` and by next_streak). The JSON keys are written and read here only,
    so a renamed field cannot silently turn adaptive replication off."""

    rule: str  # the quorum rule's spec
    needed: int  # agreeing answers the rule needs at this redundancy
    redundancy: int
    accepted: str  # digest of the accepted answer ('' when the step failed)
    agreeing: tuple[str, ...]
    answers: Mapping[str, str]  # node → digest, for everyone who agreed or dissented
    failed: Mapping[str, str]  # node → why it gave no usable answer
    credit_basis: str  # how the credit was measured, in words
    reason: str  # why the step failed ('' when accepted)
    overclaimed: tuple[str, ...] = ()  # agreeing workers that claimed far more work than the others

    def to_json(self) -> dict[str, Any]:
        out = {"rule": self.rule, "needed": self.needed, "redundancy": self.redundancy, "accepted": self.accepted,
               "agreeing": list(self.agreeing), "answers": dict(self.answers), "failed": dict(self.failed),
               "credit_basis": self.credit_basis, "reason": self.reason}
        if self.overclaimed:  # (only then: every other row's bytes stay as they were)
            out["overclaimed"] = list(self.overclaimed)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StepEvidence:
        """Lenient about what a streak does not depend on (old rows, hand-made ledgers); `agreeing` must be
        there: without it the row is not a step's evidence at all."""
        return cls(str(d.get("rule", "")), int(d.get("needed") or 0), int(d.get("redundancy") or 0),
                   str(d.get("accepted", "")), tuple(str(n) for n in d["agreeing"]), dict(d.get("answers") or {}),
                   dict(d.get("failed") or {}), str(d.get("credit_basis", "")), str(d.get("reason", "")),
                   tuple(str(n) for n in (d.get("overclaimed") if isinstance(d.get("overclaimed"), list) else ())))

    @classmethod
    def in_detail(cls, detail: Mapping[str, Any] | None) -> StepEvidence | None:
        """The step evidence in a ledger entry's detail, typed (as the submitter hands it to the ledger) or
        as stored JSON; None when the entry has none (a recheck's or spot check's verdict, a penalty)."""
        why = (detail or {}).get("why")
        if isinstance(why, StepEvidence):
            return why
        if isinstance(why, Mapping) and isinstance(why.get("agreeing"), list):
            return cls.from_json(why)
        return None


@dataclass(frozen=True)
class RecheckEvidence:
    """Why a worker that vouched for an accepted answer is recorded as disagreeing: a recheck overturned it."""

    recheck: str  # the recheck's job id
    accepted: str  # digest of the answer that replaced the vouched-for one

    def to_json(self) -> dict[str, Any]:
        return {"recheck": self.recheck, "accepted": self.accepted}


@dataclass
class Evidence:
    """Time-decayed beta evidence about one peer: each event loses half its weight per half-life, so
    a peer that behaved long ago and cheats now (or the reverse) is judged mostly on the recent past."""

    good: float = 0.0
    bad: float = 0.0
    stamp: int = 0  # ms of the newest event folded in

    def _decay_to(self, ts_ms: int, half_life_ms: int) -> tuple[float, float]:
        f = 0.5 ** (max(0, ts_ms - self.stamp) / half_life_ms) if self.stamp else 1.0
        return self.good * f, self.bad * f

    def add(self, kind: str, ts_ms: int, half_life_ms: int = HALF_LIFE_MS) -> None:
        if kind not in GOOD and kind not in BAD:
            return
        if ts_ms < self.stamp:  # late event: weigh it as of its own time
            w = 0.5 ** ((self.stamp - ts_ms) / half_life_ms)
        else:
            self.good, self.bad = self._decay_to(ts_ms, half_life_ms)
            self.stamp, w = ts_ms, 1.0
        if kind in GOOD:
            self.good += w
        else:
            self.bad += w * WEIGHT.get(kind, 1.0)

    def score(self, now_ms: int, half_life_ms: int = HALF_LIFE_MS) -> float:
        good, bad = self._decay_to(now_ms, half_life_ms)
        return (good + 1) / (good + bad + 2)

    def decayed(self, now_ms: int, half_life_ms: int = HALF_LIFE_MS) -> tuple[float, float]:
        """(good, bad) as of `now_ms` (what a testimony reports, mesh.core.trust)."""
        return self._decay_to(now_ms, half_life_ms)


@dataclass
class Reputations:
    """What a submitter knows of each peer, for placement: decayed evidence and runs of validated
    results. Folded from the reputation entries its ledger really wrote — by the node (Node.record) and
    by the simulator (SimLedger) alike, so both judge peers by one rule."""

    evidence: dict[str, Evidence] = field(default_factory=dict)
    streaks: dict[str, int] = field(default_factory=dict)
    since: dict[str, int] = field(default_factory=dict)  # ms the current run of validated results began
    last_bad: dict[str, int] = field(default_factory=dict)  # ms of the newest wrong answer or penalty

    def fold(self, kind: str, peer: str, ts_ms: int, why: StepEvidence | None) -> None:
        self.evidence.setdefault(peer, Evidence()).add(kind, ts_ms)
        before = self.streaks.get(peer, 0)
        after = self.streaks[peer] = next_streak(before, kind, why, peer)
        if kind in MISBEHAVIOUR:
            self.last_bad[peer] = max(ts_ms, self.last_bad.get(peer, 0))
        if not after:
            self.since.pop(peer, None)
        elif not before:
            self.since[peer] = ts_ms

    def score(self, peer: str, now_ms: int) -> float:
        """0..1, neutral 0.5 for a peer never seen."""
        ev = self.evidence.get(peer)
        return ev.score(now_ms) if ev else 0.5

    def streak(self, peer: str) -> int:
        return self.streaks.get(peer, 0)


def _by_prefix(keyed: list[tuple[float, Candidate]], rng: random.Random) -> list[tuple[float, Candidate]]:
    """The same candidates with each network prefix's best-keyed one first, those ordered by a key drawn
    for the prefix as a whole, weighted as its heaviest candidate: a prefix is drawn as one node, however
    many ids it holds. Drawn by ids, a prefix holding 20 ids of one operator was 20 times as likely to
    supply a step's first replica as a home with one. The rest follow in their own order."""
    best: dict[str, tuple[float, Candidate]] = {}
    heaviest: dict[str, float] = {}
    for kc in keyed:  # best key first: the first seen of each prefix is its best
        best.setdefault(kc[1].prefix, kc)
        heaviest[kc[1].prefix] = max(heaviest.get(kc[1].prefix, 0.0), kc[1].weight)
    firsts = sorted(((rng.random() ** (1.0 / heaviest[p]), kc) for p, kc in best.items()), key=lambda x: -x[0])
    leaders = {id(kc) for _, kc in firsts}
    return [kc for _, kc in firsts] + [kc for kc in keyed if id(kc) not in leaders]


def place(candidates: list[Candidate], k: int, rng: random.Random, avoid: frozenset[str] = frozenset(),
          held: Mapping[str, int] | None = None) -> list[str]:
    """Pick up to k distinct nodes, weighted by Candidate.weight (Efraimidis–Spirakis keys): one per network
    prefix first (prefixes in `held`, which already hold replicas of the step, count as taken), then
    without letting one prefix hold a majority of the step's replicas (held + these k), and only when
    nothing else is left from the least-held prefixes (a mesh on one prefix, e.g. loopback). Candidates
    whose group (Candidate.cohort) is in `avoid` are taken only when nobody else is left."""
    keyed = sorted(
        ((rng.random() ** (1.0 / c.weight), c) for c in sorted(candidates, key=lambda c: c.node)),
        key=lambda kc: -kc[0],
    )
    keyed = _by_prefix(keyed, rng)
    counts = dict(held or {})
    total = sum(counts.values()) + k
    chosen: list[str] = []
    taken: set[str] = set()

    def take(c: Candidate) -> None:
        chosen.append(c.node)
        taken.add(c.node)
        counts[c.prefix] = counts.get(c.prefix, 0) + 1

    for allowed in ((lambda c: c.cohort not in avoid), (lambda c: True)) if avoid else ((lambda c: True),):
        for rule in (0, 1):  # 0: prefixes the step does not have yet; 1: none of them gaining a majority
            for _, c in keyed:
                if len(chosen) >= k:
                    return chosen
                n = counts.get(c.prefix, 0)
                if c.node in taken or not allowed(c) or (rule == 0 and n) or (rule == 1 and 2 * (n + 1) > total):
                    continue
                take(c)
        while len(chosen) < k:  # what is left: from the least-held prefixes first
            rest = [c for _, c in keyed if c.node not in taken and allowed(c)]
            if not rest:
                break
            least = min(counts.get(c.prefix, 0) for c in rest)
            take(next(c for c in rest if counts.get(c.prefix, 0) == least))
    return chosen
