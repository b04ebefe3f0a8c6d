"""Jobs survive their submitter: kill -9 it mid-job, start it again on the same home, and the job goes on
from its journal to the end — steps settled before the kill are not asked again, every worker is paid
once for each step and books exactly that (receipts through the outbox, acknowledged). A damaged
journal stops the node's start with one clear line."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import ROOT, cli_json, wait_for

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(300)]
LONG_JOB = {"name": "long", "steps": [
    {"id": f"s{i}", "kind": "python", "after": [f"s{i - 1}"] if i else [],
     "params": {"code": f"import time\ntime.sleep(0.6)\noutput = {i}"}} for i in range(5)]}


def entries(home: Path, kind: str) -> dict[tuple[str, str, str], list[float]]:
    db = sqlite3.connect(f"file:{home / 'ledger.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT job, step, peer, amount FROM entries WHERE kind=?", (kind,)).fetchall()
    finally:
        db.close()
    out: dict[tuple[str, str, str], list[float]] = {}
    for job, step, peer, amount in rows:
        out.setdefault((job, step, peer), []).append(amount)
    return out


def test_a_submitter_killed_mid_job_resumes_it_and_pays_each_worker_once(make_mesh):
    mesh = make_mesh(4, lambda i: ["--no-model"])
    client = mesh.nodes[0].client
    job_id = client.request("POST", "/jobs", {"job": LONG_JOB, "redundancy": 2})["job_id"]
    wait_for(lambda: client.request("GET", f"/jobs/{job_id}")["steps"]["s1"]["status"] == "done", 60, "s1 settled")
    before = client.request("GET", f"/jobs/{job_id}")
    assert before["status"] == "running"
    submitter = mesh.nodes[0]
    submitter.kill()
    submitter.proc.wait(10)
    submitter.start([])
    submitter.wait_started(60)
    submitter.info = None
    for other in mesh.nodes[1:]:
        other.info = None
    client = submitter.client
    rep = wait_for(lambda: (r := client.request("GET", f"/jobs/{job_id}?wait=2"))["status"] != "running" and r,
                   120, "the resumed job to end")
    assert rep["status"] == "done" and rep["resumed"] is True, rep
    assert [rep["steps"][f"s{i}"]["output"] for i in range(5)] == list(range(5))
    for sid in ("s0", "s1"):  # settled before the kill: the same answers, not asked again
        assert rep["steps"][sid]["replicas"] == before["steps"][sid]["replicas"]
    wait_for(lambda: client.request("GET", "/status")["receipts_unacknowledged"] == 0, 60, "every receipt acknowledged")

    paid = {k: v for k, v in entries(submitter.home, "paid").items() if k[0] == job_id}
    assert len(paid) == 10 and all(len(v) == 1 for v in paid.values()), paid  # 5 steps × 2 workers, once each
    for node in mesh.nodes[1:]:
        earned = entries(node.home, "earned")
        for (job, step, worker), amounts in paid.items():
            if worker == node.node_id:
                assert earned.get((job, step, submitter.node_id)) == [-amounts[0]], (job, step)

    submitter.stop()  # a clean restart: the ended job is listed from its saved report
    submitter.start([])
    submitter.wait_started(60)
    submitter.info = None
    (listed,) = [j for j in cli_json("jobs", "--home", str(submitter.home), "--json") if j["job_id"] == job_id]
    assert listed["status"] == "done" and listed["steps"] == 5 and listed["credits_spent"] == rep["credits_spent"]


def node_start(home: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mesh", "node", "--home", str(home), "--no-model",
                           "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_a_damaged_journal_stops_the_start_with_one_clear_line(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "journal.db").write_bytes(b"this is not a journal" * 300)
    t = time.monotonic()
    res = node_start(home)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert "journal" in line and "move it aside" in line, line
    assert time.monotonic() - t < 60  # refused before the actors and the network start


def test_a_worker_killed_mid_step_is_replaced_and_never_answers_twice(make_mesh):
    """kill -9 a worker while it runs a replica: the replica fails at once (its link is gone) and is
    placed elsewhere; the job ends done; the killed worker, started again, is paid nothing for the step
    it did not finish, and each worker that answered is paid once."""
    mesh = make_mesh(4, lambda i: ["--no-model"])
    client = mesh.nodes[0].client
    job = {"name": "slow", "steps": [{"id": "a", "kind": "python",
                                      "params": {"code": "import time\ntime.sleep(3)\noutput = 42"}}]}
    job_id = client.request("POST", "/jobs", {"job": job, "redundancy": 2})["job_id"]
    running = wait_for(lambda: [r["node"] for r in client.request("GET", f"/jobs/{job_id}")["steps"]["a"]["replicas"]
                                if not r["digest"] and "error" not in r] or None, 30, "a replica running")
    victim = next(n for n in mesh.nodes if n.node_id == running[0])
    victim.kill()
    victim.proc.wait(10)
    victim.start([mesh.nodes[0].listen])
    victim.wait_started(60)
    victim.info = None
    rep = wait_for(lambda: (r := client.request("GET", f"/jobs/{job_id}?wait=2"))["status"] != "running" and r,
                   90, "the job to end")
    assert rep["status"] == "done" and rep["steps"]["a"]["output"] == 42, rep
    replicas = rep["steps"]["a"]["replicas"]
    mine = [r for r in replicas if r["node"] == victim.node_id]
    assert len(mine) == 1 and mine[0].get("error") and not mine[0]["agreed"], mine  # failed; never a second answer
    wait_for(lambda: client.request("GET", "/status")["receipts_unacknowledged"] == 0, 60, "receipts acknowledged")
    paid = {k: v for k, v in entries(mesh.nodes[0].home, "paid").items() if k[0] == job_id}
    assert len(paid) == 2 and victim.node_id not in {w for _, _, w in paid}, paid
    assert not [k for k in entries(victim.home, "earned") if k[0] == job_id]
