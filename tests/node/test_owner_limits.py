"""The owner's limits (issue 24): `mesh node --max-cpu` puts every python step of peers under one CPU quota,
on real nodes. A step that spins for a fixed wall time gets at most the cap's CPU-seconds, as the kernel
counted them in the step's own group; the cap's group exists while the node runs and is gone after."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mesh.steps.cgroup import CAP_NAME, ROOT

from ..conftest import run_cli, wait_for

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(240)]

SPIN_S = 2.0
SPIN = {"id": "spin", "kind": "python", "params": {"code": (
    "import time\nt = time.time()\nn = 0\n"
    f"while time.time() - t < {SPIN_S}:\n    n += 1\n"
    "output = n")}}
CPU_V1 = (ROOT / "cpu" / "cgroup.procs").exists() and not (ROOT / "cgroup.controllers").exists()
needs_cpu_cgroup = pytest.mark.skipif(not (CPU_V1 and os.geteuid() == 0), reason="needs root and cgroup v1's cpu controller")


def spin_on(mesh) -> dict:
    client = mesh.nodes[0].client
    job = client.request("POST", "/jobs", {"job": {"name": "spin", "redundancy": 1, "steps": [SPIN]}})["job_id"]
    rep = client.request("GET", f"/jobs/{job}?wait=60", timeout=90)
    assert rep["status"] == "done", rep
    return rep["steps"]["spin"]


def caps() -> list[Path]:
    return sorted((ROOT / "cpu").glob(CAP_NAME + "*"))


@needs_cpu_cgroup
def test_max_cpu_holds_a_spinning_step_to_its_share_and_goes_with_the_node(make_mesh):
    before = set(caps())
    # 25% of this machine: on 2 CPUs, half a CPU for everything peers run here
    mesh = make_mesh(2, lambda i: ["--no-model", "--transport", "tcp"] + (["--max-cpu", "25%"] if i == 1 else []))
    worker = mesh.nodes[1]
    status = worker.client.request("GET", "/status")
    assert status["max_cpu"] == 0.25
    mine = [p for p in caps() if p not in before]
    assert len(mine) == 1, mine
    quota = int((mine[0] / "cpu.cfs_quota_us").read_text())
    period = int((mine[0] / "cpu.cfs_period_us").read_text())
    allowed = quota / period  # CPUs' worth per second
    assert allowed == pytest.approx(0.25 * (os.cpu_count() or 1))

    step = spin_on(mesh)
    (replica,) = step["replicas"]
    # the kernel held the cap's group back (the sandbox sees its own cgroup namespace, so this is read here)
    stat = dict(line.split() for line in (mine[0] / "cpu.stat").read_text().splitlines())
    assert int(stat["nr_throttled"]) > 0, stat
    cpu_s = replica["work"]["cpu_s"]
    # the kernel's count for the step's group: at most the quota over the spin (10% for the period's edges)
    assert 0 < cpu_s <= allowed * SPIN_S * 1.1 + 0.05, (cpu_s, allowed)
    print(f"--max-cpu 25%: a {SPIN_S:g} s spin used {cpu_s:.3f} CPU-s (cap {allowed * SPIN_S:.2f})")

    mesh.stop()
    wait_for(lambda: mine[0] not in caps(), 15, "the node's CPU cap group to be removed")


def test_max_cpu_refuses_a_bad_share_before_starting(tmp_path):
    for bad in ("0", "101%", "half"):
        res = run_cli("node", "--home", str(tmp_path / "h"), "--max-cpu", bad, timeout=30)
        assert res.returncode == 2 and "--max-cpu" in res.stderr and "Traceback" not in res.stderr, res.stderr
