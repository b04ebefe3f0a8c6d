"""End-to-end job latency at r = 1, 3, 5 and the jobs per second one submitting node sustains, on a real
mesh on loopback: 5 workers plus the node that submits (a step never runs on its submitter, so r=5
needs 5 others). The job is one python step; the baseline, in the same run, is that step run directly
in this process's sandbox (bwrap, as a worker runs it), so the ratios say what the mesh adds.

    python -m bench.mesh_jobs [--jobs 20] [--burst 200] [--json]
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

from .report import emit

STEP = {"id": "s", "kind": "python", "params": {"code": "output = sum(range(1000))"}}


def direct(n: int) -> float:
    """Median seconds of the step run directly in a fresh sandbox (what a worker does, minus the mesh)."""
    run_python(STEP["params"]["code"], {}, 10)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        run_python(STEP["params"]["code"], {}, 10)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def one_job(client, r: int) -> float:
    t0 = time.perf_counter()
    job_id = client.request("POST", "/jobs", {"job": {"name": f"r{r}", "redundancy": r, "steps": [STEP]}})["job_id"]
    report = client.request("GET", f"/jobs/{job_id}?wait=60", timeout=90)
    if report["status"] != "done":
        raise RuntimeError(f"bench job {job_id} {report['status']}: {report}")
    return time.perf_counter() - t0


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


def run(jobs: int = 20, burst_jobs: int = 200) -> dict:
    base = direct(max(5, jobs))
    res: dict = {"direct_step_s": round(base, 4)}
    with tempfile.TemporaryDirectory() as d, LocalMesh(Path(d), 6, lambda i: ["--no-model"]) as mesh:
        mesh.start()
        res["mesh_ready_s"] = round(mesh.wait_ready(120), 2)
        client = mesh.nodes[0].client
        for r in (1, 3, 5):
            one_job(client, r)  # warm: connections, warm sandboxes
            lat = statistics.median(one_job(client, r) for _ in range(jobs))
            res[f"latency_r{r}_s"] = round(lat, 4)
            res[f"latency_r{r}_vs_direct"] = round(lat / base, 2)
        for r in (1, 3):
            res[f"jobs_per_s_r{r}"] = round(burst(client, burst_jobs, r), 2)
    res["direct_steps_per_s"] = round(1 / base, 2)
    res["jobs_per_s_r1_vs_direct"] = round(res["jobs_per_s_r1"] * base, 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20, help="sequential jobs per redundancy (median kept)")
    ap.add_argument("--burst", type=int, default=200, help="jobs submitted at once for the throughput figure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    emit(run(args.jobs, args.burst), args.json)


if __name__ == "__main__":
    main()
