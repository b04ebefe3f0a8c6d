"""Bad input from a user ends in one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest

from mesh.cli.local import free_ports

from ..conftest import cli_json, run_cli, write_job

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120)]


def assert_one_line_error(res, *needles: str) -> None:
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_init_creates_a_private_key_and_reuses_it(tmp_path: Path):
    first = run_cli("init", "--home", str(tmp_path / "h"))
    second = run_cli("init", "--home", str(tmp_path / "h"))
    assert first.returncode == second.returncode == 0
    node_id = first.stdout.strip()
    assert len(node_id) == 64 and int(node_id, 16) >= 0 and node_id == node_id.lower()
    assert second.stdout.strip() == node_id
    for name in ("node.key", "api-token"):
        assert stat.S_IMODE((tmp_path / "h" / name).stat().st_mode) == 0o600


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    (json.dumps({"steps": [{"id": "a", "kind": "python", "params": {"code": "x"}, "after": ["b"]},
                           {"id": "b", "kind": "python", "params": {"code": "x"}, "after": ["a"]}]}), "cycle"),
    (json.dumps({"steps": [{"id": "a", "kind": "teleport", "params": {}}]}), "unknown kind"),
    (json.dumps({"steps": [{"id": "a", "kind": "llm", "params": {"prompt": "{ghost.output}"}}]}), "missing step 'ghost'"),
    (json.dumps({"steps": [{"id": "a", "kind": "python", "params": {}}]}), "'code'"),
    (json.dumps({"steps": []}), "non-empty"),
    (json.dumps({"steps": [{"id": "a", "kind": "llm", "params": {"prompt": "p", "json_schema": {"type": "bogus"}}}]}),
     "step 'a': json_schema: llama.cpp cannot build a grammar"),
])
def test_bad_job_files_are_refused_before_anything_runs(tmp_path: Path, content: str, needle: str):
    job = tmp_path / "job.json"
    job.write_text(content)
    # no node is running in this home: the job must be refused before any attempt to reach one
    res = run_cli("submit", str(job), "--home", str(tmp_path / "nohome"), "--wait")
    assert_one_line_error(res, "mesh: error:", needle)
    assert res.returncode == 2


def test_missing_job_file_and_bad_redundancy(tmp_path: Path):
    assert_one_line_error(run_cli("submit", str(tmp_path / "nope.json"), "--home", str(tmp_path)), "cannot read")
    job = write_job(tmp_path / "j.json", [{"id": "a", "kind": "python", "params": {"code": "output = 1"}}])
    assert_one_line_error(run_cli("submit", job, "--home", str(tmp_path), "--redundancy", "0"), "redundancy")
    assert_one_line_error(run_cli("submit", job, "--home", str(tmp_path), "--quorum", "most"), "quorum")


def test_unreachable_node_and_missing_home(tmp_path: Path):
    job = write_job(tmp_path / "j.json", [{"id": "a", "kind": "python", "params": {"code": "output = 1"}}])
    assert_one_line_error(run_cli("submit", job, "--home", str(tmp_path / "empty")), "no running node")
    (port,) = free_ports(1)
    res = run_cli("status", "--api", f"http://127.0.0.1:{port}", env={"MESH_API_TOKEN": "x"})
    assert_one_line_error(res, "cannot reach the node API")


def test_port_in_use_and_missing_model(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        (api,) = free_ports(1)
        res = run_cli("node", "--home", str(tmp_path / "n"), "--listen", f"127.0.0.1:{busy}",
                      "--api", f"127.0.0.1:{api}", "--no-model", timeout=60)
        assert_one_line_error(res, "in use", str(busy))
    res = run_cli("node", "--home", str(tmp_path / "n"), "--model", str(tmp_path / "absent.gguf"), timeout=60)
    assert_one_line_error(res, "model file", "not found")
    res = run_cli("node", "--home", str(tmp_path / "n"), "--listen", "nowhere", timeout=60)
    assert_one_line_error(res, "HOST:PORT")


@pytest.mark.parametrize("rate, says", [("cpu_s=abc", "not a number"), ("gpu=3", "KEY one of cpu_s"),
                                        ("cpu_s", "KEY=CREDITS"), ("scrape=0", "above 0"), ("tokens_1k=nan", "above 0"),
                                        ("cpu_s=1e9", "at most")])
def test_a_bad_rate_card_is_one_line(tmp_path: Path, rate: str, says: str):
    assert_one_line_error(run_cli("node", "--home", str(tmp_path / "n"), "--rate", rate, timeout=60), "--rate", says)


def test_api_token_is_required(make_mesh, tmp_path: Path):
    mesh = make_mesh(1, lambda i: ["--no-model"])
    node = mesh.nodes[0]
    api = f"http://127.0.0.1:{node.api_port}"
    res = run_cli("status", "--api", api, env={"MESH_API_TOKEN": "wrong-token"})
    assert_one_line_error(res, "token")
    assert cli_json("status", "--home", str(node.home))["node"] == node.node_id
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"{api}/status", timeout=5)
    assert exc.value.code == 401


def test_too_few_workers_fails_with_a_reason(make_mesh, tmp_path: Path):
    mesh = make_mesh(3, lambda i: ["--no-model"])
    job = write_job(tmp_path / "j.json", [{"id": "a", "kind": "python", "params": {"code": "output = 1"}}])
    res = run_cli("submit", job, "--home", str(mesh.nodes[0].home), "--redundancy", "3", "--wait", "--json")
    assert_one_line_error(res, "needs 3 workers", "offers 2")  # refused before it is submitted
    res = run_cli("submit", job, "--home", str(mesh.nodes[0].home), "--redundancy", "2", "--wait", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["steps"]["a"]["output"] == 1
    # a step whose own code raises: the user reads the code's error and line, and no stranger's limits
    bad = write_job(tmp_path / "bad.json", [{"id": "a", "kind": "python", "params": {"code": "x = 1\ny = x / 0"}}])
    res = run_cli("submit", bad, "--home", str(mesh.nodes[0].home), "--redundancy", "2", "--wait")
    assert res.returncode == 3, res.stderr
    assert "error: your code raised ZeroDivisionError at line 2: division by zero (" in res.stdout, res.stdout
    assert "no unused worker" not in res.stdout and "at most 60 s" not in res.stdout, res.stdout


def test_ledger_commands_need_a_home(tmp_path: Path):
    res = run_cli("ledger", "balance", "--home", str(tmp_path / "none"))
    assert_one_line_error(res, "mesh init")
    assert run_cli("init", "--home", str(tmp_path / "fresh")).returncode == 0
    res = run_cli("ledger", "balance", "--home", str(tmp_path / "fresh"))
    assert_one_line_error(res, "no ledger")
    assert os.path.exists(tmp_path / "fresh" / "node.key")


def test_a_node_past_its_credit_line_is_refused_with_a_clear_message(make_mesh, tmp_path: Path):
    mesh = make_mesh(4, lambda i: ["--no-model"] + (["--credit-line", "0.02"] if i == 0 else []))
    job = write_job(tmp_path / "j.json", [{"id": "a", "kind": "python", "params": {"code": "output = 1"}}])
    first = cli_json("submit", job, "--home", str(mesh.nodes[0].home), "--redundancy", "3", "--wait")
    assert first["status"] == "done" and first["credits_spent"] >= 0.03
    res = run_cli("submit", job, "--home", str(mesh.nodes[0].home), "--redundancy", "3", "--wait")
    assert_one_line_error(res, "credit line of 0.02", "earn credits")
    st = cli_json("status", "--home", str(mesh.nodes[0].home))
    assert st["balance"] == -first["credits_spent"] and st["credit_line"] == 0.02
