"""End to end on real node processes on loopback: real actors, sandbox, model and SQLite ledgers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from mesh.node.home import RuntimeInfo
from mesh.node.p2p.client import BlockingLink
from mesh.wire.identity import Identity

from ..conftest import ROOT, cli_json, model_holders, run_cli, tree_pids, wait_for, write_job

pytestmark = pytest.mark.mesh

PY_STEP = {"id": "sum", "kind": "python", "params": {"code": "output = sum(range(10)) * 2"}}


def balances(mesh) -> list[float]:
    return [cli_json("ledger", "balance", "--home", str(n.home))["balance"] for n in mesh.nodes]


@pytest.mark.timeout(300)
@pytest.mark.llm
def test_python_and_llm_job_at_r3(make_mesh, tmp_path: Path):
    """Submitter + 3 workers: each step runs on 3 distinct other nodes, all agree, output flows on."""
    mesh = make_mesh(4, lambda i: ["--no-model"] if i == 0 else [])  # the submitter never works for itself
    job = write_job(tmp_path / "job.json", [
        {"id": "nums", "kind": "python", "params": {"code": "output = {'a': 6, 'b': 7, 'prod': 6 * 7}"}},
        {"id": "say", "kind": "llm", "params": {"prompt": "Numbers: {nums.output}\nThe capital of France is",
                                                  "max_tokens": 8}},
    ])
    rep = cli_json("submit", job, "--home", str(mesh.nodes[0].home), "--redundancy", "3", "--wait", timeout=240)
    assert rep["status"] == "done", rep
    assert set(rep) >= {"job_id", "status", "steps"}
    submitter = mesh.nodes[0].node_id
    workers = {n.node_id for n in mesh.nodes[1:]}
    for sid in ("nums", "say"):
        step = rep["steps"][sid]
        assert step["status"] == "done"
        assert set(step) >= {"status", "output", "digest", "replicas"}
        nodes = [r["node"] for r in step["replicas"]]
        assert len(nodes) == 3 and set(nodes) == workers and submitter not in nodes
        assert all(r["agreed"] and r["digest"] == step["digest"] for r in step["replicas"])
    assert rep["steps"]["nums"]["output"] == {"a": 6, "b": 7, "prod": 42}
    assert isinstance(rep["steps"]["say"]["output"], str) and rep["steps"]["say"]["output"].strip()

    # ledgers: the submitter paid, every worker earned the same, every chain verifies
    # each worker books its two receipts as they reach it: wait for all of them, not the first of each
    # (CI read 0.09 on one worker before its second receipt landed); a real mismatch times out
    bal = wait_for(lambda: (b := balances(mesh)) and b[1] == b[2] == b[3] > 0 and abs(sum(b)) < 1e-9 and b,
                   30, "every worker's receipts to land and match what the submitter paid")
    assert bal[0] < 0
    for n in mesh.nodes:
        res = run_cli("ledger", "verify", "--home", str(n.home))
        assert res.returncode == 0, res.stdout + res.stderr
    peers = cli_json("ledger", "peers", "--home", str(mesh.nodes[0].home))
    assert {p["node"] for p in peers} == workers
    assert all(0 <= p["reputation"] <= 1 and p["agreed"] == 2 and p["disagreed"] == 0 for p in peers)


@pytest.mark.timeout(240)
def test_wrong_node_is_outvoted_earns_nothing_and_ranks_last(make_mesh, tmp_path: Path):
    mesh = make_mesh(5, lambda i: ["--no-model"] + (["--fault", "wrong"] if i == 4 else []))
    bad = mesh.nodes[4].node_id
    job = write_job(tmp_path / "job.json", [PY_STEP])
    picked_bad = 0
    paid: set[str] = set()
    # the first job goes to all four workers: at r=3 a new id draws a fifth of a proven one's weight, so a
    # bad node left out of the first job was left out of all twelve about once in 260 runs (it was, in CI)
    for i in range(12):
        r = "4" if i == 0 else "3"
        rep = cli_json("submit", job, "--home", str(mesh.nodes[0].home), "--redundancy", r, "--wait")
        assert rep["status"] == "done", rep
        step = rep["steps"]["sum"]
        assert step["output"] == 90
        for r in step["replicas"]:
            assert r["agreed"] == (r["node"] != bad)
        paid |= {r["node"] for r in step["replicas"] if r["agreed"]}
        picked_bad += any(r["node"] == bad for r in step["replicas"])
        if picked_bad >= 2:
            break
    assert picked_bad >= 1, "the faulty node was never placed"
    ids = [n.node_id for n in mesh.nodes]
    wait_for(lambda: all(b > 0 for n, b in zip(ids, balances(mesh), strict=True) if n in paid), 30, "honest workers' receipts")
    assert balances(mesh)[4] == 0
    ranking = cli_json("ledger", "peers", "--home", str(mesh.nodes[0].home))
    assert ranking[-1]["node"] == bad
    assert ranking[-1]["disagreed"] == picked_bad and ranking[-1]["agreed"] == 0
    assert ranking[-1]["reputation"] < min(p["reputation"] for p in ranking[:-1])


@pytest.mark.timeout(120)
def test_only_the_peer_port_listens_beyond_loopback(tmp_path: Path):
    """Thespian's admin and actor ports, and the API, must all be on 127.0.0.1 (docs/ARCHITECTURE.md, the process model)."""
    home = tmp_path / "n"
    proc = subprocess.Popen([sys.executable, "-m", "mesh", "node", "--home", str(home), "--no-model",
                             "--listen", "0.0.0.0:0", "--api", "127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
    try:
        wait_for(lambda: (home / "node.json").exists(), 60, "the node to be ready")
        peer_port = int(RuntimeInfo.read(home).listen.rpartition(":")[2])
        pids = tree_pids(proc.pid)
        assert len(pids) >= 4, "expected the node, the Thespian admin and the node's actors"
        listeners = wait_for(lambda: [(p, c.laddr) for p in pids for c in psutil.Process(p).net_connections("tcp")
                                      if c.status == psutil.CONN_LISTEN] or None, 10, "listeners")
        outside = {addr.port for _, addr in listeners if addr.ip not in ("127.0.0.1", "::1")}
        assert outside == {peer_port}, listeners
        assert len({addr.port for _, addr in listeners}) >= 4  # peer, API, admin, actors all seen
    finally:
        import os
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


@pytest.mark.timeout(180)
def test_killed_worker_mid_job_lets_the_others_finish(make_mesh, tmp_path: Path):
    mesh = make_mesh(4, lambda i: ["--no-model"])
    slow = write_job(tmp_path / "slow.json", [
        {"id": "nap", "kind": "python", "params": {"code": "import time\ntime.sleep(4)\noutput = 'rested'"}}])
    client = mesh.nodes[0].client
    job_id = client.request("POST", "/jobs", {"job": json.loads(Path(slow).read_text()), "redundancy": 3})["job_id"]
    wait_for(lambda: len(client.request("GET", f"/jobs/{job_id}")["steps"]["nap"]["replicas"]) == 3, 20,
             "3 replicas dispatched")
    victim = mesh.nodes[3]
    victim.kill()
    rep = wait_for(lambda: (r := client.request("GET", f"/jobs/{job_id}?wait=2")) and r["status"] != "running" and r,
                   60, "the job to end")
    assert rep["status"] == "done", rep
    step = rep["steps"]["nap"]
    assert step["output"] == "rested"
    agreed = {r["node"] for r in step["replicas"] if r["agreed"]}
    assert len(agreed) == 2 and victim.node_id not in agreed

    # now too few remain: kill one more worker mid-step → the step fails and says why
    job_id = client.request("POST", "/jobs", {"job": json.loads(Path(slow).read_text()), "redundancy": 2})["job_id"]
    wait_for(lambda: len(client.request("GET", f"/jobs/{job_id}")["steps"]["nap"]["replicas"]) == 2, 20,
             "2 replicas dispatched")
    mesh.nodes[2].kill()
    rep = wait_for(lambda: (r := client.request("GET", f"/jobs/{job_id}?wait=2")) and r["status"] != "running" and r,
                   60, "the job to end")
    assert rep["status"] == "failed"
    assert "connection lost" in rep["steps"]["nap"]["error"], rep


@pytest.mark.timeout(120)
def test_mesh_up_starts_nodes_that_know_each_other_and_ctrl_c_stops_them(tmp_path: Path):
    proc = subprocess.Popen([sys.executable, "-m", "mesh", "up", "--nodes", "3", "--dir", str(tmp_path / "up"),
                             "--no-model"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT, start_new_session=True)
    try:
        first = proc.stdout.readline()
        assert "mesh of 3 nodes ready" in first, first
        lines = [proc.stdout.readline() for _ in range(3)]
        assert all("API http://127.0.0.1:" in line for line in lines)
        editor = proc.stdout.readline()
        assert editor.startswith("editor: http://127.0.0.1:") and "/editor/#ticket=" in editor, editor
        import urllib.request

        with urllib.request.urlopen(editor.split()[1].split("#")[0], timeout=10) as resp:
            assert resp.status == 200 and b"drawflow" in resp.read().lower()
        dashboard = proc.stdout.readline()
        assert dashboard.startswith("dashboard: http://127.0.0.1:") and "/dashboard/#ticket=" in dashboard, dashboard
        with urllib.request.urlopen(dashboard.split()[1].split("#")[0], timeout=10) as resp:
            assert resp.status == 200 and b'src="dashboard.js"' in resp.read()
        homes = [tmp_path / "up" / f"node{i}" for i in range(3)]
        pids = [json.loads((h / "node.json").read_text())["pid"] for h in homes]
        for h in homes:
            st = cli_json("status", "--home", str(h))
            assert len([p for p in st["peers"] if p["state"] == "up"]) == 2
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                 for p in pids), 30, "every node to stop")
    finally:
        import os
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.timeout(120)
def test_garbage_on_the_peer_port_is_counted_and_the_node_keeps_serving(make_mesh, tmp_path: Path):
    mesh = make_mesh(4, lambda i: ["--no-model"])
    host, port = mesh.nodes[1].listen.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:  # not even libp2p: refused
        s.sendall(b"\x13/multistream/1.0.0\n" + b"\xff" * 4096)
        s.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while s.recv(4096):
                pass
    link = BlockingLink(mesh.nodes[1].listen, Identity.generate())  # an encrypted link, then garbage
    try:
        link.sendall(len(b"not json at all").to_bytes(4, "big") + b"not json at all")
        link.sendall((10 << 20).to_bytes(4, "big"))  # a frame over the 1 MiB cap
        link.settimeout(5)
        assert link.recv(10) == b""  # the node drops the connection
    finally:
        link.close()
    st = wait_for(lambda: (s := cli_json("status", "--home", str(mesh.nodes[1].home)))["rejected"].get(
        "frame-too-large") and s, 10, "the rejection to be counted")
    assert st["rejected"]["bad-json"] == 1
    job = write_job(tmp_path / "job.json", [PY_STEP])
    rep = cli_json("submit", job, "--home", str(mesh.nodes[0].home), "--redundancy", "3", "--wait")
    assert rep["status"] == "done" and rep["steps"]["sum"]["output"] == 90


def runner_of(node) -> int | None:
    """The one process of `node`'s tree that maps the base model's GGUF, None while not exactly one does."""
    holding = model_holders(node)
    return holding[0] if len(holding) == 1 else None


@pytest.mark.timeout(240)
@pytest.mark.llm
def test_a_model_runner_stuck_past_a_steps_time_is_killed_and_replaced(make_mesh):
    """A runner stuck inside llama.cpp never sees its time or its cancel flag (it checks them between tokens):
    a 317-byte json_schema pattern held runners on one token for good, and every later llm step on those
    workers failed with "no answer to RunStep" (this project's attack round on llm steps, 2026-12-06). Here
    the worker's runner is stopped (SIGSTOP: stuck as far as anyone can tell); the NodeActor must kill it
    once a step is OVERDUE_S past its time, say so, and start another, so the next step runs."""
    mesh = make_mesh(2, lambda i: ["--no-model"] if i == 0 else [])
    worker, client = mesh.nodes[1], mesh.nodes[0].client
    stuck = wait_for(lambda: runner_of(worker), 60, "the model to load on the worker")
    os.kill(stuck, signal.SIGSTOP)
    try:
        job = {"timeout": 4, "steps": [{"id": "g", "kind": "llm", "params": {"prompt": "Once upon", "max_tokens": 4}}]}
        job_id = client.request("POST", "/jobs", {"job": job, "redundancy": 1})["job_id"]
        wait_for(lambda: client.request("GET", f"/jobs/{job_id}?wait=2")["status"] != "running", 90,
                 "the step on the stuck runner to end")  # (the submitter gives up at its time: "timeout")
        fresh = wait_for(lambda: (p := runner_of(worker)) and p != stuck and p, 60, "a new model runner")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGCONT)
    assert not psutil.pid_exists(stuck) or psutil.Process(stuck).status() == psutil.STATUS_ZOMBIE
    job = {"steps": [{"id": "g", "kind": "llm", "params": {"prompt": "The capital of France is", "max_tokens": 4}}]}
    job_id = client.request("POST", "/jobs", {"job": job, "redundancy": 1})["job_id"]
    rep = wait_for(lambda: (r := client.request("GET", f"/jobs/{job_id}?wait=2")) and r["status"] != "running" and r,
                   90, "a step on the new runner")
    assert rep["status"] == "done", rep
    assert fresh == runner_of(worker)


@pytest.mark.timeout(300)
@pytest.mark.llm
def test_model_runner_killed_mid_step_is_replaced(make_mesh, tmp_path: Path):
    """Thespian does not restart dead actors: the NodeActor must fail the step it held and recreate the
    runner, so the node keeps serving llm steps."""
    mesh = make_mesh(4, lambda i: ["--no-model"] if i == 0 else [])
    victim = mesh.nodes[3]

    def runner_pid() -> int | None:
        return runner_of(victim)

    old = wait_for(runner_pid, 60, "the model to load on the victim")
    # long enough that the victim is still generating when its first progress (8 tokens) shows; if it
    # finished first, its replica would not say "died" below and the test would fail, not pass
    long_job = {"steps": [{"id": "g", "kind": "llm", "params": {"prompt": "Once upon a time", "max_tokens": 200}}]}
    client = mesh.nodes[0].client
    job_id = client.request("POST", "/jobs", {"job": long_job, "redundancy": 3})["job_id"]
    def victim_generating() -> bool:  # its streamed text shows the runner is mid-step
        reps = client.request("GET", f"/jobs/{job_id}")["steps"]["g"]["replicas"]
        return any(r["node"] == victim.node_id and r.get("partial") for r in reps)

    wait_for(victim_generating, 60, "the victim's runner to be generating")
    psutil.Process(old).kill()
    rep = wait_for(lambda: (r := client.request("GET", f"/jobs/{job_id}?wait=2")) and r["status"] != "running" and r,
                   240, "the job to end")
    assert rep["status"] == "done", rep
    mine = next(r for r in rep["steps"]["g"]["replicas"] if r["node"] == victim.node_id)
    assert not mine["agreed"] and "died" in mine["error"], mine
    new = wait_for(lambda: (p := runner_pid()) and p != old and p, 60, "a new model runner")
    assert new != old
    short = {"steps": [{"id": "g", "kind": "llm", "params": {"prompt": "The capital of France is", "max_tokens": 6}}]}
    job_id = client.request("POST", "/jobs", {"job": short, "redundancy": 3})["job_id"]
    rep = wait_for(lambda: (r := client.request("GET", f"/jobs/{job_id}?wait=2")) and r["status"] != "running" and r,
                   120, "the second job")
    assert rep["status"] == "done"
    assert all(r["agreed"] for r in rep["steps"]["g"]["replicas"])


@pytest.mark.timeout(180)
def test_node_without_bwrap_refuses_python_unless_its_operator_opts_in(tmp_path: Path):
    """No usable sandbox → no python steps from peers, and the node says why at start and in its status
    (its record offers no python); `--allow-unsandboxed-python` is the explicit opt-in. node1 has a bwrap
    that cannot make namespaces (as in a container without them), node2 none at all."""
    from mesh.cli.local import LocalMesh

    broken = tmp_path / "broken-bin"
    broken.mkdir()
    (broken / "bwrap").write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    (broken / "bwrap").chmod(0o755)
    mesh = LocalMesh(tmp_path / "m", 3, lambda i: ["--no-model"] + (["--allow-unsandboxed-python"] if i == 2 else []))
    mesh.nodes[1].env = {"PATH": str(broken)}
    mesh.nodes[2].env = {"PATH": str(tmp_path / "empty-bin")}  # bwrap cannot be found
    try:
        mesh.start()
        mesh.wait_ready(120)
        plain, opted = (cli_json("status", "--home", str(n.home)) for n in mesh.nodes[1:])
        assert plain["sandbox"] is False and "python" not in plain["kinds"] and "scrape" in plain["kinds"]
        assert "cannot make a sandbox here: bwrap: No permissions" in plain["sandbox_problem"], plain
        assert "runs no python steps" in (mesh.nodes[1].home / "stdout.log").read_text()
        assert opted["sandbox"] is False and "python" in opted["kinds"]
        assert "not installed" in opted["sandbox_problem"]
        peers = {p["node"]: p for p in cli_json("status", "--home", str(mesh.nodes[0].home))["peers"]}
        assert "python" not in peers[mesh.nodes[1].node_id]["kinds"]  # as its signed record says
        job = write_job(tmp_path / "j.json", [PY_STEP])
        rep = cli_json("submit", job, "--home", str(mesh.nodes[0].home), "--redundancy", "1", "--wait")
        assert rep["status"] == "done"
        assert [r["node"] for r in rep["steps"]["sum"]["replicas"]] == [mesh.nodes[2].node_id]
        res = run_cli("submit", job, "--home", str(mesh.nodes[0].home), "--redundancy", "2", "--wait")
        assert res.returncode == 2 and "offers 1" in res.stderr, res.stderr  # refused before it runs
    finally:
        mesh.stop()


@pytest.mark.timeout(120)
def test_finished_jobs_leave_memory_but_stay_readable(make_mesh):
    """--keep-jobs 2: after four jobs only the newest two are held; the others are read from disk, report,
    listing and event stream alike."""
    mesh = make_mesh(2, lambda i: ["--no-model", "--keep-jobs", "2"])
    client = mesh.nodes[0].client
    step = {"id": "s", "kind": "python", "params": {"code": "output = 7"}}
    ids = []
    for _ in range(4):
        ids.append(client.request("POST", "/jobs", {"job": {"redundancy": 1, "steps": [step]}})["job_id"])
        assert client.request("GET", f"/jobs/{ids[-1]}?wait=30")["status"] == "done"
    assert client.request("GET", "/status")["jobs"]["total"] == 2  # in memory
    assert [j["job_id"] for j in client.request("GET", "/jobs", shape=list)] == ids[::-1]  # listed all, newest first
    old = client.request("GET", f"/jobs/{ids[0]}")
    assert old["status"] == "done" and old["steps"]["s"]["output"] == 7
    assert [kind for kind, _ in client.events(ids[0])] == ["done"]
