"""Credits on a local mesh (issue 25, item 2): `mesh up` passes node options through and starts nodes with
a credit line that fits a demo, and `mesh submit` says what a job may cost before it spends, refusing
above --max-cost."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.cli.local import LocalNode
from mesh.cli.main import UP_CREDIT_LINE
from mesh.errors import UserError

from ..conftest import ROOT, kill_all, run_cli, stop_session, tree_pids, wait_for, write_job

pytestmark = pytest.mark.timeout(240)

FAST = ["--transport", "tcp"]
# about 0.3 CPU-seconds of work, a whole demo job's python step many times over: at the default card (1 a
# CPU-second) 20 such jobs at redundancy 2 cost about 12 credits, past a lone node's credit line of 10
BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3:\n    pass\noutput = inputs or 1"


class UpMesh:
    """`mesh up` run as a user runs it, stopped (with every process it started) by pid."""

    __test__ = False

    def __init__(self, directory: Path, nodes: int, *args: str):
        self.directory, self.log = directory, directory.parent / f"{directory.name}.out"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "mesh", "up", "--nodes", str(nodes), "--dir",
                                          str(directory), *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.nodes = [LocalNode(directory / f"node{i}") for i in range(nodes)]
        self.pids: list[int] = []

    def wait_ready(self, timeout: float = 120) -> str:
        def ready() -> str:
            assert self.proc.poll() is None, self.log.read_text()
            text = self.log.read_text()
            return text if "try: " in text else ""

        text = wait_for(ready, timeout, "mesh up's try: line")
        self.pids = [pid for n in self.nodes for pid in tree_pids(n.runtime().pid)]
        return text

    def stop(self) -> None:
        stop_session(self.proc, sig=signal.SIGTERM)  # mesh up stops its nodes
        kill_all(self.pids)


@pytest.fixture
def up(tmp_path: Path):
    started: list[UpMesh] = []

    def start(nodes: int, *args: str) -> UpMesh:
        mesh = UpMesh(tmp_path / f"up{len(started)}", nodes, *args)
        started.append(mesh)
        return mesh

    yield start
    for mesh in started:
        mesh.stop()


@pytest.mark.mesh
def test_up_passes_node_options_to_every_node(up):
    mesh = up(2, "--no-model", "--", *FAST, "--credit-line", "123", "--spot-rate", "0.25", "--scrape-allow",
              "127.0.0.1")
    text = mesh.wait_ready()
    assert "each node may spend 123 credits more than it earns" in text, text
    for node in mesh.nodes:
        st = node.client.request("GET", "/status")
        assert (st["credit_line"], st["spot_rate"], st["transport"]) == (123, 0.25, "tcp"), st


def test_up_refuses_a_bad_node_option_in_one_line(tmp_path: Path):
    for args, says in ((["--credit-line", "lots"], "--credit-line: invalid float value: 'lots'"),
                       (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
                       (["--home", "x"], "mesh up sets --home for each node itself"),
                       (["--bootstrap=127.0.0.1:1"], "mesh up sets --bootstrap for each node itself")):
        res = run_cli("up", "--dir", str(tmp_path / "never"), "--", *args, timeout=60)
        assert res.returncode == 2, res
        assert res.stderr.count("\n") == 1 and says in res.stderr, res.stderr
        assert not (tmp_path / "never").exists()  # refused before any node started


@pytest.fixture
def workers(make_mesh):
    """node0 submits, two work (python only: fast)."""
    return make_mesh(3, lambda i: ["--no-model", *FAST])


@pytest.mark.mesh
def test_submit_prints_the_estimate_and_adds_it_to_json(workers, tmp_path: Path):
    home = str(workers.nodes[0].home)
    job = write_job(tmp_path / "j.json", [{"id": "a", "kind": "python", "params": {"code": "output = 1"}}],
                    timeout=10)
    res = run_cli("submit", job, "--home", home, "--redundancy", "2", "--wait", "--json")
    assert res.returncode == 0, res.stderr
    # python: 10 CPU-seconds (the job's timeout) × 1 credit (the workers' default card) × 4 replicas at most
    assert "estimated cost: at most 40 credits" in res.stderr.splitlines(), res.stderr
    report = json.loads(res.stdout)
    assert report["estimated_cost"] == 40 and report["status"] == "done"
    assert 0 < report["credits_spent"] <= 40


@pytest.mark.mesh
def test_submit_above_max_cost_is_refused_and_nothing_submitted(workers, tmp_path: Path):
    home = str(workers.nodes[0].home)
    job = write_job(tmp_path / "j.json", [{"id": "a", "kind": "python", "params": {"code": "output = 1"}}],
                    timeout=10)
    res = run_cli("submit", job, "--home", home, "--redundancy", "2", "--max-cost", "39.5", "--wait")
    assert res.returncode == 2, res
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mesh: error: estimated cost of at most 40 credits is above "
                                                   "--max-cost 39.5; nothing submitted (dearest steps: a "), lines
    assert workers.nodes[0].client.request("GET", "/jobs", shape=list) == []
    ok = run_cli("submit", job, "--home", home, "--redundancy", "2", "--max-cost", "40")
    assert ok.returncode == 0, ok.stderr
    assert len(workers.nodes[0].client.request("GET", "/jobs", shape=list)) == 1


@pytest.mark.mesh
def test_a_mesh_up_runs_twenty_demo_jobs_without_hitting_its_credit_line(up, tmp_path: Path):
    mesh = up(3, "--no-model", "--", *FAST)
    mesh.wait_ready()
    client = mesh.nodes[0].client
    assert client.request("GET", "/status")["credit_line"] == UP_CREDIT_LINE
    job = json.loads(Path(write_job(tmp_path / "demo.json", [
        {"id": "facts", "kind": "python", "params": {"code": BUSY}},
        {"id": "sum", "kind": "python", "after": ["facts"], "params": {"code": "output = inputs['facts']"}}],
        redundancy=2, timeout=30)).read_text())
    t0 = time.monotonic()
    for i in range(20):  # one after another, as a newcomer does: each submit checks the balance afresh
        try:
            job_id = client.request("POST", "/jobs", {"job": job})["job_id"]
        except UserError as exc:  # 402 past the credit line
            pytest.fail(f"job {i + 1} of 20 refused: {exc}")
        report = wait_for(lambda path=f"/jobs/{job_id}": (r := client.request("GET", path))["status"] != "running"
                          and r, 60, f"job {i + 1}")
        assert report["status"] == "done", report
    balance = client.request("GET", "/status")["balance"]
    assert balance < -10, balance  # past a lone node's line: 20 such jobs were refused before
    print(f"20 jobs in {time.monotonic() - t0:.1f} s, balance {balance}")
