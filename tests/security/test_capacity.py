"""A worker's capacity cannot be taken for free (issue 19 item 6), over real connections to real nodes.
The attack as found: four fresh keys filled all 16 step slots of a worker with 3600 s steps of 1 GiB
each, which kept running after the attackers were gone, and an honest submitter's steps were refused
`busy`. Now strangers share 4 slots on capped terms (60 s, 256 MiB), a submitter that did work for the
worker still gets its steps run at once, and a step stops when its requester disconnects."""

from __future__ import annotations

import psutil
import pytest

from mesh.wire.messages import StepRequest

from ..conftest import wait_for
from .hostile import HostilePeer, status, submit, wait_job, wait_paid

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(240)]

SLEEP = "import subprocess\nsubprocess.run(['sleep', '30'])\noutput = 1"  # its `sleep` shows the step running
HOG = "x = bytearray(400 << 20)\noutput = len(x)"
JOB = {"name": "honest", "steps": [{"id": "sum", "kind": "python", "params": {"code": "output = sum(range(10)) * 2"}}]}


def sandboxes(pid: int) -> int:
    """The node's python sandboxes (its warm ones included): bwrap processes not started by bwrap."""
    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    count = 0
    for p in procs:
        try:
            if p.name() == "bwrap" and p.parent().name() != "bwrap":
                count += 1
        except psutil.NoSuchProcess:
            pass
    return count


def sleeping(pid: int) -> int:
    """The SLEEP steps running on the node: their `sleep` processes. (Counting sandboxes stopped telling:
    a StepActor now starts its next sandbox once its step ends, so a node holds as many with a step
    running as idle.)"""
    count = 0
    for p in psutil.Process(pid).children(recursive=True):
        try:
            count += p.name() == "sleep"
        except psutil.NoSuchProcess:
            pass
    return count


def long_results(attackers: list[HostilePeer]) -> list[dict]:
    """The answers the attackers got to their long steps so far."""
    for evil in attackers:
        evil.expect(lambda f: False, 0.05)  # read what has come
    return [f["payload"] for e in attackers for f in e.received
            if f["kind"] == "result" and f["payload"]["job"].startswith("long")]


def test_fresh_keys_cannot_take_a_workers_slots_and_their_steps_stop_when_they_leave(make_mesh):
    mesh = make_mesh(3, lambda i: ["--no-model", "--no-scrape"])
    honest, worker, third = mesh.nodes
    # honest history: the worker submits, the honest node works for it (reciprocity), and is paid
    rep = wait_job(worker, submit(worker, JOB, 2))
    assert rep["status"] == "done" and honest.node_id in {r["node"] for r in rep["steps"]["sum"]["replicas"]}, rep
    wait_paid(mesh, rep)
    wait_for(lambda: status(worker)["worker"]["known"] == 0, 10, "the worker idle")
    wait_for(lambda: sandboxes(worker.proc.pid), 20, "the worker's warm sandboxes")
    key = bytes.fromhex(status(worker)["key"])

    attackers = [HostilePeer(worker.listen) for _ in range(4)]
    try:
        for evil in attackers:
            evil.handshake(key)
        # a stranger's step runs with capped terms, whatever it asked: 400 MiB fails at 256
        attackers[0].send(attackers[0].seal("step", key, StepRequest("hog", "h", "python", {"code": HOG}, 3600.0)))
        hog = attackers[0].expect(lambda f: f["kind"] == "result" and f["payload"]["job"] == "hog", 60)
        assert hog is not None and not hog["payload"]["ok"], hog
        assert "MemoryError" in hog["payload"]["error"] and "256 MiB" in hog["payload"]["error"]
        assert "asked 3600 s" in hog["payload"]["error"]  # ... and 60 s
        for i, evil in enumerate(attackers):  # 16 long steps: all the slots there are
            for s in range(4):
                evil.send(evil.seal("step", key, StepRequest(f"long{i}", f"s{s}", "python", {"code": SLEEP}, 3600.0)))
        busy = wait_for(lambda: len(got := long_results(attackers)) >= 12 and got, 30, "12 of the 16 refused")
        assert len(busy) == 12 and all("busy: requesters that have not worked for this node" in b["error"] for b in busy)
        use = wait_for(lambda: (w := status(worker)["worker"])["stranger"] == 4 and w, 20, "4 stranger slots held")
        assert use["known"] == 0 and use["stranger_max"] == 4
        wait_for(lambda: sleeping(worker.proc.pid) == 4, 20, "the 4 attacker steps running")

        for evil in attackers:  # still here (a peer silent for 20 s is dropped)
            evil.send(evil.hello_frame(key))
        # the honest submitter, known to the worker, still gets its job done there, promptly
        rep = wait_job(honest, submit(honest, JOB, 2), timeout=30)
        replicas = {r["node"]: r for r in rep["steps"]["sum"]["replicas"]}
        assert rep["status"] == "done" and replicas[worker.node_id]["agreed"], rep
        assert status(worker)["worker"]["stranger"] == 4  # the attackers' steps were still running
    finally:
        for evil in attackers:
            evil.close()
    # gone: their steps stop (the sandboxes killed), long before their 30 s are up
    wait_for(lambda: status(worker)["worker"]["stranger"] == 0, 10, "the attackers' slots freed")
    wait_for(lambda: sleeping(worker.proc.pid) == 0, 10, "the attackers' steps gone")
    assert status(worker)["rejected"].get("busy", 0) >= 12


def test_a_cancelled_job_stops_its_steps_on_the_workers(make_mesh):
    """`mesh cancel`: the job's unsettled steps fail at once, and its workers, told, stop what they run."""
    from ..conftest import cli_json, run_cli

    mesh = make_mesh(3, lambda i: ["--no-model", "--no-scrape"])
    sub, workers = mesh.nodes[0], mesh.nodes[1:]
    for w in workers:
        wait_for(lambda w=w: sandboxes(w.proc.pid), 20, "warm sandboxes")
    job_id = submit(sub, {"name": "long", "timeout": 120, "steps": [
        {"id": "nap", "kind": "python", "params": {"code": SLEEP}}]}, 2)
    for w in workers:
        wait_for(lambda w=w: sleeping(w.proc.pid) == 1, 30, f"{w.home.name} running the step")
    rep = cli_json("cancel", job_id, "--home", str(sub.home))
    assert rep["status"] == "failed" and rep["steps"]["nap"]["error"] == "cancelled by its submitter", rep
    for w in workers:  # long before the step's 30 s are up
        wait_for(lambda w=w: sleeping(w.proc.pid) == 0, 10, f"{w.home.name}'s step stopped")
    again = run_cli("cancel", job_id, "--home", str(sub.home))
    assert again.returncode == 2 and "has ended" in again.stderr



@pytest.mark.llm
def test_a_cancelled_llm_step_stops_generating_on_its_workers(make_mesh):
    """An llm step stops within a few tokens of its job's cancel: the workers' model runners (one each, so
    a step still generating would hold up the next) take a short step at once afterwards."""
    import time

    from ..conftest import cli_json

    mesh = make_mesh(3, lambda i: ["--no-scrape"] + (["--no-model"] if i == 0 else []))  # node 0 only submits
    sub = mesh.nodes[0]
    job_id = submit(sub, {"name": "long", "timeout": 300, "steps": [
        {"id": "story", "kind": "llm", "params": {"prompt": "Once upon a time", "max_tokens": 1500}}]}, 2)

    def streaming() -> bool:
        reps = sub.client.request("GET", f"/jobs/{job_id}")["steps"]["story"]["replicas"]
        return sum("partial" in r for r in reps) == 2

    wait_for(streaming, 90, "both replicas generating")
    rep = cli_json("cancel", job_id, "--home", str(sub.home))
    assert rep["steps"]["story"]["error"] == "cancelled by its submitter", rep
    t0 = time.monotonic()
    short = submit(sub, {"name": "short", "steps": [
        {"id": "word", "kind": "llm", "params": {"prompt": "The capital of France is", "max_tokens": 4}}]}, 2)
    done = wait_job(sub, short, 120)
    took = time.monotonic() - t0
    assert done["status"] == "done", done
    # 1,500 tokens take minutes here; the short step waited for nothing
    assert took < 20, f"the next llm step took {took:.1f} s: the cancelled one was still generating"
