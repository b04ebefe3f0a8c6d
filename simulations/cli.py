"""`mesh simulate` and `mesh replay`: run a scenario (or a sweep of them) and print one JSON object or a
short table; re-run a trace and exit 0 only when it is reproduced bit for bit."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

SHOWN = ("steps", "wrong_accepted", "wrong_accepted_rate", "replicas_per_step", "spot_checks_per_step",
         "refused_per_step",
         "latency_p50", "latency_p99", "credit_gini", "adversary_credit_share", "reputation_auc", "events",
         "events_per_s", "trace_hash")
LLM_SHOWN = ("llm_steps", "llm_wrong_accepted", "llm_wrong_per_1000", "llm_generations_per_step",
             "llm_scorings_per_step", "llm_cost_per_step", "score_fallbacks")  # shown when a run had llm steps


PLOT_FRACTIONS = [0.0, 0.1, 0.2, 0.3, 0.4]
PLOT_STEPS = 3000  # steps per run of the fraction plot made with --plot


def _floats(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not out or not all(math.isfinite(x) for x in out):  # (inf raised OverflowError; none ran 0 runs)
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers, got {text!r}")
    return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in _floats(text)]


def _setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, got {text!r}")
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value  # a bare word: a string
    except RecursionError:
        raise argparse.ArgumentTypeError(f"{key.strip()}: the value is nested too deeply") from None


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and (sys.stderr.isatty() or os.environ.get("MESH_PROGRESS") == "1")


def cmd_simulate(args: argparse.Namespace) -> int:
    from .run import simulate
    from .scenario import load

    s, text = load(args.scenario)
    overrides: dict = dict(args.set)
    if args.policy:
        from .sweep import POLICIES

        overrides.update(POLICIES[args.policy])
    if args.steps is not None:
        overrides["steps"] = args.steps
    if overrides:
        s = s.replace(**overrides)
    if args.sweep:
        return _sweep(args, s, text)
    trace = Path(args.trace) if args.trace else None
    result, sim = simulate(s, text, args.scenario, args.seed, trace, _progress(args), overrides)
    if args.plot:
        from .plots import plot_run
        from .sweep import run_sweep

        out = Path(args.plot)
        result["plots"] = [str(p) for p in plot_run(result, sim.m.series, out)]
        # wrong-accepted against the malicious fraction needs one run per fraction: short ones, in parallel
        _, rows = run_sweep(text, args.scenario, args.seed, PLOT_FRACTIONS, [s.jobs.redundancy], ["plain", "full"],
                            min(s.steps, PLOT_STEPS), out, args.processes)
        result["plots"].append(str(out / "wrong-vs-fraction.png"))
        result["plots"].append(str(out / "sweep.csv"))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"scenario {result['scenario']} (seed {args.seed}, {result['nodes']} nodes)")
        for key in SHOWN + (LLM_SHOWN if result["llm_steps"] else ()):
            print(f"  {key:24} {result[key]}")
        for path in result.get("plots", []):
            print(f"  plot                     {path}")
    return 0


def _sweep(args: argparse.Namespace, s, text: str) -> int:
    from .sweep import run_sweep

    out = Path(args.plot or args.out or "sweep")
    fractions = args.fractions if args.fractions is not None else (None if args.sizes else [0.0, 0.1, 0.2, 0.3])
    show = _progress(args)

    def progress(done: int, of: int) -> None:
        if show:
            print(f"\rsweep: {done}/{of} runs", end="" if done < of else "\n", file=sys.stderr, flush=True)

    csv, rows = run_sweep(text, args.scenario, args.seed, fractions, args.redundancies, args.policies,
                          args.steps, out, args.processes, progress, args.sizes)
    if args.json:
        print(json.dumps({"csv": str(csv), "runs": len(rows), "rows": rows}))
    else:
        print(f"{len(rows)} runs written to {csv}")
        for r in rows:
            print(f"  {r['policy']:6} nodes={r['nodes']:<6} r={r['redundancy']} fraction={r['fraction']:<5} wrong_accepted_rate="
                  f"{r['wrong_accepted_rate']:.2e} replicas_per_step={r['replicas_per_step']}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .run import replay

    ok, message, _ = replay(Path(args.trace), _progress(args))
    print(message)
    return 0 if ok else 1


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    from .scenario import SCENARIOS

    builtin = ", ".join(sorted(p.stem for p in SCENARIOS.glob("*.toml")))
    sp = add("simulate", cmd_simulate, "simulate a whole network from a scenario file (TOML) under a virtual "
             "clock, with the real cross-checking core; prints the metrics. SCENARIO is a path or a built-in "
             f"name: {builtin}", json_flag=True, home=False)
    sp.add_argument("scenario", metavar="SCENARIO", help="a scenario file (TOML) or a built-in name")
    sp.add_argument("--seed", type=int, default=1, help="the run's one seed: the same seed gives the same run")
    sp.add_argument("--steps", type=int, help="steps to submit (overrides the scenario's)")
    sp.add_argument("--set", type=_setting, action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="change one scenario value (a TOML value), e.g. --set jobs.redundancy=5 "
                         "--set policy.spot_rate=0.1 (repeatable; recorded in the trace)")
    sp.add_argument("--policy", choices=["plain", "full"],
                    help="plain: majority voting at fixed redundancy on workers picked uniformly at random (no "
                         "reputation weighting, margin rule, adaptive replication, spot checks or rechecks: the "
                         "classic baseline); full: the scenario's own policy")
    sp.add_argument("--trace", metavar="FILE", help="write every decision to FILE, for `mesh replay`")
    sp.add_argument("--plot", metavar="DIR",
                    help="write PNG plots to DIR: reputation by node class and replicas per step over time, and "
                         "wrong-accepted against malicious fraction (10 short extra runs, plain vs full policy); "
                         "with --sweep: the sweep's plot and CSV")
    sp.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    sp.add_argument("--sweep", action="store_true",
                    help="run a grid (network size × malicious fraction × redundancy × policy) across processes; writes a CSV "
                         "and a plot to --plot DIR or --out DIR")
    sp.add_argument("--out", metavar="DIR", help="sweep output directory (default ./sweep)")
    sp.add_argument("--fractions", type=_floats, default=None,
                    help="sweep: malicious fractions, each one adversary like the scenario's first (default "
                         "0,0.1,0.2,0.3; with --sizes, the scenario's own adversaries)")
    sp.add_argument("--sizes", type=_ints, default=None, metavar="N,N,...",
                    help="sweep: network sizes in nodes, e.g. 100,10000,100000; submitters, network prefixes "
                         "and the job rate scale with the size (the same load on each node), the step count "
                         "stays; adds vs-size.png (wrong-accepted and replicas per step against size)")
    sp.add_argument("--redundancies", type=_ints, default=[3], help="sweep: redundancies (default 3)")
    sp.add_argument("--policies", type=lambda t: [p for p in t.split(",") if p], default=["plain", "full"],
                    help="sweep: plain (majority at fixed r) and/or full (the scenario's policy) (default both)")
    sp.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="sweep: worker processes")

    sp = add("replay", cmd_replay, "re-run a trace written by `mesh simulate --trace`; exits 0 only when "
             "every record and the trace hash are reproduced bit for bit", home=False)
    sp.add_argument("trace", metavar="TRACE", help="the trace file `mesh simulate --trace` wrote")
    sp.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
