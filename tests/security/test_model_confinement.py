"""llama.cpp runs strangers' prompts, claims to score and (with --fetch-models) GGUF files on the owner's
machine: a memory bug there runs their code in the process that holds the model. On real nodes (started as
whoever runs the tests: root in CI, the case that matters), that process, seen from the outside, must have
no_new_privs and a seccomp filter on every thread, no root, no socket (Thespian's ports unpickle whatever
reaches them: a socket to the NodeActor is root again) and no file of the node's home open; and llm steps
(greedy, schema-constrained, sampled) and scoring must still work through it. What code inside it can
still do is tested in tests/steps/test_confine.py."""

from __future__ import annotations

import os

import psutil
import pytest

from mesh.steps.stepuser import running_as_root

from ..conftest import model_holders, wait_for

pytestmark = [pytest.mark.mesh, pytest.mark.llm]


def status(pid: int, tid: int | None = None) -> dict[str, str]:
    path = f"/proc/{pid}/task/{tid}/status" if tid else f"/proc/{pid}/status"
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def confinement_faults(pid: int, home: str) -> list[str]:
    """What is wrong with the model process `pid` of the node whose home is `home`, for every thread."""
    faults = []
    proc = psutil.Process(pid)
    if proc.name() != "hm-model":
        faults.append(f"named {proc.name()!r}")
    for tid in os.listdir(f"/proc/{pid}/task"):
        st = status(pid, int(tid))
        if st["NoNewPrivs"] != "1" or st["Seccomp"] != "2":
            faults.append(f"thread {tid}: NoNewPrivs {st['NoNewPrivs']}, Seccomp {st['Seccomp']}")
        if running_as_root() and any(int(i) == 0 for i in st["Uid"].split() + st["Gid"].split()):
            faults.append(f"thread {tid} runs as root: Uid {st['Uid']}, Gid {st['Gid']}")
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:"):
            faults.append(f"fd {fd} is a socket")
        if target.startswith(home + os.sep) and not target.endswith(".gguf"):
            faults.append(f"fd {fd} is {target}, in the node's home")
    return faults


@pytest.mark.timeout(360)
def test_the_model_process_of_a_real_node_is_confined_and_still_serves_llm_and_score_steps(make_mesh):
    mesh = make_mesh(4, lambda i: ["--no-model"] if i == 0 else [])
    workers, client = mesh.nodes[1:], mesh.nodes[0].client
    for node in workers:
        (pid,) = wait_for(lambda n=node: model_holders(n), 60, "the model to load")  # one process holds the model
        assert confinement_faults(pid, str(node.home.resolve())) == []
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    job = {"redundancy": 3, "steps": [  # (scoring: one generates, the others score)
        {"id": "greedy", "kind": "llm", "params": {"prompt": "The capital of France is", "max_tokens": 12}},
        {"id": "schema", "kind": "llm",
         "params": {"prompt": "The capital of France, as JSON: ", "max_tokens": 24, "json_schema": schema}},
        {"id": "sampled", "kind": "llm",
         "params": {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.8, "seed": 3}},
        {"id": "scored", "kind": "llm", "compare": "score", "params": {"prompt": "Once upon a time", "max_tokens": 16}},
        {"id": "scored_sampled", "kind": "llm", "compare": "score",
         "params": {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.8}}]}
    job_id = client.request("POST", "/jobs", {"job": job})["job_id"]
    rep = wait_for(lambda: (r := client.request("GET", f"/jobs/{job_id}?wait=2")) and r["status"] != "running" and r,
                   240, "the job to end")
    steps = rep["steps"]
    assert rep["status"] == "done", "; ".join(f"{sid} {s['status']}: {s['replicas']}" for sid, s in steps.items())
    assert steps["greedy"]["output"].strip() and isinstance(steps["schema"]["output"]["city"], str)
    assert all(r["agreed"] for s in steps.values() for r in s["replicas"]), steps
    for sid in ("scored", "scored_sampled"):
        roles = [r["role"] for r in steps[sid]["replicas"]]
        assert "generate" in roles and "verify" in roles, steps[sid]
    for node in workers:  # llama.cpp's threads, started by the steps, are as confined as the one that loaded
        (pid,) = model_holders(node)
        assert confinement_faults(pid, str(node.home.resolve())) == []
