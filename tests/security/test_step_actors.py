"""Python steps on a real worker: one StepActor process runs step after step, each in a sandbox of its own
(actors/node_actor.py, NodeActor._done_with). A new actor forked for every step put that fork and a
Thespian actor's set-up on every step's path (bench.mesh_jobs: one-step jobs at r=3 took 0.12-0.16 s,
0.09 s with the actors kept). What must not change with it: nothing one step leaves behind (a file, a
process, its environment) reaches the next step run by the same actor."""

from __future__ import annotations

import psutil
import pytest

from .hostile import submit, wait_job

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180)]

PROBE = """import os, subprocess
others = [p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()
          and 'sleep' in open(f'/proc/{p}/cmdline').read()]
output = {'left': os.path.exists('/tmp/left-by-a-step'), 'env': os.environ.get('LEFT_BY_A_STEP', ''), 'n': N,
          'sleepers': len(others)}
open('/tmp/left-by-a-step', 'w').write('x')
os.environ['LEFT_BY_A_STEP'] = 'yes'
subprocess.Popen(['sleep', '300'])
"""


def step_actors(pid: int) -> set[int]:
    """The node's StepActor processes now (named hm-step; not a sandbox being started, which is named
    so too between its fork and its exec)."""
    found = set()
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if p.name() == "hm-step" and p.parent().name() != "hm-step":
                found.add(p.pid)
        except (psutil.NoSuchProcess, AttributeError):
            pass
    return found


def test_one_step_actor_runs_step_after_step_and_no_step_sees_what_the_last_one_left(make_mesh):
    mesh = make_mesh(2, lambda i: ["--no-model", "--no-scrape"])
    submitter, worker = mesh.nodes
    actors = step_actors(worker.proc.pid)
    outputs = []
    for n in range(8):
        job = {"name": f"probe{n}", "steps": [{"id": "p", "kind": "python",
                                               "params": {"code": PROBE.replace("N", str(n))}}]}
        rep = wait_job(submitter, submit(submitter, job, 1))
        assert rep["status"] == "done", rep["steps"]
        assert rep["steps"]["p"]["replicas"][0]["node"] == worker.node_id
        outputs.append(rep["steps"]["p"]["output"])
        actors |= step_actors(worker.proc.pid)
    assert [o["n"] for o in outputs] == list(range(8))
    # each step: no file, no process and no environment left by the one before it
    assert all(o == {"left": False, "env": "", "n": o["n"], "sleepers": 0} for o in outputs), outputs
    assert len(actors) <= 3, actors  # a new one a step: 2 warm + 8
    gone = [p for p in psutil.Process(worker.proc.pid).children(recursive=True)
            if p.is_running() and p.name() == "sleep"]
    assert not gone, gone  # the steps' background processes died with their sandboxes
