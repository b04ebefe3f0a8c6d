"""Jobs as things a person manages from the CLI, against real nodes: one short id printed everywhere and any
unique prefix taken wherever an id is (an ambiguous one named in one line), a job the mesh cannot run refused
before it is submitted, Ctrl-C while waiting leaves the job running and says how to get back to it, and
`mesh cancel` pays the workers that had answered."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT, cli_json, run_cli, wait_for, write_job

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180)]
FAST = ["--no-model", "--transport", "tcp"]
STEP = {"id": "a", "kind": "python", "params": {"code": "output = 6 * 7"}}


def one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    err = res.stderr.strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1, (res.returncode, res.stderr)
    assert err.startswith("mesh: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_short_ids_prefixes_and_impossible_requests(make_mesh, tmp_path: Path):
    mesh = make_mesh(4, lambda i: FAST)
    home = str(mesh.nodes[0].home)
    job = write_job(tmp_path / "j.json", [STEP])
    # more replicas than the mesh has workers: refused before anything is submitted, saying what to do
    one_line_error(run_cli("submit", job, "--home", home, "--redundancy", "10", "--wait"),
                   "needs 10 workers", "offers 3", "--redundancy to 3", "mesh up --nodes 11")
    assert cli_json("jobs", "--home", home) == []  # nothing was submitted

    res = run_cli("submit", job, "--home", home, "--redundancy", "3")
    assert res.returncode == 0, res.stderr
    sid = res.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{8}", sid), res.stdout  # the short form
    rep = cli_json("job", sid[:4], "--home", home, "--wait")  # any unique prefix of 4 or more
    assert rep["job_id"].startswith(sid) and len(rep["job_id"]) == 20 and rep["status"] == "done"
    human = run_cli("job", sid, "--home", home)
    assert human.stdout.startswith(f"job {sid} (j): done"), human.stdout
    listed = run_cli("jobs", "--home", home)
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith(sid + " "))
    assert "done" in line and f"{rep['credits_spent']:.3f}" in line, listed.stdout
    assert cli_json("jobs", "--home", home)[0]["job_id"] == rep["job_id"]  # the full id stays in JSON

    # two saved reports sharing a prefix: an ambiguous prefix names them, in one line
    for jid in ("ffff0000aaaa00000000", "ffff1111bbbb00000000"):
        (mesh.nodes[0].home / "jobs" / f"{jid}.json").write_text(json.dumps(
            {"job_id": jid, "name": "old", "status": "done", "steps": {}, "created": 1.0}))
    one_line_error(run_cli("job", "ffff", "--home", home), "ambiguous", "ffff0000", "ffff1111")
    one_line_error(run_cli("cancel", "ffff", "--home", home), "ambiguous")
    one_line_error(run_cli("job", "fff", "--home", home), "at least 4")
    one_line_error(run_cli("job", "0000", "--home", home), "no job 0000", "mesh jobs")
    one_line_error(run_cli("cancel", "ffff0", "--home", home), "job ffff0000 has ended")


def test_a_node_with_no_peers_refuses_a_job_saying_so(make_mesh, tmp_path: Path):
    mesh = make_mesh(1, lambda i: FAST)
    job = write_job(tmp_path / "j.json", [STEP])
    one_line_error(run_cli("submit", job, "--home", str(mesh.nodes[0].home), "--redundancy", "2"),
                   "the mesh offers 0", "mesh status", "mesh up --nodes 3")


def test_ctrl_c_leaves_the_job_running_and_cancel_pays_what_was_answered(make_mesh, tmp_path: Path):
    """A unanimous step on three workers, one of them slow (--fault slow: it answers 30 s late): two
    answers are in and the step waits for the third. Ctrl-C in `mesh submit --wait` then says how to get
    back to the job and exits 130; `mesh cancel` fails the step, tells the slow worker to stop, and pays
    the two that answered, whose receipts reach them."""
    mesh = make_mesh(4, lambda i: FAST + (["--fault", "slow"] if i == 3 else []))
    home = str(mesh.nodes[0].home)
    job = write_job(tmp_path / "slow.json", [STEP], quorum="unanimous", redundancy=3)
    err_path = tmp_path / "stderr"
    with err_path.open("w") as err:
        # (as a terminal starts it: SIGINT at its default; a pytest-xdist worker ignores it, and an ignored
        # SIGINT is inherited, so Python would never raise KeyboardInterrupt in the CLI)
        proc = subprocess.Popen([sys.executable, "-m", "mesh", "submit", job, "--home", home, "--wait"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, stdin=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(lambda: err_path.read_text().count(" answered ") >= 2, 60, "two replicas answered")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    said = err_path.read_text()
    assert proc.returncode == 130, said
    assert "Traceback" not in said and out == "", said
    sid = re.search(r"^\[([0-9a-f]{8})\]", said, re.M).group(1)
    last = said.strip().splitlines()[-1]
    assert last == (f"mesh: job {sid} continues on the mesh; `mesh job {sid} --wait` follows it again, "
                    f"`mesh cancel {sid}` stops it"), said
    assert cli_json("job", sid, "--home", home)["status"] == "running"  # it did continue

    res = run_cli("cancel", sid, "--home", home, "--json")
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    step = rep["steps"]["a"]
    assert rep["status"] == "failed" and step["error"] == "cancelled by its submitter", rep
    paid = {r["node"]: r["credit"] for r in step["replicas"] if "credit" in r}
    fast = {n.node_id for n in mesh.nodes[1:3]}
    assert set(paid) == fast and all(c > 0 for c in paid.values()), step
    assert rep["credits_spent"] == pytest.approx(sum(paid.values()), abs=1e-6)
    history = cli_json("ledger", "history", "--home", home)
    entries = [e for e in history if e["job"] == rep["job_id"]]
    assert {e["peer"] for e in entries if e["kind"] == "paid"} == fast
    assert not [e for e in entries if e["kind"] != "paid"]  # no verdict: no quorum judged anyone
    for worker in mesh.nodes[1:3]:  # the receipts reach the workers
        wait_for(lambda w=worker: cli_json("ledger", "balance", "--home", str(w.home))["balance"] > 0, 30,
                 "the worker's receipt")
    assert cli_json("ledger", "balance", "--home", str(mesh.nodes[3].home))["balance"] == 0
    one_line_error(run_cli("cancel", sid, "--home", home), "has ended")
