"""A full disk under the ledger and the job journal: a clear error, no paid work accepted afterwards,
nothing corrupt, nothing silently lost across a restart; a read-only home is one clear line."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from mesh.cli.local import LocalMesh
from mesh.errors import UserError

from ..conftest import cli_json, run_cli, wait_for

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180),
              pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")]

JOB = {"steps": [{"id": "a", "kind": "python", "params": {"code": "output = 7"}}]}


@pytest.fixture
def small_disk(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: the error comes from write, not from close
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_full_disk_stops_paid_work_and_corrupts_nothing(small_disk: Path, tmp_path: Path, fork_node):
    mesh = LocalMesh(tmp_path / "m", 4, lambda i: ["--no-model"], launch=fork_node)
    mesh.nodes[0].home = small_disk / "node0"
    try:
        mesh.start()
        mesh.wait_ready(60)
        client = mesh.nodes[0].client

        def run_job():
            job_id = client.request("POST", "/jobs", {"job": JOB, "redundancy": 3})["job_id"]
            return wait_for(lambda: (r := client.request("GET", f"/jobs/{job_id}?wait=2"))["status"] != "running"
                            and r, 60, "the job")

        assert run_job()["credits_spent"] > 0
        filler = fill(small_disk)
        # whichever file meets the full disk first says so: the journal refuses the job before it runs
        # (HTTP 503), or the job runs and the ledger refuses its payments (none made)
        try:
            job_id = client.request("POST", "/jobs", {"job": JOB, "redundancy": 3})["job_id"]
        except UserError as exc:
            assert "journal" in str(exc) and "free disk space" in str(exc), exc
            job_id = None
        else:
            rep = wait_for(lambda: (r := client.request("GET", f"/jobs/{job_id}?wait=2"))["status"] != "running"
                           and r, 60, "the job")
            assert rep["status"] == "done" and rep["credits_spent"] == 0
            assert "did not record its payments" in rep["payment_error"]
        st = cli_json("status", "--home", str(mesh.nodes[0].home))
        assert "full" in (st["ledger_error"] or "") + (st["journal_error"] or ""), st
        job = tmp_path / "j.json"
        job.write_text(__import__("json").dumps(JOB))
        res = run_cli("submit", str(job), "--home", str(mesh.nodes[0].home), "--redundancy", "3")
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert "cannot record payments" in res.stderr or "new jobs are refused" in res.stderr, res.stderr
        filler.unlink()
        mesh.stop()
        res = run_cli("ledger", "verify", "--home", str(mesh.nodes[0].home))
        assert res.returncode == 0, res.stdout  # nothing half-written
        assert shutil.disk_usage(small_disk).free > 0

        # no silent loss: started again with room on its disk, the node still knows the job it ran while
        # the disk was full (from its journal, or its saved report) and takes paid work again
        mesh.start()
        mesh.wait_ready(60)
        client = mesh.nodes[0].client
        if job_id is not None:
            again = wait_for(lambda: (r := client.request("GET", f"/jobs/{job_id}?wait=2"))["status"] != "running"
                             and r, 60, "the job run on a full disk, after the restart")
            assert again["status"] == "done" and again["steps"]["a"]["output"] == 7
        assert cli_json("status", "--home", str(mesh.nodes[0].home))["journal_error"] is None
        assert run_job()["credits_spent"] > 0
    finally:
        mesh.stop()


BUSY = "import time\nt = time.time()\nx = 0\nwhile time.time() - t < {s}:\n    x += 1\noutput = {v}"
TWO_STEPS = {"steps": [
    {"id": "a", "kind": "python", "params": {"code": BUSY.format(s=4, v="{'v': 7}")}},
    {"id": "b", "kind": "python", "after": ["a"], "params": {"code": BUSY.format(s=2, v="inputs['a']['v'] * 6")}}]}


def booked(home: Path, kind: str, job: str) -> dict[tuple[str, str], float]:
    """(step, peer) → amount of the ledger's `kind` rows for `job` (read-only: the node may run)."""
    db = sqlite3.connect(f"file:{home / 'ledger.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT step, peer, amount FROM entries WHERE job=? AND kind=?", (job, kind)).fetchall()
    finally:
        db.close()
    return {(step, peer): abs(amount) for step, peer, amount in rows}


def test_a_journal_that_fills_mid_job_holds_the_job_and_pays_exactly_what_workers_get(tmp_path: Path, fork_node):
    """Found by this project's red team (2026-12-06): the disk filled for a second during a running job.
    The journal stopped, the job ran on unjournaled, and the ledger (the disk free again) booked payments
    whose receipts the outbox never kept: workers were never paid. Restarted, the node ran step b again at
    other prices (the attacker measured 9.003 paid against 6.272 earned). Now what the core decides
    without a journal never leaves the node; the job goes on from the journal at the next start."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], check=True)
    mesh = LocalMesh(tmp_path / "m", 4, lambda i: ["--no-model"], launch=fork_node)
    mesh.nodes[0].home = mnt / "node0"
    submitter = mesh.nodes[0]
    try:
        mesh.start()
        mesh.wait_ready(60)
        job_id = submitter.client.request("POST", "/jobs", {"job": TWO_STEPS, "redundancy": 3})["job_id"]
        time.sleep(1.0)  # (step a runs for 4 s: the disk fills in the middle of it)
        filler = fill(mnt)
        wait_for(lambda: cli_json("status", "--home", str(submitter.home))["journal_error"], 30, "the journal's error")
        filler.unlink()
        time.sleep(8)  # step a answered meanwhile: nothing of it may be paid unkept
        assert booked(submitter.home, "paid", job_id) == {}
        submitter.stop()
        submitter.start([mesh.nodes[1].listen])
        mesh.wait_ready(60)
        rep = wait_for(lambda: (r := submitter.client.request("GET", f"/jobs/{job_id}?wait=2"))["status"] != "running"
                       and r, 90, "the job, after the restart")
        assert rep["status"] == "done" and rep["steps"]["b"]["output"] == 42, rep
        paid = booked(submitter.home, "paid", job_id)
        assert len(paid) == 6, paid

        def earned() -> dict[tuple[str, str], float]:
            return {(step, node.node_id): amount for node in mesh.nodes[1:]
                    for (step, _payer), amount in booked(node.home, "earned", job_id).items()}
        wait_for(lambda: earned() == paid, 60, f"every worker's receipt for what it was paid ({paid})")
        print(f"paid {sum(paid.values()):.6f}, earned {sum(earned().values()):.6f} for {len(paid)} replicas")
    finally:
        mesh.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_read_only_home_is_one_clear_line_at_start(tmp_path: Path):
    home = tmp_path / "home"
    assert run_cli("init", "--home", str(home)).returncode == 0
    subprocess.run(["mount", "--bind", str(home), str(home)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(home)], check=True)
        res = run_cli("node", "--home", str(home), "--no-model", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0",
                      timeout=60)
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert "must be writable" in line and str(home) in line, line

