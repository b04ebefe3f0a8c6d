"""Parameter sweeps: run one scenario over a grid of network sizes, malicious fractions, redundancies and
policies in parallel, and write the results as a CSV and plots (wrong-vs-fraction, and vs-size when more
than one size is swept). Every cell uses the same seed, so cells differ only in the parameters swept and
the sweep is reproducible cell by cell."""

from __future__ import annotations

import csv
import dataclasses
import multiprocessing
from pathlib import Path
from typing import Callable, Iterable

from .plots import plot_fraction, plot_size
from .scenario import AdversarySpec, Scenario, ScenarioError, parse_text

# "plain": plain majority voting at a fixed redundancy; "full": the scenario's own policy (margin rule,
# adaptive replication, spot checks, rechecks, shared testimony).
POLICIES: dict[str, dict[str, object]] = {
    "plain": {"policy.margin": False, "jobs.adaptive": 0, "policy.spot_rate": 0.0, "policy.recheck": False,
              "policy.reputation": False, "policy.shared": False},
    "full": {},
}

COLUMNS = ["nodes", "fraction", "redundancy", "policy", "steps", "wrong_accepted", "wrong_accepted_rate",
           "replicas_per_step", "spot_checks_per_step", "adversary_credit_share", "reputation_auc",
           "latency_p50", "trace_hash"]


def with_fraction(s: Scenario, fraction: float) -> Scenario:
    """A copy whose adversaries are ONE adversary like the scenario's first (or random-wrong at rate 1 if
    it has none) making up `fraction` of the workers; no adversaries at all when `fraction` is 0."""
    if fraction <= 0:
        return s.replace(adversaries=[])
    if s.adversaries:
        adversary = dataclasses.replace(s.adversaries[0], fraction=fraction)
    else:
        adversary = AdversarySpec(strategy="random-wrong", fraction=fraction, rate=1.0)
    return s.replace(adversaries=[adversary])


AS_IS = -1.0  # a "fraction" that keeps the scenario's own adversaries


def sized(s: Scenario, nodes: int) -> dict[str, object]:
    """Overrides that make `s` a network of `nodes` nodes with the same load on each: submitters, network
    prefixes and the job arrival rate scale with it (the step count does not: --steps sets it)."""
    n = s.network
    if nodes < 2:
        raise ScenarioError(f"a network size must be at least 2 nodes, not {nodes}")
    scale = nodes / n.nodes
    out: dict[str, object] = {"network.nodes": int(nodes),
                              "network.submitters": max(1, min(nodes - 1, round(n.submitters * scale))),
                              "jobs.rate_per_s": s.jobs.rate_per_s * scale}
    if n.prefixes:
        out["network.prefixes"] = max(1, round(n.prefixes * scale))
    return out


def adversary_share(s: Scenario) -> float:
    return round(sum(a.fraction for a in s.adversaries), 6)


def cell_scenario(s: Scenario, overrides: dict[str, object], fraction: float) -> Scenario:
    """The scenario of one cell: `overrides` (`section.field` keys) applied, then the malicious fraction
    (AS_IS: the scenario's own adversaries)."""
    s = s.replace(**overrides)
    return s if fraction == AS_IS else with_fraction(s, fraction)


def grid(s: Scenario, fractions: Iterable[float] | None, redundancies: Iterable[int],
         policies: Iterable[str], sizes: Iterable[int] | None = None) -> list[tuple[dict, dict, float]]:
    """Every (labels, overrides, fraction) cell of the sweep. labels: nodes, fraction, redundancy, policy;
    overrides: the size's, the policy's and the redundancy's `section.field` values; fraction: applied
    apart, by `with_fraction` (fractions None: the scenario's own adversaries, labelled by their share;
    sizes None: the scenario's size). Each cell is checked against `s` here, so a bad one fails before
    anything runs."""
    cells = []
    for policy in policies:
        if policy not in POLICIES:
            raise ScenarioError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
        for nodes in sizes or [s.network.nodes]:
            size = sized(s, int(nodes)) if sizes else {}
            for redundancy in redundancies:
                for fraction in fractions if fractions is not None else [AS_IS]:
                    overrides = {**size, **POLICIES[policy], "jobs.redundancy": int(redundancy)}
                    cell = cell_scenario(s, overrides, float(fraction))
                    cells.append(({"nodes": cell.network.nodes, "fraction": adversary_share(cell),
                                   "redundancy": int(redundancy), "policy": policy}, overrides, float(fraction)))
    return cells


def _run_cell(task: tuple[int, str, str, dict, float, int]) -> tuple[int, dict]:
    """Worker: rebuild the cell's scenario from picklable parts, simulate it, return (index, summary)."""
    from .run import simulate  # imported here: the parent needs only the scenario parser

    index, text, source, overrides, fraction, seed = task
    s = cell_scenario(parse_text(text, source), overrides, fraction)
    result, _ = simulate(s, text, source, seed)
    return index, result


def _row(labels: dict, result: dict) -> dict:
    """One CSV row: the cell's labels and the summary values named in COLUMNS."""
    return {**{k: result.get(k) for k in COLUMNS}, **labels}


def write_csv(rows: list[dict], path: Path) -> Path:
    """Write `rows` with the COLUMNS header (None written as an empty field)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return path


def run_sweep(s_text: str, source: str, seed: int, fractions: Iterable[float] | None, redundancies: Iterable[int],
              policies: Iterable[str], steps: int | None, out_dir: Path, processes: int,
              progress: Callable[[int, int], None] | None = None,
              sizes: Iterable[int] | None = None) -> tuple[Path, list[dict]]:
    """Run every cell of the grid (`processes` worker processes; 1 or fewer runs them in this process),
    write sweep.csv, wrong-vs-fraction.png and (more than one size) vs-size.png into `out_dir`, and
    return (csv path, rows sorted by policy, redundancy, size, fraction). `steps` overrides the scenario's
    step count when given. `progress(done, total)` is called as each cell finishes."""
    extra = {} if steps is None else {"steps": int(steps)}
    s = parse_text(s_text, source).replace(**extra)  # so that grid() checks the cells with the step count
    cells = [(labels, {**overrides, **extra}, fraction)
             for labels, overrides, fraction in grid(s, fractions, redundancies, policies, sizes)]
    tasks = [(i, s_text, source, overrides, fraction, seed) for i, (_, overrides, fraction) in enumerate(cells)]
    rows: list[dict] = []

    def collect(results: Iterable[tuple[int, dict]]) -> None:
        for index, result in results:
            rows.append(_row(cells[index][0], result))
            if progress:
                progress(len(rows), len(tasks))

    if processes <= 1 or len(tasks) <= 1:
        collect(map(_run_cell, tasks))
    else:
        with multiprocessing.Pool(min(processes, len(tasks))) as pool:
            collect(pool.imap_unordered(_run_cell, tasks))
    rows.sort(key=lambda r: (r["policy"], r["redundancy"], r["nodes"], r["fraction"]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_csv(rows, out_dir / "sweep.csv")
    plot_fraction(rows, out_dir)
    if len({r["nodes"] for r in rows}) > 1:
        plot_size(rows, out_dir)
    return path, rows
