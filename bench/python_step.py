"""Sandbox overhead: an empty python step against a bare `bwrap … python -I -S -c pass` with the same
binds, interleaved in the same run, all pinned to one CPU set; each figure is the median of the rounds' ratios
with its min–max (goal ≤ 1.3).
`python_step_vs_bwrap` is the step as a node runs it: its sandbox (bwrap, per-step cgroups, the runner
waiting on stdin) was started ahead by a warm StepActor, so the step pays only its request and result.
`cold_step_vs_bwrap` starts everything on the step's path, with and without the per-step cgroups
(moving a process into a cgroup costs the kernel a few milliseconds per controller). As root, steps run
as an unprivileged uid with a seccomp filter and a read-only /proc/sys; the baseline has none of these.

    python -m bench.python_step [--runs 30] [--cpus 0] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from unittest import mock

from bench.abab import MIN_PAIRS, Ratio, pin
from bench.report import emit
from mesh.steps import sandbox
from mesh.steps.sandbox import bwrap_command, bwrap_path, run_python
from mesh.steps.stepuser import NOBODY, running_as_root


class NoGroup:
    """mesh.steps.cgroup.StepGroup without the groups (the cold step's cgroup cost measured apart)."""

    paths: list = []
    cpu_cap = None

    def __init__(self, *_: object, **__: object) -> None:  # (StepGroup's `cap` too: e1d08df broke this bench)
        pass

    def limit_memory(self, _: int) -> None:
        pass

    def enter(self) -> None:
        pass

    def close(self) -> None:
        pass

    def cpu_s(self) -> None:
        return None

    def peak_bytes(self) -> None:
        return None


def bare_command() -> list[str]:
    """The baseline: bwrap with the same binds and interpreter, running nothing, as the invoking user, with
    no seccomp filter and no read-only /proc/sys (what a sandbox cost before the step user existed)."""
    launch = bwrap_command(bwrap_path() or "bwrap", code="pass", user=NOBODY if running_as_root() else None)
    launch.close()
    cmd = launch.cmd
    drop = cmd.index("--seccomp")
    cmd = cmd[:drop] + cmd[drop + 2:]
    ro = cmd.index("/proc/sys")
    return cmd[:ro - 1] + cmd[ro + 2:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30, help="rounds of bare bwrap and each step (at least 5)")
    ap.add_argument("--cpus", default="0", help="CPU set every side runs on (default 0)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.runs < MIN_PAIRS:
        raise SystemExit(f"--runs {args.runs}: at least {MIN_PAIRS}")
    cpus = pin(args.cpus)
    if bwrap_path() is None:
        raise SystemExit("bubblewrap (bwrap) is not installed")
    bare_cmd, step, bare, plain, warm = bare_command(), [], [], [], []
    run_python("output = None", {}, 10)  # warm caches
    for _ in range(args.runs):
        box = sandbox.Sandbox(True)  # as a node does: started before the step arrives
        box_ready = time.monotonic() + 0.5
        while time.monotonic() < box_ready:  # let it finish starting (the node's warm actors have long done so)
            time.sleep(0.01)
        t0 = time.perf_counter()
        box.run("pass", {}, 10)
        warm.append(time.perf_counter() - t0)
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
    # each run of the loop is a pair (bare bwrap, then the step) on the same CPUs; a cold step does all a
    # bare bwrap does and more, so one faster than it means the bare one was slowed by something else
    cold = Ratio("cold_step_vs_bwrap", tuple(zip(bare, step, strict=True)), plausible=(0.98, float("inf")))
    plain_r = Ratio("cold_step_no_cgroups_vs_bwrap", tuple(zip(bare, plain, strict=True)), (0.98, float("inf")))
    warm_r = Ratio("python_step_vs_bwrap", tuple(zip(bare, warm, strict=True)), (0.0, float("inf")))
    res = {"runs": args.runs, "cpus": cpus, "bare_bwrap_ms": round(med(bare) * 1000, 2),
           "cold_step_ms": round(med(step) * 1000, 2), "cold_step_no_cgroups_ms": round(med(plain) * 1000, 2),
           "python_step_ms": round(med(warm) * 1000, 2), **cold.fields(), **plain_r.fields(), **warm_r.fields()}
    emit(res, args.json)


if __name__ == "__main__":
    main()
