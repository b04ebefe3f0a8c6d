"""Sandbox overhead: an empty python step through mesh.sandbox.run_python (bwrap, rlimits, per-step
cgroups, the JSON runner) against a bare `bwrap … python -I -S -c pass` with the same binds, interleaved
in the same run; the figure is the ratio of median wall times (goal ≤ 1.3).

    python -m bench.python_step [--runs 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

from mesh.sandbox import bwrap_command, bwrap_path, run_python


def bare_command() -> list[str]:
    cmd = bwrap_command(bwrap_path() or "bwrap")
    return cmd[:cmd.index("-c") + 1] + ["pass"]  # the same sandbox and interpreter, running nothing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if bwrap_path() is None:
        raise SystemExit("bubblewrap (bwrap) is not installed")
    bare_cmd, step, bare = bare_command(), [], []
    run_python("output = None", {}, 10)  # warm caches
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run(bare_cmd, check=True, capture_output=True)
        bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run_python("pass", {}, 10)
        step.append(time.perf_counter() - t0)
    res = {"runs": args.runs, "bare_bwrap_ms": round(statistics.median(bare) * 1000, 2),
           "python_step_ms": round(statistics.median(step) * 1000, 2),
           "python_step_vs_bwrap": round(statistics.median(step) / statistics.median(bare), 3)}
    print(json.dumps(res) if args.json else "\n".join(f"{k} {v}" for k, v in res.items()))


if __name__ == "__main__":
    main()
