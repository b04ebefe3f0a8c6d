"""Sandbox overhead: an empty python step through mesh.sandbox.run_python (bwrap, rlimits, per-step
cgroups, the JSON runner) against a bare `bwrap … python -I -S -c pass` with the same binds, interleaved
in the same run; the figure is the ratio of median wall times (goal ≤ 1.3). A third series runs the step
without the per-step cgroups (as on a node that may not create them), since moving a process into a
cgroup costs the kernel a few milliseconds per controller.

    python -m bench.python_step [--runs 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from unittest import mock

from mesh import sandbox
from mesh.sandbox import bwrap_command, bwrap_path, run_python


class NoGroup:
    paths: list = []

    def __init__(self, *_: object) -> None:
        pass

    def enter(self) -> None:
        pass

    def close(self) -> None:
        pass


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
    bare_cmd, step, bare, plain = bare_command(), [], [], []
    run_python("output = None", {}, 10)  # warm caches
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run(bare_cmd, check=True, capture_output=True)
        bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run_python("pass", {}, 10)
        step.append(time.perf_counter() - t0)
        with mock.patch.object(sandbox, "StepGroup", NoGroup):
            t0 = time.perf_counter()
            run_python("pass", {}, 10)
            plain.append(time.perf_counter() - t0)
    med = statistics.median
    res = {"runs": args.runs, "bare_bwrap_ms": round(med(bare) * 1000, 2),
           "python_step_ms": round(med(step) * 1000, 2), "python_step_no_cgroups_ms": round(med(plain) * 1000, 2),
           "python_step_no_cgroups_vs_bwrap": round(med(plain) / med(bare), 3),
           "python_step_vs_bwrap": round(med(step) / med(bare), 3)}
    print(json.dumps(res) if args.json else "\n".join(f"{k} {v}" for k, v in res.items()))


if __name__ == "__main__":
    main()
