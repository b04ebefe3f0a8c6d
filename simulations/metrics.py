"""What a run measured: counters fed by the drivers, and the summary statistics (percentiles, Gini,
the AUC of reputation as a detector of adversaries)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Metrics:
    steps: int = 0  # settled steps of submitted jobs (rechecks not counted)
    accepted: int = 0
    failed: int = 0
    wrong_at_settle: int = 0  # accepted with a wrong answer when settled
    wrong_final: int = 0  # still wrong after rechecks
    replicas: int = 0  # every replica sent, rechecks included (spot checks counted apart)
    refused: int = 0  # of `replicas`, those a worker refused at once (busy: it did no work on them)
    step_replicas: int = 0  # replicas of the settled steps themselves
    spot_checks: int = 0
    caught: int = 0
    rechecks: int = 0
    overturns: int = 0
    llm_steps: int = 0  # of `steps`, the greedy llm ones
    llm_wrong_at_settle: int = 0
    llm_wrong_final: int = 0
    llm_replicas: int = 0  # replicas of the settled llm steps (generators and verifiers)
    llm_generations: int = 0  # llm replicas sent to generate (rechecks included, as `replicas`)
    llm_scorings: int = 0  # and to score a claim
    fallbacks: int = 0  # llm steps under compare 'score' a verifier refused: generated again and compared
    latencies: list[float] = field(default_factory=list)  # job end-to-end, virtual seconds
    series: list[dict] = field(default_factory=list)  # snapshots over time, for the plots
    _window: tuple[int, int] = (0, 0)  # (steps, replicas) at the last snapshot

    def settled(self, accepted: bool, wrong: bool, replicas: int, now: float, llm: bool = False,
                fell_back: bool = False) -> None:
        self.steps += 1
        self.step_replicas += replicas
        if accepted:
            self.accepted += 1
            self.wrong_at_settle += wrong
            self.wrong_final += wrong
        else:
            self.failed += 1
        if llm:
            self.llm_steps += 1
            self.llm_replicas += replicas
            self.llm_wrong_at_settle += accepted and wrong
            self.llm_wrong_final += accepted and wrong
            self.fallbacks += fell_back

    def overturned(self, was_wrong: bool, now_wrong: bool, llm: bool = False) -> None:
        self.overturns += 1
        self.wrong_final += int(now_wrong) - int(was_wrong)
        if llm:
            self.llm_wrong_final += int(now_wrong) - int(was_wrong)

    def job_done(self, latency: float) -> None:
        self.latencies.append(latency)

    def window_replicas(self) -> float:
        steps, replicas = self._window
        per = (self.replicas - replicas) / max(1, self.steps - steps)
        self._window = (self.steps, self.replicas)
        return per


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def gini(values: list[float]) -> float:
    """0 when everyone earned the same, towards 1 when one earned everything."""
    xs = sorted(max(0.0, v) for v in values)
    total = sum(xs)
    if not xs or total == 0:
        return 0.0
    weighted = sum((i + 1) * x for i, x in enumerate(xs))
    return (2 * weighted) / (len(xs) * total) - (len(xs) + 1) / len(xs)


def auc(good: list[float], bad: list[float]) -> float | None:
    """P(an honest node's reputation > an adversary's), ties counting half (Mann–Whitney); None when
    either class is empty."""
    if not good or not bad:
        return None
    scored = sorted([(v, 1) for v in good] + [(v, 0) for v in bad])
    rank_sum, i = 0.0, 0
    while i < len(scored):
        j = i
        while j < len(scored) and scored[j][0] == scored[i][0]:
            j += 1
        mid = (i + j + 1) / 2  # average 1-based rank of the tie block
        rank_sum += mid * sum(1 for k in range(i, j) if scored[k][1] == 1)
        i = j
    n1, n0 = len(good), len(bad)
    return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)
