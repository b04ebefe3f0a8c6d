"""Scale on one machine: N real node processes on loopback (default 32, no model) run one 100-step job at
r=3 (10 chains of 10 python steps). Reports the time to form the mesh, the job's wall time, and memory
per node (the node process and its actors: RSS, and USS — the memory that is that node's alone). The
baseline, in the same run, is the same 100 steps run one after another in this process's sandbox.

    python -m bench.scale [--nodes 32] [--transport libp2p|tcp] [--profile FILE] [--json]

With --profile, the submitting node runs under cProfile (MESH_PROFILE) and the top functions by own
time are printed: that is how the submitter's bottleneck was found (bench/README.md).
"""

from __future__ import annotations

import argparse
import pstats
import tempfile
import time
from pathlib import Path

import psutil

from mesh.cli.local import LocalMesh
from mesh.node.home import RUNTIME_FILE
from mesh.steps.sandbox import run_python

from .report import emit

CHAINS, LENGTH = 10, 10


def job(redundancy: int) -> dict:
    steps = []
    for c in range(CHAINS):
        for k in range(LENGTH):
            sid = f"c{c}s{k}"
            steps.append({"id": sid, "kind": "python", "params": {"code": "output = sum(inputs.values()) + 1"},
                          "after": [f"c{c}s{k - 1}"] if k else []})
    return {"name": "scale", "redundancy": redundancy, "steps": steps, "timeout": 1200}


def tree_memory(pid: int) -> tuple[float, float]:
    """(RSS, USS) in MiB of a process and its descendants."""
    rss = uss = 0
    try:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    for p in procs:
        try:
            info = p.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        rss += info.rss
        uss += info.uss
    return rss / 2**20, uss / 2**20


def run(nodes: int = 32, redundancy: int = 3, profile: str = "", transport: str = "libp2p") -> dict:
    t0 = time.perf_counter()
    for _ in range(CHAINS * LENGTH):
        run_python("output = sum(inputs.values()) + 1", {"x": 1}, 10)
    base = time.perf_counter() - t0
    res: dict = {"nodes": nodes, "transport": transport, "steps": CHAINS * LENGTH, "redundancy": redundancy,
                 "direct_sequential_s": round(base, 2)}
    with tempfile.TemporaryDirectory() as d:
        mesh = LocalMesh(Path(d), nodes, lambda i: ["--no-model", "--transport", transport])
        if profile:
            mesh.nodes[0].env["MESH_PROFILE"] = str(Path(profile).resolve())
        with mesh:
            t0, wall0 = time.perf_counter(), time.time()
            mesh.start(timeout=300)
            mesh.wait_ready(600)
            res["mesh_ready_s"] = round(time.perf_counter() - t0, 2)
            # when the last node had started (written its runtime file): what the rest of mesh_ready_s is
            # linking, with every process already paying for its start
            started = max((n.home / RUNTIME_FILE).stat().st_mtime for n in mesh.nodes)
            res["last_node_started_s"] = round(started - wall0, 2)
            res["linked_after_last_start_s"] = round(res["mesh_ready_s"] - res["last_node_started_s"], 2)
            client = mesh.nodes[0].client
            t0 = time.perf_counter()
            job_id = client.request("POST", "/jobs", {"job": job(redundancy)})["job_id"]
            while (report := client.request("GET", f"/jobs/{job_id}?wait=30", timeout=60))["status"] == "running":
                pass
            res["job_s"] = round(time.perf_counter() - t0, 2)
            res["job_status"] = report["status"]
            res["steps_done"] = sum(s["status"] == "done" for s in report["steps"].values())
            mem = [tree_memory(n.proc.pid) for n in mesh.nodes]
            res["rss_mib_per_node_mean"] = round(sum(m[0] for m in mem) / len(mem), 1)
            res["rss_mib_per_node_max"] = round(max(m[0] for m in mem), 1)
            res["uss_mib_per_node_mean"] = round(sum(m[1] for m in mem) / len(mem), 1)
            res["uss_mib_total"] = round(sum(m[1] for m in mem), 1)
    res["job_vs_direct_sequential"] = round(res["job_s"] / base, 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=32)
    ap.add_argument("--redundancy", type=int, default=3)
    ap.add_argument("--transport", choices=("libp2p", "tcp"), default="libp2p")
    ap.add_argument("--profile", metavar="FILE", help="profile the submitting node into FILE")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    emit(run(args.nodes, args.redundancy, args.profile or "", args.transport), args.json)
    if args.profile:
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
