"""Comparators and adaptive replication in the sans-I/O core, then on a real mesh."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mesh.canonical import digest
from mesh.compare import Comparator
from mesh.dag import parse_job
from mesh.errors import JobError
from mesh.jobrun import JobRun
from mesh.policy import Candidate
from mesh.quorum import NeedMore

from .conftest import cli_json

pytestmark = pytest.mark.timeout(120)


def test_exact_text_and_numeric_comparators():
    exact, text = Comparator("exact"), Comparator("text")
    assert exact.key("Hello  World") != exact.key("hello world")
    assert text.key("Hello  World\n") == text.key("hello world") == text.key("ＨＥＬＬＯ world")
    assert text.key({"t": "A  b"}) == text.key({"t": "a b"})
    num = Comparator("numeric:1e-6")
    a = num.key({"x": 1.0, "ys": [2.0, 3.0], "label": "ok"})
    assert num.key({"x": 1.0000005, "ys": [2.0000001, 3.0], "label": "ok"}) == a
    assert num.key({"x": 1.1, "ys": [2.0, 3.0], "label": "ok"}) != a
    assert num.key({"x": 1.0, "ys": [2.0, 3.0], "label": "OK"}) != a  # strings still exact
    assert num.key({"x": 1.0, "ys": [2.0], "label": "ok"}) != a  # shape must match
    assert num.key(True) != num.key(1)


@pytest.mark.parametrize("spec", ["fuzzy", "numeric", "numeric:x", "numeric:2", "text:1"])
def test_bad_comparators_are_job_errors(spec):
    with pytest.raises(JobError, match="compare"):
        parse_job({"steps": [{"id": "a", "kind": "python", "params": {"code": "x"}, "compare": spec}]})


def one_step_job(**extra) -> dict:
    return {"redundancy": 3, "steps": [{"id": "a", "kind": "python", "params": {"code": "x"}, **extra}]}


WORKERS = [Candidate(f"w{i}", 0.9, f"10.0.{i}.0/24") for i in range(4)]


def test_text_comparator_lets_differently_spaced_answers_agree():
    run = JobRun("j", parse_job(one_step_job(compare="text")), random.Random(1))
    sent = run.advance({"python": WORKERS}, 0.0)
    outs = ["The  Answer", "the answer", "THE ANSWER\n"]
    for d, out in zip(sent, outs, strict=True):
        run.on_result("a", d.node, True, digest(out), out, {"cpu_s": 0.1}, "")
    run.advance({"python": WORKERS}, 0.0)
    rep = run.report()["steps"]["a"]
    assert rep["status"] == "done" and all(r["agreed"] for r in rep["replicas"])
    assert rep["digest"] == digest(outs[0]) or rep["digest"] in {digest(o) for o in outs}


def test_numeric_tolerance_outvotes_a_far_answer():
    run = JobRun("j", parse_job(one_step_job(compare="numeric:1e-3")), random.Random(1))
    sent = run.advance({"python": WORKERS}, 0.0)
    for d, out in zip(sent, [3.14159, 3.1416, 2.71828], strict=True):
        run.on_result("a", d.node, True, digest(out), out, {}, "")
    run.advance({"python": WORKERS}, 0.0)
    (o,) = run.take_outcomes()
    assert o.accepted and len(o.agreeing) == 2 and len(o.dissenting) == 1


def trusted(streak: int) -> list[Candidate]:
    return [Candidate(f"w{i}", 0.9, f"10.0.{i}.0/24", streak) for i in range(4)]


def test_adaptive_replication_sends_trusted_workers_steps_alone_except_one_in_n():
    job = parse_job({**one_step_job(), "adaptive": 5})
    sizes = Counter()
    for seed in range(400):
        run = JobRun("j", job, random.Random(seed))
        sizes[len(run.advance({"python": trusted(5)}, 0.0))] += 1
    assert set(sizes) == {1, 3}
    assert 0.12 < sizes[3] / 400 < 0.28  # about 1/N replicated, as a check
    for seed in range(50):  # below the threshold: always the full redundancy
        assert len(JobRun("j", job, random.Random(seed)).advance({"python": trusted(4)}, 0.0)) == 3


def test_a_trusted_worker_that_fails_sends_the_step_back_to_full_replication():
    job = parse_job({**one_step_job(), "adaptive": 2})
    run = next(r for s in range(50) if len((r := JobRun("j", job, random.Random(s))).advance(
        {"python": trusted(9)}, 0.0)) == 1)
    (solo,) = run.steps["a"].replicas
    run.on_failure("a", solo, "timeout")
    assert isinstance(run.steps["a"].tally.decide(), NeedMore)
    more = run.advance({"python": trusted(9)}, 1.0)
    assert len(more) == 2 and solo not in {d.node for d in more}  # needs 2 of 3 now, from the others


@pytest.mark.mesh
@pytest.mark.timeout(240)
def test_adaptive_replication_on_a_real_mesh_cuts_replicas_and_still_catches_wrong_answers(make_mesh, tmp_path):
    mesh = make_mesh(5, lambda i: ["--no-model"] + (["--fault", "wrong"] if i == 4 else []))
    bad = mesh.nodes[4].node_id
    job = {"redundancy": 3, "adaptive": 3,
           "steps": [{"id": "a", "kind": "python", "params": {"code": "output = 6 * 7"}}]}
    client = mesh.nodes[0].client
    replicas, outputs, bad_alone = [], [], 0
    for _ in range(30):
        job_id = client.request("POST", "/jobs", {"job": job})["job_id"]
        while (rep := client.request("GET", f"/jobs/{job_id}?wait=5"))["status"] == "running":
            pass
        step = rep["steps"]["a"]
        outputs.append(step["output"])
        replicas.append(len(step["replicas"]))
        bad_alone += step["unreplicated"] and step["replicas"][0]["node"] == bad
    assert outputs == [42] * 30  # every answer right
    assert bad_alone == 0  # the wrong node never earns the trust to run alone
    mean = sum(replicas) / len(replicas)
    # expected about 2.0 (sd about 0.2) once the honest workers have a record of 3 validated results
    assert mean < 2.6, replicas
    assert 1 in replicas
    ranking = cli_json("ledger", "peers", "--home", str(mesh.nodes[0].home))
    assert ranking[-1]["node"] == bad
    assert cli_json("ledger", "balance", "--home", str(mesh.nodes[4].home))["balance"] == 0
