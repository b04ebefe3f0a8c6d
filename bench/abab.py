"""Ratios that hold still on a shared machine. The baseline and the subject alternate (A B A B …, at least
five pairs) in one process pinned to one CPU set, so whatever else slows the machine lands on both sides
of a pair; the median of the pairs' ratios is reported with its min–max, and a median outside the range
the two can plausibly stand in (the mesh faster than the direct library call it wraps) is flagged, not
reported as a win.

    pin("0")                                            # this process and its threads on CPU 0
    r = abab("envelope_vs_raw", raw_rate, envelope_rate, pairs=5, plausible=(0, 1.02))
    res.update(r.fields())                              # envelope_vs_raw, _min, _max, _pairs, _flag
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass

MIN_PAIRS = 5


def pin(cpus: str | None) -> list[int]:
    """Pin this process (and the threads it starts from now on) to `cpus` ("0", "0,1", "0-1"; None or ""
    leaves it as it is). The CPU set back, sorted. SystemExit on a set this machine does not have."""
    if not cpus:
        return sorted(os.sched_getaffinity(0))
    wanted: set[int] = set()
    try:
        for part in cpus.split(","):
            lo, _, hi = part.partition("-")
            wanted.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise SystemExit(f"--cpus {cpus!r}: CPU numbers like 0 or 0,1 or 0-1") from None
    have = os.sched_getaffinity(0)
    if not wanted or not wanted <= have:
        raise SystemExit(f"--cpus {cpus!r}: this process may run on CPUs {sorted(have)} only")
    os.sched_setaffinity(0, wanted)
    return sorted(wanted)


@dataclass(frozen=True)
class Ratio:
    """subject ÷ baseline over alternating pairs, each side measured in the same unit (a rate or a time)."""

    name: str
    pairs: tuple[tuple[float, float], ...]  # (baseline, subject) per pair, in run order
    plausible: tuple[float, float]  # the range the ratio can honestly fall in

    @property
    def ratios(self) -> list[float]:
        return [s / b for b, s in self.pairs]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def flag(self) -> str:
        """'' when the median is plausible, else what it means (a baseline slowed by something else)."""
        lo, hi = self.plausible
        m = self.median
        if lo <= m <= hi:
            return ""
        return (f"implausible: median {m:.3f} outside [{lo:g}, {hi:g}]; the other side was likely slowed by "
                "something else on the machine, not a real difference")

    def fields(self) -> dict:
        """The figures to print: the median under the ratio's name, its spread beside it."""
        out = {self.name: round(self.median, 3), f"{self.name}_min": round(min(self.ratios), 3),
               f"{self.name}_max": round(max(self.ratios), 3), f"{self.name}_pairs": len(self.pairs)}
        if self.flag:
            out[f"{self.name}_flag"] = self.flag
        return out


def abab(name: str, baseline: Callable[[], float], subject: Callable[[], float], pairs: int = MIN_PAIRS,
         plausible: tuple[float, float] = (0.0, float("inf"))) -> Ratio:
    """Run baseline, subject, baseline, subject … `pairs` times (at least MIN_PAIRS) and keep each pair."""
    if pairs < MIN_PAIRS:
        raise SystemExit(f"--pairs {pairs}: at least {MIN_PAIRS} pairs, or the spread says nothing")
    runs = []
    for _ in range(pairs):
        b = baseline()
        runs.append((b, subject()))
    return Ratio(name, tuple(runs), plausible)
