"""More files the CLI is pointed at that are not what they should be (this project's attack round on the
CLI, 2026-12-06, second pass): a directory named as a job file or as receipts, a job whose json_schema
llama.cpp's converter trips over, a trace file `mesh replay` cannot use (a header without a scenario, a
seed that is not a whole number, brackets 100,000 deep, /dev/zero, a FIFO) and a scenario file of other
bytes than UTF-8; a home's node.json nested 30,000 deep or linked to /dev/zero, its models.json or
node.toml nested 100,000 deep; `mesh node --threads`, `--network`, `--frame-cap` or `--blacklist` of
no sensible value. Each was a traceback (or a
hang, or a node whose model runner crashed on every step); each is one line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT, run_cli, stop_session
from .test_hostile_files import one_line

pytestmark = pytest.mark.timeout(120)

FORMAT = "homemesh-sim-trace/1"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    assert run_cli("init", "--home", str(tmp_path / "h")).returncode == 0
    return tmp_path / "h"


@pytest.mark.mesh  # over a second on its own: out of the fast suite (`-m "not mesh"`), in the full one
def test_a_directory_named_as_a_job_file_or_receipts_is_refused_in_one_line(tmp_path: Path, home: Path):
    folder = tmp_path / "jobs"
    folder.mkdir()
    one_line(run_cli("submit", str(folder), "--home", str(home)), 2, "not a regular file")
    one_line(run_cli("ledger", "verify-receipts", str(folder)), 2, "not a regular file")


@pytest.mark.mesh  # 1.6 s each on its own: out of the fast suite (`-m "not mesh"`), in the full one
@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": [1]},
    {"type": "string", "pattern": 5},
    {"type": "array", "items": 5},
    {"oneOf": [[]]},
])
def test_a_json_schema_the_converter_trips_over_is_refused_in_one_line(tmp_path: Path, home: Path, schema):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"steps": [{"id": "a", "kind": "llm", "params": {"prompt": "p", "json_schema": schema}}]}))
    one_line(run_cli("submit", str(path), "--home", str(home)), 2, "llama.cpp cannot build a grammar from it")


def trace_with(tmp_path: Path, name: str, **header) -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"format": FORMAT, **header}) + "\n")
    return str(path)


@pytest.mark.mesh  # 3 s on its own: out of the fast suite (`-m "not mesh"`), in the full one
def test_a_trace_whose_header_does_not_hold_together_is_refused_in_one_line(tmp_path: Path):
    scenario = (ROOT / "simulations" / "scenarios" / "baseline.toml").read_text()
    for path in (trace_with(tmp_path, "bare.jsonl"),
                 trace_with(tmp_path, "number.jsonl", scenario=5, seed=1),
                 trace_with(tmp_path, "seed-word.jsonl", scenario=scenario, seed="x"),
                 trace_with(tmp_path, "seed-none.jsonl", scenario=scenario, seed=None),
                 trace_with(tmp_path, "seed-inf.jsonl", scenario=scenario, seed=1e999),
                 trace_with(tmp_path, "overrides-list.jsonl", scenario=scenario, seed=1, overrides=[1])):
        one_line(run_cli("replay", path), 2, "is not a homemesh simulator trace")
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    one_line(run_cli("replay", str(tmp_path / "deep.jsonl")), 2, "is not a homemesh simulator trace")


def test_a_trace_that_is_a_device_a_fifo_or_a_directory_is_refused_in_one_line(tmp_path: Path):
    (tmp_path / "zero.jsonl").symlink_to("/dev/zero")  # one endless line: read whole, it filled memory
    one_line(run_cli("replay", str(tmp_path / "zero.jsonl"), timeout=30), 2, "not a regular file")
    os.mkfifo(tmp_path / "fifo.jsonl")
    one_line(run_cli("replay", str(tmp_path / "fifo.jsonl"), timeout=30), 2, "not a regular file")
    one_line(run_cli("replay", str(tmp_path), timeout=30), 2, "not a regular file")


def test_a_scenario_file_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path):
    (tmp_path / "latin.toml").write_bytes(b"\xff\xfe[network]\n")
    one_line(run_cli("simulate", str(tmp_path / "latin.toml")), 2, "not UTF-8")


@pytest.mark.parametrize("flag,value,said", [
    ("--threads", "100000", "--threads is 0"), ("--threads", "-5", "--threads is 0"),
    ("--network", "x" * 300, "--network is 1 to 64"), ("--network", "", "--network is 1 to 64"),
    ("--frame-cap", "99999999999999", "--frame-cap must be from"),
    ("--blacklist", "nan", "--blacklist is"), ("--blacklist", "-1", "--blacklist is")])
def test_a_node_setting_of_no_sensible_value_is_refused_before_the_node_starts(tmp_path: Path, flag, value, said):
    """`mesh node --threads 100000` started, advertised its model, and its model runner died (SIGSEGV in
    llama.cpp) on every step: a typo that failed every peer's step. A negative count means nothing. A
    network id of 300 characters started a node whose first signed envelope would fail (its length is one
    byte of the signed bytes); a frame cap of 100 TB let any peer make it buffer that much; a blacklist of
    nan or -1 seconds was taken. Each is refused at start, in one line."""
    proc = subprocess.Popen([sys.executable, "-m", "mesh", "node", "--home", str(tmp_path / "n"), "--listen",
                             "127.0.0.1:0", "--api", "127.0.0.1:0", "--no-model", flag, value],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it started: stop it (and its actors) by its process group
        stop_session(proc, timeout=20)
        proc.communicate()
        pytest.fail(f"mesh node {flag} {value[:20]} started a node")
    one_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), 2, said)


def test_a_damaged_node_json_is_refused_in_one_line(home: Path):
    runtime = home / "node.json"
    runtime.write_text("[" * 30_000 + "]" * 30_000)  # was a RecursionError traceback
    one_line(run_cli("status", "--home", str(home)), 2, "is damaged")
    runtime.unlink()
    runtime.symlink_to("/dev/zero")  # was read until memory ran out
    one_line(run_cli("status", "--home", str(home), timeout=30), 2, "not a regular file")


def test_a_damaged_model_registry_or_owner_file_is_refused_in_one_line(tmp_path: Path, home: Path):
    (home / "models.json").write_text("[" * 100_000 + "]" * 100_000)  # was a traceback (and a 500 at every job)
    one_line(run_cli("models", "list", "--home", str(home)), 2, "models.json is damaged")
    (home / "models.json").unlink()
    (home / "node.toml").write_text("max_steps = " + "[" * 100_000 + "]" * 100_000 + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "mesh", "node", "--home", str(home), "--listen", "127.0.0.1:0",
                             "--api", "127.0.0.1:0", "--no-model"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        stop_session(proc, timeout=20)
        proc.communicate()
        pytest.fail("mesh node started with a node.toml it cannot read")
    one_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), 2, "node.toml: nested too deep")


@pytest.mark.mesh  # over a second on its own: out of the fast suite (`-m "not mesh"`), in the full one
@pytest.mark.parametrize("command", ["up", "demo"])
def test_a_local_mesh_of_more_nodes_than_one_machine_runs_is_refused_at_once(tmp_path: Path, command):
    """`mesh up --nodes 99999` made 125 node homes and started their nodes before a minute was out, with no
    end in sight (found by this project's red team, 2026-12-06)."""
    one_line(run_cli(command, "--nodes", "99999", "--dir", str(tmp_path / "m"), timeout=60), 2, "--nodes is from 1")
    assert not (tmp_path / "m" / "node0").exists()
