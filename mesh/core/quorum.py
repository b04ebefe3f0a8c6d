"""Quorum rules and the per-step tally: a pure state machine fed with replica answers and failures that
says what to do next (wait, issue more replicas, accept, or give up with the evidence)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from mesh.errors import JobError

_K_OF_N = re.compile(r"^(\d+)-of-(\d+)$")
# Under dissent, while workers on network prefixes the step has not heard from remain, a majority must have
# `needed + dissent + MARGIN_EXTRA` agreeing: 2-to-1 needs 4-to-1, not 3-to-1. One escalated replica settles
# a 2-to-1 on its own, and an operator holding ids on a third prefix wins whenever placement draws one of
# them there (sybil-30: 3 of its 7 wrong answers, seed 1); two, from two more prefixes, must both be its
# own. Once no new prefix is left, the extra seat would only add the same parties' votes again.
MARGIN_EXTRA = 1
CODE_ERROR = "your code raised "  # how a worker's sandbox words an error of the step's own code


@dataclass(frozen=True)
class QuorumRule:
    """`majority` (more than half of r agree), `unanimous` (all r agree, any dissent fails) or `k-of-n`
    (k agree; n is the redundancy)."""

    spec: str
    k: int = 0
    n: int = 0

    @classmethod
    def parse(cls, spec: object, redundancy: int = 3) -> "QuorumRule":
        if spec in ("majority", "unanimous"):
            return cls(str(spec))
        m = _K_OF_N.match(spec) if isinstance(spec, str) else None
        if not m:
            raise JobError(f"quorum must be 'majority', 'unanimous' or 'K-of-N' (e.g. 2-of-3), got {spec!r}")
        k, n = int(m.group(1)), int(m.group(2))
        if not 1 <= k <= n <= 16:
            raise JobError(f"quorum {spec!r}: need 1 <= K <= N <= 16")
        return cls(str(spec), k, n)

    def needed(self, redundancy: int) -> int:
        """Agreeing replicas needed to accept."""
        if self.spec == "majority":
            return redundancy // 2 + 1
        if self.spec == "unanimous":
            return redundancy
        return self.k


@dataclass(frozen=True)
class Wait:
    pass


@dataclass(frozen=True)
class NeedMore:
    count: int
    reuse: bool = False  # the replica budget is spent: only seats of failed replicas may be asked again


@dataclass(frozen=True)
class Accept:
    """The quorum agreed. `key` is the comparator key the agreeing answers share (for exact comparison
    the output digest; for similarity or verification, the key the comparator derived)."""

    key: str
    agreeing: tuple[str, ...]
    dissenting: tuple[str, ...]
    failed: tuple[str, ...]


@dataclass(frozen=True)
class GiveUp:
    reason: str


Decision = Wait | NeedMore | Accept | GiveUp


@dataclass
class Tally:
    """Answers for one step. Node ids are keys, so one node can never hold two replicas."""

    rule: QuorumRule
    redundancy: int
    limit: int
    margin: bool = False  # majority under dissent: every dissenting answer outvoted by one more (and MARGIN_EXTRA)
    pending: list[str] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # node → comparator key of its answer
    failures: dict[str, str] = field(default_factory=dict)  # node → reason
    aside: dict[str, str] = field(default_factory=dict)  # node → why its answer no longer counts either way
    retries: dict[str, int] = field(default_factory=dict)  # node → times its failed replica was asked again

    @property
    def issued(self) -> int:
        return len(self.pending) + len(self.answers) + len(self.failures) + len(self.aside)

    def used(self, node: str) -> bool:
        return node in self.pending or node in self.answers or node in self.failures or node in self.aside

    def set_aside(self, node: str, why: str) -> None:
        """Neither an answer nor a failure (a verifier's verdict once the step falls back to generating):
        the node stays used, so it never gets a second replica of the step."""
        if node in self.pending:
            self.pending.remove(node)
        self.answers.pop(node, None)
        self.aside[node] = why

    def issue(self, node: str) -> None:
        if self.used(node):
            raise ValueError(f"node {node[:12]} already holds a replica of this step")
        self.pending.append(node)

    def retry(self, node: str) -> None:
        """Ask a worker whose replica failed again (mesh.core.jobrun: only for a passing fault): it holds
        the same one seat, so the budget is unchanged."""
        if node not in self.failures:
            raise ValueError(f"node {node[:12]} holds no failed replica of this step")
        del self.failures[node]
        self.pending.append(node)
        self.retries[node] = self.retries.get(node, 0) + 1

    def answer(self, node: str, key: str) -> bool:
        """Record an answer's comparator key; False when the node was not waited on (late, duplicate or
        never asked)."""
        if node not in self.pending:
            return False
        self.pending.remove(node)
        self.answers[node] = key
        return True

    def fail(self, node: str, reason: str) -> bool:
        if node not in self.pending:
            return False
        self.pending.remove(node)
        self.failures[node] = reason
        return True

    def decide(self, more: bool = True, spare: int = 0, new_prefixes: bool = False) -> Decision:
        """What to do next. `more`: unused workers remain, so the margin rule may still escalate; when
        none remain, a plain quorum is accepted rather than failing a step that has one. `spare`: failed
        replicas whose workers may be asked again (a passing fault): their seats count as still open.
        `new_prefixes`: some unused workers are on network prefixes no replica of the step is on, so the
        margin rule asks for MARGIN_EXTRA more."""
        needed = self.rule.needed(self.redundancy)
        counts = Counter(self.answers.values())
        best, top = counts.most_common(1)[0] if counts else ("", 0)
        if self.rule.spec == "unanimous" and len(counts) > 1:
            return GiveUp("unanimous quorum broken: " + self.evidence())
        if top >= needed:
            if self.pending:  # hear everyone asked, so dissenters are known and judged, not just ignored
                return Wait()
            dissent = len(self.answers) - top
            budget = self.limit - self.issued
            tied = sum(1 for c in counts.values() if c == top) > 1
            if tied and not (budget > 0 and more):
                return GiveUp("tied answers, no replica left to break the tie: " + self.evidence())
            if tied:
                return NeedMore(1)
            want = needed + dissent + (MARGIN_EXTRA if new_prefixes else 0)
            if self.margin and dissent and top < want and budget > 0 and more:
                # two colluders outvoting one honest worker look exactly like this: ask others
                return NeedMore(min(want - top, budget, needed))
            missing = self.redundancy - len(self.answers)
            if self.margin and not dissent and missing > 0 and self.failures and budget > 0 and more:
                # a seat that failed is filled before a bare quorum stands: two colluders whose third
                # replica timed out (an honest worker queued or knocked offline) were accepted unopposed
                # (large-10k: 7 of 12 wrong answers at 200,000 steps)
                return NeedMore(min(missing, budget))
            agreeing = tuple(sorted(n for n, d in self.answers.items() if d == best))
            dissenting = tuple(sorted(n for n, d in self.answers.items() if d != best))
            return Accept(best, agreeing, dissenting, tuple(sorted(self.failures)))
        budget = self.limit - self.issued
        if top + len(self.pending) + budget + spare < needed:
            return GiveUp(f"no quorum possible ({needed} agreeing needed, at most {self.limit} replicas): "
                          + self.evidence())
        short = needed - top - len(self.pending)
        if short > 0:
            return NeedMore(min(short, budget)) if budget > 0 else NeedMore(min(short, spare), reuse=True)
        return Wait()

    def code_error(self) -> tuple[str, int]:
        """The error of the step's own code most workers reported (CODE_ERROR), and how many did ('', 0)."""
        said = Counter(r for r in self.failures.values() if r.startswith(CODE_ERROR))
        return said.most_common(1)[0] if said else ("", 0)

    def evidence(self) -> str:
        parts = [f"{n[:12]} said {k[:12]}" for n, k in sorted(self.answers.items())]
        parts += [f"{n[:12]} failed ({r})" for n, r in sorted(self.failures.items())]
        parts += [f"{n[:12]} pending" for n in self.pending]
        return "; ".join(parts) or "no replica answered"
