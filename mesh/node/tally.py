"""What the node counts for /metrics (mesh.http.metrics) that nothing else keeps: each job's steps and
replicas as the job ends, how long jobs took, and the steps this node ran for peers with their wall time.
In memory since the node started (Prometheus takes a counter that restarts at zero as a restart): the
jobs themselves leave memory (`--keep-jobs`), so their counts are taken here once, at their end."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mesh.core.dag import STEP_KINDS
from mesh.core.jobrun import JobRun

JOB_BUCKETS_S = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
STEP_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
KNOWN_KINDS = frozenset([*STEP_KINDS, "score"])  # a peer names the kind: anything else is 'other', or
# a peer could grow the metrics without bound


@dataclass
class Histogram:
    """Observations by bucket (upper bounds, seconds), as Prometheus exposes them."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, the last one +Inf; not cumulative
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def to_json(self) -> dict[str, Any]:
        """Cumulative buckets [[upper bound or '+Inf', count]], sum and count."""
        out, running = [], 0
        for bound, n in zip([*(str(float(b)) for b in self.bounds), "+Inf"], self.counts, strict=True):
            running += n
            out.append([bound, running])
        return {"buckets": out, "sum": self.total, "count": running}


def replica_outcome(key: str, rep_key: str, digest: str, error: str) -> str:
    """agreed (with the accepted answer) | disagreed | failed | unanswered (the step ended first)."""
    if error:
        return "failed"
    if key and rep_key == key:
        return "agreed"
    return "disagreed" if digest else "unanswered"


@dataclass
class Tally:
    jobs: Counter[str] = field(default_factory=Counter)  # ended jobs by status (done | failed)
    steps: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, status) of ended jobs' steps
    replicas: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, outcome)
    job_seconds: Histogram = field(default_factory=lambda: Histogram(JOB_BUCKETS_S))
    worked: Counter[tuple[str, str]] = field(default_factory=Counter)  # steps run for peers: (kind, ok | failed | refused)
    step_seconds: dict[str, Histogram] = field(default_factory=dict)  # kind → wall time of those that ran

    def job_ended(self, run: JobRun, seconds: float) -> None:
        self.jobs[run.status] += 1
        self.job_seconds.observe(max(0.0, seconds))
        for step in run.steps.values():
            self.steps[(step.kind, step.status)] += 1
            for rep in step.replicas.values():
                self.replicas[(step.kind, replica_outcome(step.key, rep.key, rep.digest, rep.error))] += 1

    def step_worked(self, kind: str, outcome: str, seconds: float | None) -> None:
        """A step a peer asked of this node: answered (ok), failed, or refused (busy, over credit);
        `seconds` is None for a refused one (it never ran)."""
        kind = kind if kind in KNOWN_KINDS else "other"
        self.worked[(kind, outcome)] += 1
        if seconds is not None:
            self.step_seconds.setdefault(kind, Histogram(STEP_BUCKETS_S)).observe(max(0.0, seconds))

    def snapshot(self) -> dict[str, Any]:
        """Plain data for the API's metrics collector (mesh.http never imports mesh.node)."""
        return {"jobs_ended": dict(self.jobs),
                "steps": [[k, s, n] for (k, s), n in sorted(self.steps.items())],
                "replicas": [[k, o, n] for (k, o), n in sorted(self.replicas.items())],
                "job_seconds": self.job_seconds.to_json(),
                "worked": [[k, o, n] for (k, o), n in sorted(self.worked.items())],
                "step_seconds": {k: h.to_json() for k, h in sorted(self.step_seconds.items())}}
