"""The model registry and several models in one DAG: `mesh models`, names resolved to SHA-256s at submit,
one runner per model, and placement only on nodes holding the step's model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.core.dag import parse_job
from mesh.errors import JobError
from mesh.steps.models import INSTRUCT_SHA256, default_model, default_model_sha, instruct_model, sha256_file
from mesh.steps.registry import Registry

from ..conftest import ROOT, cli_json, run_cli, wait_for

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120)]


def submitter_without_model(i: int) -> list[str]:
    """Node 0 submits every job here and never works for itself: it need not load the model (~2 s of CPU)."""
    return ["--no-model"] if i == 0 else []


@pytest.fixture(scope="module")
def second_model(tmp_path_factory) -> Path:
    """Another GGUF with its own SHA-256: the default model's file with 32 bytes appended (llama.cpp reads
    tensors by offset, so it loads and answers alike; the registry and placement see another model)."""
    path = tmp_path_factory.mktemp("models") / "second.gguf"
    shutil.copy(default_model()[0], path)
    with open(path, "ab") as f:
        f.write(b"\0" * 32)
    return path


def test_models_cli_add_list_remove_and_clear_errors(tmp_path, second_model):
    home = tmp_path / "home"
    rows = cli_json("models", "list", "--home", str(home))
    assert [r["sha256"] for r in rows] == [default_model_sha(), INSTRUCT_SHA256]  # both come with homemesh
    added = cli_json("models", "add", str(second_model), "--name", "second", "--home", str(home))
    assert len(added["sha256"]) == 64 and added["sha256"] != default_model_sha()
    assert [r["name"] for r in cli_json("models", "list", "--home", str(home))] == [
        "gemma-3-270m-q4_k_m", "smollm2-135m-instruct-q4_1", "second"]
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_text("hello")
    for args, message in [(("add", str(not_gguf)), "not a well-formed GGUF"), (("add", str(tmp_path / "nope.gguf")), "no such file"),
                          (("remove", "gemma-3-270m-q4_k_m"), "cannot be removed"), (("remove", "zzz"), "no single model")]:
        res = run_cli("models", *args, "--home", str(home))
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert cli_json("models", "remove", "second", "--home", str(home))["name"] == "second"


def test_names_resolve_to_sha256_and_unknown_names_are_job_errors(tmp_path, second_model):
    reg = Registry(tmp_path)
    sha = reg.add(second_model, "second").sha256
    assert reg.resolve("second") == sha and reg.resolve(sha[:10]) == sha and reg.resolve("default") == "default"
    with pytest.raises(JobError, match="neither a SHA-256 nor a name"):
        reg.resolve("third")
    with pytest.raises(JobError, match="names its model"):
        parse_job({"steps": [{"id": "a", "kind": "ask-model", "params": {"prompt": "hi"}}]})
    job = parse_job({"steps": [{"id": "a", "kind": "ask-model", "params": {"prompt": "hi", "model": "second"}}]})
    assert job.steps[0].needs == "llm:second"


@pytest.mark.mesh
@pytest.mark.llm
@pytest.mark.timeout(300)
def test_two_models_in_one_dag_run_only_on_nodes_holding_them(make_mesh, tmp_path, second_model):
    """Nodes 3-5 also serve the second model; node 0 (the submitter) names it. The llm step may run
    anywhere; the ask-model step only on nodes 3-5, each replica answered by a runner of that model."""
    sha = None
    for i in (0, 3, 4, 5):  # the submitter registers it too, to resolve the name; it never works for itself
        sha = Registry(tmp_path / "mesh" / f"node{i}").add(second_model, "second").sha256
    mesh = make_mesh(6, submitter_without_model)
    holders = {mesh.nodes[i].node_id for i in (3, 4, 5)}
    job = tmp_path / "two-models.json"
    job.write_text(json.dumps({"name": "two models", "redundancy": 3, "steps": [
        {"id": "first", "kind": "llm", "params": {"prompt": "The capital of France is", "max_tokens": 8}},
        {"id": "second", "kind": "ask-model", "after": ["first"],
         "params": {"model": "second", "prompt": "Say it again: {first.output}", "max_tokens": 8}}]}))
    report = cli_json("submit", str(job), "--wait", "--home", str(mesh.nodes[0].home), timeout=240)
    assert report["status"] == "done", json.dumps(report, indent=1)
    second = report["steps"]["second"]
    assert {r["node"] for r in second["replicas"]} <= holders and sum(r["agreed"] for r in second["replicas"]) >= 2
    status = cli_json("status", "--home", str(mesh.nodes[3].home))
    assert sha in status["models"] and default_model_sha() in status["models"]


@pytest.mark.mesh
@pytest.mark.llm
@pytest.mark.timeout(300)
def test_schema_constrained_and_sampled_llm_steps_on_a_real_mesh(make_mesh, tmp_path):
    mesh = make_mesh(4, submitter_without_model)
    job = tmp_path / "llm-params.json"
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    job.write_text(json.dumps({"name": "llm params", "redundancy": 3, "steps": [
        {"id": "structured", "kind": "llm",
         "params": {"prompt": "The capital of France, as JSON: ", "max_tokens": 24, "json_schema": schema}},
        {"id": "sampled", "kind": "llm",
         "params": {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.8, "seed": 3}},
        {"id": "use", "kind": "python", "after": ["structured"],
         "params": {"code": "output = inputs['structured']['city'].lower()"}},
        {"id": "scored", "kind": "llm", "compare": "score",  # one draws, the others replay the seeded draw
         "params": {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.8}}]}))
    report = cli_json("submit", str(job), "--wait", "--home", str(mesh.nodes[0].home), timeout=240)
    assert report["status"] == "done", json.dumps(report, indent=1)
    assert isinstance(report["steps"]["structured"]["output"], dict) and report["steps"]["use"]["output"]
    assert report["steps"]["sampled"]["compare"] == "text" and report["steps"]["structured"]["compare"] == "exact"
    sampled = report["steps"]["sampled"]  # one seed for every replica: honest ones drew the same text
    assert sum(r["agreed"] for r in sampled["replicas"]) >= 2 and "compare_note" not in sampled
    scored = report["steps"]["scored"]
    roles = sorted(r["role"] for r in scored["replicas"] if r["agreed"])
    assert scored["compare"] == "score" and roles.count("verify") >= 1 and "generate" in roles, scored


@pytest.mark.mesh
@pytest.mark.llm
@pytest.mark.timeout(300)
def test_llm_text_streams_to_the_submitter_while_replicas_generate(make_mesh):
    """Workers send the text generated so far in signed progress messages; the job report shows it per
    replica until the step settles, and the final output is the whole text."""
    mesh = make_mesh(3, submitter_without_model)
    client = mesh.nodes[0].client
    job = {"redundancy": 2, "steps": [{"id": "story", "kind": "llm",
                                       "params": {"prompt": "Once upon a time", "max_tokens": 200}}]}
    job_id = client.request("POST", "/jobs", {"job": job})["job_id"]
    seen: list[tuple[int, str]] = []
    while (rep := client.request("GET", f"/jobs/{job_id}"))["status"] == "running":
        seen += [(r["partial"]["tokens"], r["partial"]["text"]) for r in rep["steps"]["story"]["replicas"]
                 if "partial" in r]
    assert rep["status"] == "done", rep
    assert seen, "no progress was streamed"
    final = rep["steps"]["story"]["output"]
    assert all(final.startswith(text) and tokens % 8 == 0 for tokens, text in seen)
    assert not any("partial" in r for r in rep["steps"]["story"]["replicas"])  # gone once settled


@pytest.mark.mesh
@pytest.mark.llm
@pytest.mark.timeout(300)
def test_verification_by_scoring_on_a_real_mesh_with_a_lying_worker(make_mesh, tmp_path):
    """compare 'score': one worker generates, the others score its tokens in one pass. A worker that
    tampers with its text is caught whether it generates (the verifiers reject, the step falls back to
    generating and comparing) or verifies (its verdict is not one, and is set aside)."""
    # node 5 lies; a fallback needs 2 fresh workers
    mesh = make_mesh(6, lambda i: submitter_without_model(i) + (["--fault", "wrong"] if i == 5 else []))
    liar = mesh.nodes[5].node_id
    job = tmp_path / "score.json"
    job.write_text(json.dumps({"name": "score", "redundancy": 3, "steps": [
        {"id": "a", "kind": "llm", "compare": "score", "params": {"prompt": "The capital of France is",
                                                                  "max_tokens": 12}}]}))
    outputs, roles = set(), []
    for _ in range(4):
        report = cli_json("submit", str(job), "--wait", "--home", str(mesh.nodes[0].home), timeout=240)
        assert report["status"] == "done", json.dumps(report["steps"])
        step = report["steps"]["a"]
        outputs.add(step["output"])
        roles.append(sorted(r["role"] for r in step["replicas"] if r["agreed"]))
        assert not any(r["agreed"] for r in step["replicas"] if r["node"] == liar)
    assert len(outputs) == 1 and "tampered" not in next(iter(outputs))
    assert any(r.count("verify") >= 1 for r in roles)  # verifiers did the checking


def _holders(node, sha: str) -> int:
    return sum(sha in p.get("models", []) and p["state"] == "up" for p in cli_json("status", "--home", str(node.home))["peers"])


@pytest.mark.mesh
@pytest.mark.llm
@pytest.mark.timeout(420)
def test_a_model_travels_to_peers_that_lack_it_checked_part_by_part_and_a_corrupt_server_is_caught(
        make_mesh, tmp_path, instruct_copy):
    """Node 1 serves a model the others lack honestly; node 4 serves it with a byte of every part changed;
    nodes 2 and 3 lack it. Node 2 fetches it naming node 4 first: node 4's first part contradicts its own
    manifest, so node 4 is penalised and dropped and node 1 finishes. Node 3 fetches it from node 1 at the
    same time. Then,
    node 4 stopped, an r=3 step on that model runs on nodes 1-3, the two that fetched it serving it at
    once, and all three agree. (The 98 MB instruct model, not the 253 MB default: when transfers ran at
    the links' flow limit, two fetches of the larger took 160 of this test's 197 s.)"""
    for i in (0, 1, 4):
        sha = Registry(tmp_path / "mesh" / f"node{i}").add(instruct_copy, "second").sha256
    mesh = make_mesh(5, lambda i: ["--no-model"] if i == 0 else ["--fault", "corrupt-model"] if i == 4 else [])
    n = mesh.nodes
    size = instruct_copy.stat().st_size
    wait_for(lambda: _holders(n[2], sha) == 2 and _holders(n[3], sha) == 2, 60, "nodes 2 and 3 see both servers")

    # node 3's fetch from node 1 runs beside node 2's (each at its own link's rate): the test waits once
    other = subprocess.Popen([sys.executable, "-m", "mesh", "models", "fetch", sha, "--from", n[1].node_id,
                              "--home", str(n[3].home), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        got = cli_json("models", "fetch", sha, "--from", n[4].node_id, "--from", n[1].node_id, "--name", "second",
                       "--home", str(n[2].home), "--json", timeout=300)
        out, err = other.communicate(timeout=300)
    finally:
        other.kill()
    assert got["state"] == "done" and got["size"] == size and got["name"] == "second", json.dumps(got, indent=1)
    print(f"fetch with a corrupt first source: {size:,} bytes in {got['seconds']:.2f} s")
    history = cli_json("ledger", "history", "--home", str(n[2].home))
    assert [e["reason"] if "reason" in e else e.get("detail", {}).get("reason") for e in history
            if e["kind"] == "penalty" and e["peer"] == n[4].node_id] == ["model-part does not match its manifest"]
    bad = run_cli("models", "fetch", sha, "--home", str(n[2].home))  # nothing to do: a clear error, no traceback
    assert bad.returncode == 2 and "already in this node's registry" in bad.stderr and "Traceback" not in bad.stderr

    assert other.returncode in (0, 3), err
    got = json.loads(out)
    assert got["state"] == "done" and got["name"] == f"fetched-{sha[:12]}", json.dumps(got, indent=1)
    print(f"model fetch: {size:,} bytes in {got['seconds']:.2f} s = {size / got['seconds'] / 1e6:.1f} MB/s")
    assert (n[3].home / "models" / f"{sha}.gguf").stat().st_size == size

    n[4].stop()
    wait_for(lambda: _holders(n[0], sha) == 3, 60, "the submitter sees nodes 1-3 serve it")
    job = tmp_path / "fetched.json"
    job.write_text(json.dumps({"name": "fetched model", "redundancy": 3, "steps": [
        {"id": "ask", "kind": "ask-model", "params": {"model": sha, "prompt": "The capital of France is",
                                                      "max_tokens": 8}}]}))
    report = cli_json("submit", str(job), "--wait", "--home", str(n[0].home), timeout=240)
    replicas = report["steps"]["ask"]["replicas"]
    assert report["status"] == "done" and {r["node"] for r in replicas} == {n[i].node_id for i in (1, 2, 3)}
    assert all(r["agreed"] for r in replicas), json.dumps(replicas, indent=1)


@pytest.fixture(scope="module")
def instruct_copy(tmp_path_factory) -> Path:
    """The instruct model under a SHA-256 no node has yet (its file with 32 bytes appended: it loads and
    answers alike), so one node can hold it and the others must fetch it."""
    path = tmp_path_factory.mktemp("models") / "instruct-copy.gguf"
    shutil.copy(instruct_model()[0], path)
    with open(path, "ab") as f:
        f.write(b"\0" * 32)
    return path


@pytest.mark.mesh
@pytest.mark.llm
@pytest.mark.timeout(420)
def test_nodes_that_may_fetch_models_get_the_one_a_step_needs_and_all_three_agree(
        make_mesh, tmp_path, instruct_copy, second_model):
    """Only node 1 holds the model; nodes 2 and 3 run with --fetch-models 200MB. An r=3 step on it is placed
    on all three (too few hold it, so placement looks at nodes that fetch), nodes 2 and 3 fetch it from
    node 1 while their replicas wait, run it, and all three agree; the files they fetched are the model's.
    Then a step naming a 253 MB model node 1 also holds: what is left of the allowance (200 MB less the
    first model, counted at least MODEL_FLOOR) is too little, so nodes 2 and 3 fetch nothing of it and say
    why, and the step fails rather than fill the disk."""
    sha = Registry(tmp_path / "mesh" / "node1").add(instruct_copy, "instruct-copy").sha256
    big = Registry(tmp_path / "mesh" / "node1").add(second_model, "big").sha256
    mesh = make_mesh(4, lambda i: ["--no-model"] if i == 0 else ["--fetch-models", "200MB"] if i > 1 else [])
    n = mesh.nodes
    assert cli_json("status", "--home", str(n[2].home))["fetch_models"] == 200_000_000
    wait_for(lambda: _holders(n[0], sha) == 1, 60, "the submitter to see node 1 serve the model")
    job = tmp_path / "fetch.json"
    job.write_text(json.dumps({"name": "fetched on demand", "redundancy": 3, "steps": [
        {"id": "ask", "kind": "ask-model", "params": {"model": sha, "prompt": "The capital of France is",
                                                      "max_tokens": 8}}]}))
    t0 = time.monotonic()
    report = cli_json("submit", str(job), "--wait", "--home", str(n[0].home), timeout=300)
    print(f"r=3 step with two replicas fetching {instruct_copy.stat().st_size:,} bytes first: "
          f"{time.monotonic() - t0:.1f} s")
    replicas = report["steps"]["ask"]["replicas"]
    assert report["status"] == "done", json.dumps(report, indent=1)
    assert {r["node"] for r in replicas} == {n[i].node_id for i in (1, 2, 3)}
    assert all(r["agreed"] for r in replicas), json.dumps(replicas, indent=1)
    for i in (2, 3):
        assert sha256_file(n[i].home / "models" / f"{sha}.gguf") == sha
    wait_for(lambda: _holders(n[0], sha) == 3, 60, "the submitter to see all three serve it now")

    job.write_text(json.dumps({"name": "too big to fetch", "redundancy": 3, "max_replicas": 3, "steps": [
        {"id": "ask", "kind": "ask-model", "params": {"model": big, "prompt": "Hi", "max_tokens": 2}}]}))
    report = cli_json("submit", str(job), "--wait", "--home", str(n[0].home), timeout=120)
    assert report["status"] == "failed", json.dumps(report, indent=1)
    errors = {r["node"]: r.get("error", "") for r in report["steps"]["ask"]["replicas"]}
    for i in (2, 3):
        assert "allowance (200,000,000 bytes) is used up" in errors[n[i].node_id], errors
        held = {f.name for f in (n[i].home / "models").iterdir()}
        assert held == {f"{sha}.gguf"}, held  # nothing of the big model, not even an empty file
