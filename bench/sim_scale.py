"""Simulator cost against network size (issue 23: events/s at 100, 10,000 and 100,000 nodes within 2× of
each other). One scenario (default huge-100k) is sized to each network size as `mesh simulate --sweep`
sizes it (submitters, prefixes and the arrival rate scale with the nodes, simulations.sweep.sized), run
for the same number of steps, one size at a time in this process, and each run's events per second of
wall time is printed, with the fastest over the slowest (`spread`: 1.0 means the cost of an event does not
grow with the network at all).

    python -m bench.sim_scale [--scenario huge-100k] [--sizes 100,10000,100000] [--steps 20000] [--json]
"""

from __future__ import annotations

import argparse

from bench.report import emit
from simulations.run import Simulation
from simulations.scenario import ScenarioError, load
from simulations.sweep import sized


def sizes_arg(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes are node counts separated by commas, not {text!r}") from None
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError("give at least one size, each at least 2 nodes")
    return sizes


def run(scenario: str, sizes: list[int], steps: int, seed: int) -> dict:
    base, _ = load(scenario)
    res: dict = {"scenario": scenario, "steps": steps, "seed": seed}
    rates = []
    for nodes in sizes:
        s = base.replace(**sized(base, nodes)).replace(steps=steps)
        r = Simulation(s, seed).run()
        res[f"events_per_s_{nodes}"] = r["events_per_s"]
        res[f"events_{nodes}"] = r["events"]
        res[f"wall_s_{nodes}"] = r["wall_s"]
        rates.append(r["events_per_s"])
    res["spread"] = round(max(rates) / min(rates), 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="huge-100k", help="built-in name or path (default huge-100k)")
    ap.add_argument("--sizes", type=sizes_arg, default=[100, 10_000, 100_000], help="node counts (default 100,10000,100000)")
    ap.add_argument("--steps", type=int, default=20_000, help="steps each run (default 20000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    try:
        emit(run(args.scenario, args.sizes, args.steps, args.seed), args.json)
    except ScenarioError as exc:
        ap.error(str(exc))


if __name__ == "__main__":
    main()
