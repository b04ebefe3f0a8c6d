"""Simulator memory: peak resident set size of one scenario run (default huge-100k, cut to 20000 steps to
keep it short), measured in a child process, against building the same population alone (steps=1) and a
bare interpreter that only imports the simulator, and as a fraction of a 24 GiB machine.

Each figure is the child's ru_maxrss as the parent sees it (getrusage(RUSAGE_CHILDREN), KiB on Linux).
That is the maximum over all children waited for so far, so the children run smallest first (imports,
population, run) and each also reports its own RUSAGE_SELF peak as a check.

    python -m bench.sim_memory [--scenario huge-100k] [--steps 20000] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.report import emit

ROOT = Path(__file__).resolve().parent.parent
GIB24_MIB = 24 * 1024

CHILD = """
import json, resource, sys, time
from simulations.run import Simulation
from simulations.scenario import load
name, steps, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = {}
if steps > 0:
    s, _ = load(name)
    s = s.replace(steps=steps)
    t0 = time.perf_counter()
    sim = Simulation(s, seed)
    out["build_s"] = time.perf_counter() - t0
    r = sim.run()
    out.update(nodes=r["nodes"], steps=r["steps"], events=r["events"], wall_s=r["wall_s"],
               events_per_s=r["events_per_s"])
out["self_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(out))
"""


def child(scenario: str, steps: int, seed: int) -> tuple[dict, float, float]:
    """(the child's report, its peak RSS in MiB as RUSAGE_CHILDREN shows it, wall seconds)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, scenario, str(steps), str(seed)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return json.loads(done.stdout.strip().splitlines()[-1]), peak_kib / 1024, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="huge-100k", help="built-in name or path (default huge-100k)")
    ap.add_argument("--steps", type=int, default=20_000, help="steps to run (default 20000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    _, bare_mib, _ = child(args.scenario, 0, args.seed)
    pop, pop_mib, pop_wall = child(args.scenario, 1, args.seed)
    run, run_mib, run_wall = child(args.scenario, args.steps, args.seed)
    res = {
        "scenario": args.scenario, "nodes": run["nodes"], "steps": run["steps"], "events": run["events"],
        "wall_s": run["wall_s"], "events_per_s": run["events_per_s"], "build_s": round(run["build_s"], 3),
        "child_wall_s": round(run_wall, 3),
        "imports_rss_mib": round(bare_mib, 1),
        "population_rss_mib": round(pop_mib, 1), "population_child_wall_s": round(pop_wall, 3),
        "peak_rss_mib": round(run_mib, 1),
        "self_reported_peak_rss_mib": round(run["self_maxrss_kib"] / 1024, 1),
        "run_over_population_mib": round(run_mib - pop_mib, 1),
        "fraction_of_24gib": round(run_mib / GIB24_MIB, 4),
    }
    emit(res, args.json)


if __name__ == "__main__":
    main()
