"""What `mesh node --max-cpu` does to a CPU-bound step: a python step spinning for a fixed wall time, in one
process and in two (it forks), run on a real worker with no cap (the baseline, in the same run) and under
each cap. The figure is the CPU-seconds the kernel counted for the step's group, and the ratio to the
uncapped run's. Needs root and cgroup v1's cpu controller (as the cap itself does).

    python -m bench.owner_cap [--spin 2] [--caps 50%,25%] [--json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mesh.cli.local import LocalMesh

from .report import emit


def spin_code(seconds: float, procs: int) -> str:
    """A step whose `procs` processes each spin for `seconds` of wall time."""
    return (f"import os, time\nkids = [os.fork() for _ in range({procs - 1})] if {procs} > 1 else []\n"
            "def spin():\n    t = time.time()\n    n = 0\n"
            f"    while time.time() - t < {seconds}:\n        n += 1\n    return n\n"
            "if 0 in kids:\n    spin()\n    os._exit(0)\n"
            "n = spin()\nfor k in kids:\n    os.waitpid(k, 0)\noutput = n")


def cpu_s(mesh: LocalMesh, seconds: float, procs: int) -> float:
    client = mesh.nodes[0].client
    step = {"id": "spin", "kind": "python", "params": {"code": spin_code(seconds, procs)}}
    job = client.request("POST", "/jobs", {"job": {"name": "spin", "redundancy": 1, "steps": [step]}})["job_id"]
    deadline = time.monotonic() + 120
    while (rep := client.request("GET", f"/jobs/{job}?wait=30", timeout=60))["status"] == "running":
        if time.monotonic() > deadline:
            raise RuntimeError("the spin job did not end in 120 s")
    if rep["status"] != "done":
        raise RuntimeError(f"the spin job failed: {rep['steps']['spin'].get('error')}")
    return rep["steps"]["spin"]["replicas"][0]["work"]["cpu_s"]


def run(seconds: float, caps: list[str]) -> dict:
    res: dict = {"spin_s": seconds}
    for cap in ["none", *caps]:
        with tempfile.TemporaryDirectory() as d:
            mesh = LocalMesh(Path(d), 2, lambda i, cap=cap: ["--no-model", "--transport", "tcp"] + (
                ["--max-cpu", cap] if i == 1 and cap != "none" else []))
            mesh.start()
            try:
                mesh.wait_ready()
                for procs in (1, 2):
                    res[f"cpu_s_{cap}_{procs}p"] = round(cpu_s(mesh, seconds, procs), 3)
            finally:
                mesh.stop()
    for cap in caps:
        for procs in (1, 2):
            res[f"cpu_{cap}_vs_none_{procs}p"] = round(res[f"cpu_s_{cap}_{procs}p"] / res[f"cpu_s_none_{procs}p"], 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spin", type=float, default=2.0, help="seconds of wall time each process spins")
    ap.add_argument("--caps", default="50%,25%", help="comma-separated --max-cpu values (default 50%%,25%%)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    emit(run(args.spin, args.caps.split(",")), args.json)


if __name__ == "__main__":
    main()
