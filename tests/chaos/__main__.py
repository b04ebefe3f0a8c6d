"""`python -m tests.chaos --seed S --jobs N --nodes K [--dir D]`: one chaos run; prints the result as JSON on
stdout (progress on stderr) and exits 1 when an invariant failed, 0 when all held."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .harness import Config, run
from .schedule import ACTIONS


def main(argv: list[str] | None = None) -> int:
    d = Config()
    ap = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    ap.add_argument("--seed", type=int, default=d.seed, help="reproduces the schedule and the jobs")
    ap.add_argument("--jobs", type=int, default=d.jobs)
    ap.add_argument("--nodes", type=int, default=d.nodes)
    ap.add_argument("--rate", type=float, default=d.rate, help="jobs submitted per second")
    ap.add_argument("--steps", type=int, default=d.steps, help="python steps per job, in a chain")
    ap.add_argument("--submitters", type=int, default=d.submitters)
    ap.add_argument("--actions", default=",".join(ACTIONS), help=f"faults to draw from (default {','.join(ACTIONS)})")
    ap.add_argument("--max-concurrent", type=int, default=d.max_concurrent, help="faulty nodes at once")
    ap.add_argument("--job-timeout", type=float, default=d.job_timeout)
    ap.add_argument("--drain", type=float, default=d.drain_s, help="seconds the jobs may take to end after the faults")
    ap.add_argument("--dir", type=Path, help="where the nodes' homes go (default: a new temporary directory)")
    ap.add_argument("--out", type=Path, help="also write the JSON result to this file")
    a = ap.parse_args(argv)
    cfg = Config(seed=a.seed, jobs=a.jobs, nodes=a.nodes, rate=a.rate, steps=a.steps, submitters=a.submitters,
                 actions=tuple(x for x in a.actions.split(",") if x), max_concurrent=a.max_concurrent,
                 job_timeout=a.job_timeout, drain_s=a.drain, directory=a.dir)
    res = run(cfg)
    text = json.dumps(res.to_json(), indent=1)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    for v in res.violations:
        print(f"INVARIANT BROKEN: {v}", file=sys.stderr)
    print(f"chaos seed {cfg.seed}: {'all invariants held' if res.ok else f'{len(res.violations)} invariants broken'}",
          file=sys.stderr)
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
