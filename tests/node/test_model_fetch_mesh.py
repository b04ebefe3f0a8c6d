"""Model fetches between real node processes on loopback, with tiny GGUFs (tests/tinygguf.py: they load in
milliseconds, so these tests are about the plumbing, not the model): `mesh models fetch` following the
fetch to its final line, and one node fetching two models at once, one of them first from a peer that
corrupts every part, each ending as its own file and both counting against --fetch-models."""

from __future__ import annotations

import re

import pytest

from mesh.node.modelshare import MODEL_FLOOR
from mesh.steps.models import sha256_file
from mesh.steps.registry import Registry

from ..conftest import run_cli, wait_for
from ..tinygguf import tiny_gguf

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(240)]


def holders(node, sha: str) -> int:
    """Linked peers of `node` that advertise model `sha`."""
    return sum(sha in p.get("models", []) and p["state"] == "up" for p in node.client.request("GET", "/status")["peers"])


def test_the_cli_follows_a_fetch_from_a_real_peer_to_its_final_line(make_mesh, tmp_path):
    model = tmp_path / "d.gguf"
    sha = tiny_gguf(model, pad=3 << 20, seed=4)  # 7 parts
    mesh = make_mesh(2, lambda i: ["--no-model"] if i == 0 else ["--model", str(model)])
    fetcher = mesh.nodes[0]
    wait_for(lambda: holders(fetcher, sha) == 1, 60, "node 0 to see node 1 serve the model")
    res = run_cli("models", "fetch", sha, "--home", str(fetcher.home), timeout=120)
    assert res.returncode == 0, res.stderr
    size = model.stat().st_size
    assert re.fullmatch(rf"fetched fetched-{sha[:12]} \({sha}\): {size:,} bytes in [\d.]+ s \([\d.]+ MB/s\), "
                        r"checked, and served by this node now\n", res.stdout), res.stdout
    assert res.stderr == ""  # not a terminal: no progress bar
    assert sha256_file(fetcher.home / "models" / f"{sha}.gguf") == sha
    got = fetcher.client.request("GET", "/models/fetch", shape=list)
    assert [(f["sha256"], f["state"], f["done_bytes"]) for f in got] == [(sha, "done", size)]


def test_one_node_fetches_two_models_at_once_each_checked_and_both_count_against_its_allowance(make_mesh, tmp_path):
    """Node 0 (--fetch-models) fetches model A, naming first node 2, which serves it with a byte of every
    part changed, then node 1, and at the same time model B from node 3. Node 2 is caught at its first
    part, penalised, and node 1 finishes A; B comes whole from node 3 meanwhile. Each file matches its own
    SHA-256. Then a step on model C (held by node 1) is offered to node 0: its allowance less A and B (each
    counted at MODEL_FLOOR, what a runner takes) is less than a model counts, so it fetches none of C."""
    files = {k: tmp_path / f"{k}.gguf" for k in ("own", "a", "b", "c")}
    sha = {k: tiny_gguf(path, pad=6 << 20, seed=i) for i, (k, path) in enumerate(files.items())}  # 13 parts
    size = {k: path.stat().st_size for k, path in files.items()}
    allowance = 2 * MODEL_FLOOR + MODEL_FLOOR // 2  # room for C after A or B alone; not after both
    Registry(tmp_path / "mesh" / "node1").add(files["c"], "c")
    options = [["--model", str(files["own"]), "--fetch-models", str(allowance)], ["--model", str(files["a"])],
               ["--model", str(files["a"]), "--fault", "corrupt-model"], ["--model", str(files["b"])]]
    mesh = make_mesh(4, lambda i: options[i])
    n = mesh.nodes
    fetcher = n[0].client
    wait_for(lambda: holders(n[0], sha["a"]) == 2 and holders(n[0], sha["b"]) == 1, 60, "node 0 to see A and B served")
    wait_for(lambda: holders(n[3], sha["c"]) == 1, 60, "node 3 to see node 1 serve C")

    fetcher.request("POST", "/models/fetch", {"sha256": sha["a"], "max_bytes": 1 << 30, "name": "a",
                                              "sources": [n[2].node_id, n[1].node_id]})
    fetcher.request("POST", "/models/fetch", {"sha256": sha["b"], "max_bytes": 1 << 30, "name": "b",
                                              "sources": [n[3].node_id]})
    under_way = {f["sha256"] for f in fetcher.request("GET", "/models/fetch", shape=list) if f["state"] == "fetching"}
    assert under_way == {sha["a"], sha["b"]}  # both at once
    ends = {k: [ev for _, ev in fetcher.fetch_events(sha[k])][-1] for k in ("a", "b")}
    for k in ("a", "b"):
        assert (ends[k]["state"], ends[k]["name"], ends[k]["size"]) == ("done", k, size[k]), ends[k]
        assert sha256_file(n[0].home / "models" / f"{sha[k]}.gguf") == sha[k]
    penalties = [(e["peer"], e.get("detail", {}).get("reason")) for e in fetcher.request("GET", "/ledger/history", shape=list)
                 if e["kind"] == "penalty"]
    assert penalties == [(n[2].node_id, "model-part does not match its manifest")]
    wait_for(lambda: {sha["a"], sha["b"]} <= set(fetcher.request("GET", "/status")["models"]), 30,
             "node 0 to serve both models it fetched")

    job = {"name": "c", "redundancy": 2, "max_replicas": 2, "steps": [
        {"id": "ask", "kind": "ask-model", "params": {"model": sha["c"], "prompt": "Hi", "max_tokens": 2}}]}
    job_id = n[3].client.request("POST", "/jobs", {"job": job})["job_id"]
    report = [ev for _, ev in n[3].client.events(job_id)][-1]
    errors = {r["node"]: r.get("error", "") for r in report["steps"]["ask"]["replicas"]}
    assert f"allowance ({allowance:,} bytes) is used up" in errors.get(n[0].node_id, ""), report
    assert sorted(f.name for f in (n[0].home / "models").iterdir()) == sorted(f"{sha[k]}.gguf" for k in ("a", "b"))
