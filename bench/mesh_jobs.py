"""End-to-end job latency at r = 1, 3, 5 and the jobs per second one submitting node sustains, on a real
mesh on loopback: 5 workers plus the node that submits (a step never runs on its submitter, so r=5
needs 5 others). The job is one python step. Two baselines, both in this run:

- the step run directly in this process's sandbox (a fresh bwrap, as a worker without a warm one runs
  it), alternated with the mesh's jobs in pairs (A B A B …, bench/abab.py): `latency_rN_vs_direct`,
  `jobs_per_s_rN_vs_direct` (jobs a second ÷ direct steps a second), each the median of the pairs with
  their min–max;
- the slowest replica's own step time, as its worker measured it (`work.seconds` in the job's report: the
  step in its warm sandbox): `latency_rN_vs_slowest_replica`, the median over every job of its latency ÷
  that time. Issue 23's goal is ≤ 2 at r=3. A job includes its slowest replica's step, so a figure
  under 1 is flagged.

This process is pinned to `--cpus` before the mesh starts, so its nodes (its children) and the direct
step share one CPU set.

    python -m bench.mesh_jobs [--jobs 20] [--burst 200] [--pairs 5] [--cpus 0-1] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from mesh.cli.local import LocalMesh
from mesh.steps.sandbox import run_python

from .abab import MIN_PAIRS, Ratio, abab, pin
from .report import emit

STEP = {"id": "s", "kind": "python", "params": {"code": "output = sum(range(1000))"}}


def direct(n: int) -> float:
    """Median seconds of the step run directly in a fresh sandbox (what a worker does, minus the mesh)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        run_python(STEP["params"]["code"], {}, 10)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def slowest_replica(report: dict) -> float:
    """The longest step time a replica of the job's one step reported (0.0 when none did)."""
    return max((r.get("work", {}).get("seconds", 0.0) for r in report["steps"]["s"]["replicas"]), default=0.0)


def one_job(client, r: int) -> tuple[float, dict]:
    """(seconds from submit to the accepted result, the job's report)."""
    t0 = time.perf_counter()
    job_id = client.request("POST", "/jobs", {"job": {"name": f"r{r}", "redundancy": r, "steps": [STEP]}})["job_id"]
    report = client.request("GET", f"/jobs/{job_id}?wait=60", timeout=90)
    took = time.perf_counter() - t0
    if report["status"] != "done":
        raise RuntimeError(f"bench job {job_id} {report['status']}: {report}")
    return took, report


def burst(client, n: int, r: int, threads: int = 8) -> float:
    """Jobs per second: n jobs submitted by `threads` clients at once, until the last is done."""
    ids: list[str] = []
    lock = threading.Lock()

    def submit(k: int) -> None:
        for _ in range(k):
            job_id = client.request("POST", "/jobs", {"job": {"name": "burst", "redundancy": r, "steps": [STEP]}})
            with lock:
                ids.append(job_id["job_id"])

    t0 = time.perf_counter()
    workers = [threading.Thread(target=submit, args=(n // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for job_id in ids:
        report = client.request("GET", f"/jobs/{job_id}?wait=60", timeout=90)
        if report["status"] != "done":
            raise RuntimeError(f"burst job {job_id} {report['status']}: {report['steps']['s'].get('error')}")
    return len(ids) / (time.perf_counter() - t0)


def latencies(client, r: int, jobs: int, pairs: int) -> dict:
    """Pairs of (direct step, mesh job) medians, `jobs` jobs in all; every job also against its slowest
    replica's own time."""
    per_pair = max(1, jobs // pairs)
    runs: list[tuple[float, float]] = []  # (latency, slowest replica's step) of every job

    def jobs_median() -> float:
        done = [one_job(client, r) for _ in range(per_pair)]
        runs.extend((took, slowest_replica(report)) for took, report in done)
        return statistics.median(took for took, _ in done)

    one_job(client, r)  # warm: connections, warm sandboxes
    vs_direct = abab(f"latency_r{r}_vs_direct", lambda: direct(per_pair), jobs_median, pairs)
    res = {f"latency_r{r}_s": round(statistics.median(took for took, _ in runs), 4),
           f"slowest_replica_r{r}_s": round(statistics.median(s for _, s in runs), 4), **vs_direct.fields()}
    if all(s > 0 for _, s in runs):  # every replica reported its time (a worker's figure, seconds ≥ 0)
        res.update(Ratio(f"latency_r{r}_vs_slowest_replica", tuple((s, took) for took, s in runs),
                         (1.0, float("inf"))).fields())
    return res


def throughput(client, r: int, burst_jobs: int, pairs: int) -> dict:
    """Pairs of (direct steps a second, a burst's jobs a second); the bursts' median jobs a second."""
    rates: list[float] = []

    def rate() -> float:
        rates.append(burst(client, burst_jobs, r))
        return rates[-1]

    burst(client, max(8, burst_jobs // 5), r)  # warm
    res = abab(f"jobs_per_s_r{r}_vs_direct", lambda: 1 / direct(5), rate, pairs).fields()
    return {**res, f"jobs_per_s_r{r}": round(statistics.median(rates), 2)}


def node_args(i: int) -> list[str]:
    """No model; the submitting node (0) may spend far past its earnings: thousands of jobs, no credit wall."""
    return ["--no-model", *(["--credit-line", "1000000"] if i == 0 else [])]


def run(jobs: int = 20, burst_jobs: int = 200, pairs: int = MIN_PAIRS, cpus: str | None = None) -> dict:
    res: dict = {"cpus": pin(cpus), "pairs": pairs}
    run_python(STEP["params"]["code"], {}, 10)  # warm: the interpreter's files in the page cache
    res["direct_step_s"] = round(direct(max(5, jobs)), 4)
    with tempfile.TemporaryDirectory() as d, LocalMesh(Path(d), 6, node_args) as mesh:
        mesh.start()
        res["mesh_ready_s"] = round(mesh.wait_ready(120), 2)
        client = mesh.nodes[0].client
        for r in (1, 3, 5):
            res.update(latencies(client, r, jobs, pairs))
        for r in (1, 3):
            res.update(throughput(client, r, burst_jobs, pairs))
    res["direct_steps_per_s"] = round(1 / res["direct_step_s"], 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20, help="sequential jobs per redundancy, over the pairs")
    ap.add_argument("--burst", type=int, default=200, help="jobs submitted at once, per pair, for jobs a second")
    ap.add_argument("--pairs", type=int, default=MIN_PAIRS, help=f"direct/mesh runs, alternating (at least {MIN_PAIRS})")
    ap.add_argument("--cpus", default="", help="CPU set for this process and the mesh it starts (default: all it has)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    emit(run(args.jobs, args.burst, args.pairs, args.cpus or None), args.json)


if __name__ == "__main__":
    main()
