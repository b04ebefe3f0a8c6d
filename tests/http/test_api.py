"""The HTTP API, the OpenAI-compatible endpoint and `mesh ask` on one real 4-node mesh (the real model):
the order of a job's server-sent events, the step catalogue, planning, the ledger and peer endpoints,
tokens and bad input, and the official `openai` client, plain and streaming, with signed replicas."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from mesh.core.dag import parse_job
from mesh.steps.models import DEFAULT_MODEL, INSTRUCT_MODEL, INSTRUCT_SHA256
from mesh.wire.attest import verify

from ..conftest import run_cli

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(300)]

THREE_STEPS = {"name": "three", "steps": [
    {"id": "a", "kind": "python", "params": {"code": "output = 6 * 7"}},
    {"id": "b", "kind": "python", "params": {"code": "output = inputs['a'] + 1"}, "after": ["a"]},
    {"id": "c", "kind": "llm", "params": {"prompt": "The number {b.output} is", "max_tokens": 24}},
]}


def call(node, method: str, path: str, body: object = None, token: bool = True,
         headers: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if token:
        hdrs["Authorization"] = f"Bearer {node.client.token}"
    req = urllib.request.Request(node.api + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def oai(node) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.api + "/v1", api_key=node.client.token, max_retries=0, timeout=240)


def test_events_of_a_three_step_job_come_in_causal_order(node, mesh):
    status, body = call(node, "POST", "/jobs", {"job": THREE_STEPS, "redundancy": 3})
    assert status == 201
    job_id = body["job_id"]
    events = list(node.client.events(job_id))
    kinds = [k for k, _ in events]
    assert kinds[0] == "job" and kinds[-1] == "done" and kinds.count("done") == 1
    assert events[0][1]["steps"] == ["a", "b", "c"]
    assert events[-1][1]["status"] == "done" and events[-1][1]["steps"]["c"]["status"] == "done"

    def first(pred) -> int:
        return next(i for i, (k, d) in enumerate(events) if pred(k, d))

    def at(step: str, status: str) -> int:
        return first(lambda k, d: k == "step" and d["step"] == step and d["status"] == status)

    for sid in "abc":
        assert at(sid, "waiting") < at(sid, "running") < at(sid, "done")
        replicas = [(i, d) for i, (k, d) in enumerate(events) if k == "replica" and d["step"] == sid]
        assert {d["node"] for _, d in replicas} <= {n.node_id for n in mesh.nodes[1:]}
        assert len({d["node"] for _, d in replicas if d["state"] == "answered"}) == 3
        assert all(at(sid, "running") < i < at(sid, "done") for i, _ in replicas)
    assert at("a", "done") < at("b", "running") and at("b", "done") < at("c", "running")
    progress = [i for i, (k, d) in enumerate(events) if k == "progress"]
    assert progress and all(at("c", "running") < i < at("c", "done") for i in progress)
    done_a = events[at("a", "done")][1]
    assert done_a["output"] == 42 and len(done_a["agreed"]) == 3

    # Resuming after event 5 (Last-Event-ID) gives exactly the events after it.
    req = urllib.request.Request(f"{node.api}/jobs/{job_id}/events", headers={
        "Authorization": f"Bearer {node.client.token}", "Last-Event-ID": "5"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = resp.read().decode()
    assert text.startswith("id: 6\n") and text.count("event: ") == len(events) - 6


def test_step_catalogue_needs_no_token_and_describes_every_kind(node):
    status, kinds = call(node, "GET", "/steps", token=False)
    assert status == 200 and set(kinds) == {"python", "llm", "ask-model", "scrape"}
    assert kinds["python"]["params"]["required"] == ["code"]
    assert kinds["scrape"]["params"]["properties"]["max_chars"]["maximum"] == 200000
    assert kinds["python"]["workers"] == 3 and kinds["llm"]["workers"] == 3
    for kind, spec in kinds.items():  # what the schema requires, the job checks demand
        step = {"id": "s", "kind": kind, "params": {}}
        with pytest.raises(Exception, match="needs|names its model"):
            parse_job({"steps": [step]})
        assert spec["params"]["additionalProperties"] is False


def test_plans_of_hostile_questions_are_quick_and_bounded(node):
    """Found by this project's red team (2026-12-06): a question's whitespace reached some rules'
    regexes uncollapsed, quadratic in a run of tabs (8 such questions at once took 6.15 s on the node's
    loop, the attacker measured), and "a then " × 285 planned 286 llm steps."""
    tabs = ("fibonacci 5 add" + "\t" * 2000)[:1999] + "1"
    began = time.monotonic()
    for _ in range(8):
        status, _reply = call(node, "POST", "/plan", {"query": tabs, "planner": "rules"})
        assert status in (200, 400), _reply
    took = time.monotonic() - began
    print(f"8 questions with 1,984 tabs planned in {took:.2f} s")
    assert took < 3.0
    status, reply = call(node, "POST", "/plan", {"query": ("a then " * 400)[:2000], "planner": "rules"})
    assert status == 400 and "at most 12" in reply["error"], reply


def test_plan_endpoint_with_rules_and_with_the_model(node):
    status, reply = call(node, "POST", "/plan", {"query": "What is the average of 3, 8, 12 and 20?",
                                                 "planner": "rules", "redundancy": 2})
    assert status == 200 and reply["planner"] == "rules"
    job = parse_job(reply["plan"])
    assert job.redundancy == 2 and [s.kind for s in job.steps] == ["python"]
    assert "calc [python]" in reply["tree"]
    status, reply = call(node, "POST", "/plan", {"query": "Summarise https://example.org/news for me",
                                                 "planner": "model"})
    assert status == 200 and reply["planner"] in ("llm", "rules")
    job = parse_job(reply["plan"])  # whichever planner won, the plan is a valid job fetching that URL
    assert [s.params["url"] for s in job.steps if s.kind == "scrape"] == ["https://example.org/news"]
    assert bool(reply["fallback"]) == (reply["planner"] == "rules")
    for bad in ({"query": ""}, {"query": "x" * 2001}, {"query": "hi", "planner": "psychic"}, {}):
        status, reply = call(node, "POST", "/plan", bad)
        assert status == 422 and "query" in reply["error"] or "planner" in reply["error"]


def test_tokens_and_bad_input_get_a_clear_4xx(node):
    for method, path in (("GET", "/status"), ("GET", "/jobs"), ("POST", "/jobs"), ("POST", "/plan"),
                         ("GET", "/ledger/balance"), ("GET", "/peers"), ("GET", "/v1/models"),
                         ("POST", "/v1/chat/completions"), ("GET", "/jobs/abc/events")):
        status, body = call(node, method, path, {}, token=False)
        assert status == 401 and "token" in json.dumps(body), path
    for path in ("/health", "/steps", "/openapi.json"):
        assert call(node, "GET", path, token=False)[0] == 200
    cycle = {"steps": [{"id": "a", "kind": "python", "params": {"code": "output = 1"}, "after": ["b"]},
                       {"id": "b", "kind": "python", "params": {"code": "output = 1"}, "after": ["a"]}]}
    status, body = call(node, "POST", "/jobs", {"job": cycle})
    assert status == 400 and "cycle" in body["error"]
    status, body = call(node, "POST", "/jobs", {"job": {"steps": [{"id": "a", "kind": "shell"}]}})
    assert status == 422 and "kind" in body["error"]
    status, body = call(node, "POST", "/jobs", b"{not json")
    assert status == 422 and body["error"]
    status, body = call(node, "GET", "/jobs/nosuchjob")
    assert status == 400 and "'nosuchjob' is not a job id" in body["error"]
    status, body = call(node, "GET", "/jobs/00000000aaaaffff0000")
    assert status == 404 and "no job 00000000 on this node" in body["error"]
    conn = http.client.HTTPConnection(node.api.split("//")[1], timeout=30)
    conn.putrequest("POST", "/jobs")  # a huge declared body is refused before it is sent
    for name, value in (("Content-Length", str(5 << 20)), ("Authorization", f"Bearer {node.client.token}")):
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "body over" in json.loads(resp.read())["error"]
    conn.close()


def test_ledger_and_peer_endpoints_after_work(node, mesh):
    status, body = call(node, "POST", "/jobs", {"job": {"steps": [THREE_STEPS["steps"][0]]}})
    assert list(node.client.events(body["job_id"]))[-1][1]["status"] == "done"
    status, bal = call(node, "GET", "/ledger/balance")
    assert status == 200 and bal["node"] == node.node_id and bal["balance"] < 0 and bal["spent"] > 0
    status, hist = call(node, "GET", "/ledger/history?limit=5")
    assert status == 200 and 0 < len(hist) <= 5 and any(e["kind"] == "paid" for e in hist)
    status, peers = call(node, "GET", "/ledger/peers")
    assert status == 200 and {p["node"] for p in peers} <= {n.node_id for n in mesh.nodes[1:]}
    assert all(0 <= p["reputation"] <= 1 for p in peers) and any(p["agreed"] > 0 for p in peers)
    status, live = call(node, "GET", "/peers")
    assert status == 200 and sorted(p["node"] for p in live) == sorted(n.node_id for n in mesh.nodes[1:])
    assert call(node, "GET", "/ledger/history?limit=0")[0] == 422


def test_openai_client_plain_answer_is_cross_checked_and_signed(node, mesh):
    client = oai(node)
    assert "default" in [m.id for m in client.models.list()]
    r = client.chat.completions.create(model="default", max_tokens=16, messages=[
        {"role": "system", "content": "Short answers."},
        {"role": "user", "content": "What is the capital of France?"}])
    text = r.choices[0].message.content
    assert text and r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0
    x = r.model_extra["x_homemesh"]
    assert x["status"] == "done" and x["rule"]["quorum"] == "majority" and x["rule"]["needed"] == 2
    assert len(x["replicas"]) == 3 and all(rep["agreed"] for rep in x["replicas"])
    workers = {n.node_id for n in mesh.nodes[1:]}
    for rep in x["replicas"]:
        assert rep["node"] in workers and rep["digest"] == x["digest"]
        assert verify(rep) == "", rep["node"]
        assert rep["payload"]["output"].lstrip() == text
    forged = json.loads(json.dumps(x["replicas"][0]))
    forged["payload"]["output"] = " Berlin."
    assert verify(forged) == "the payload is not the one signed"
    forged["signature"] = "00" * 64
    assert verify(forged) == "the signature does not verify"


def test_chat_defaults_to_the_instruct_model_through_its_chat_template(node, mesh):
    """`default` in chat is SmolLM2-135M-Instruct, prompted by the chat template in its GGUF (answers end
    at its end-of-turn token, not at a cut-off); `llm` steps still default to the base model; /v1/models
    lists both with the peers serving each."""
    client = oai(node)
    listed = {m.id: m.model_extra["x_homemesh"] for m in client.models.list()}
    workers = len(mesh.nodes) - 1
    assert listed["default"]["sha256"] == INSTRUCT_SHA256 and listed["default"]["default"] is True
    assert listed[INSTRUCT_MODEL]["peers"] == workers and listed[INSTRUCT_MODEL]["llm_default"] is False
    assert listed[DEFAULT_MODEL]["peers"] == workers and listed[DEFAULT_MODEL]["llm_default"] is True
    asked = {"What is 2 + 2?": "4", "How many days are there in a week?": "7"}  # (a 135M model: easy ones)
    for question, expected in asked.items():
        r = client.chat.completions.create(model="default", max_tokens=64,
                                           messages=[{"role": "user", "content": question}])
        text, x = r.choices[0].message.content, r.model_extra["x_homemesh"]
        print(f"chat example: {question!r} -> {text!r} ({r.usage.completion_tokens} tokens)")
        assert x["model"] == INSTRUCT_SHA256 and x["status"] == "done" and all(rep["agreed"] for rep in x["replicas"])
        assert expected in text and "<|im" not in text and r.choices[0].finish_reason == "stop"
    base = client.chat.completions.create(model=DEFAULT_MODEL, max_tokens=8,
                                          messages=[{"role": "user", "content": "Hello"}])
    assert base.model_extra["x_homemesh"]["model"] == listed[DEFAULT_MODEL]["sha256"]
    status, body = call(node, "POST", "/jobs", {"job": {"steps": [THREE_STEPS["steps"][2] | {
        "params": {"prompt": "The number 43 is", "max_tokens": 8}}]}, "redundancy": 2})
    assert status == 201
    done = list(node.client.events(body["job_id"]))[-1][1]
    assert done["status"] == "done", done


def test_openai_client_streams_what_a_quorum_already_agreed(node):
    client = oai(node)
    messages = [{"role": "user", "content": "Tell me a short story about a lighthouse."}]
    plain = client.chat.completions.create(model="default", max_tokens=48, messages=messages)
    stream = client.chat.completions.create(model="default", max_tokens=48, messages=messages, stream=True,
                                            extra_headers={"X-Homemesh-Redundancy": "2"},
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == plain.choices[0].message.content  # greedy: the same answer, streamed
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
    last = next(c for c in reversed(chunks) if c.choices)
    x = last.model_extra["x_homemesh"]
    assert last.choices[0].finish_reason in ("stop", "length") and x["stream_consistent"] is True
    assert len(x["replicas"]) == 2 and all(verify(rep) == "" for rep in x["replicas"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_openai_errors_are_openai_shaped(node):
    client = oai(node)
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.chat.completions.create(model="default", n=2, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="last message"):
        client.chat.completions.create(model="default", messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(openai.InternalServerError, match="fewer than the redundancy 5"):
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"X-Homemesh-Redundancy": "5"})
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=node.api + "/v1", api_key="wrong", max_retries=0).models.list()


def test_a_two_part_question_keeps_both_parts_and_the_instruct_model_says_it_in_words(node):
    """The question a new user asked: once 38 s of a model plan that was not complete JSON, then a plan of
    the computation alone. Now: planned by the rules in well under a second, a python step and an llm step
    on the instruct model that is shown the python step's output."""
    query = "Compute the sum of the squares of 1 to 10 with python, then have the model say it in words"
    t0 = time.monotonic()
    status, reply = call(node, "POST", "/plan", {"query": query})
    planned_s = time.monotonic() - t0
    assert status == 200 and reply["planner"] == "rules" and planned_s < 10, (planned_s, reply)
    steps = reply["plan"]["steps"]
    assert [s["kind"] for s in steps] == ["python", "llm"]
    assert steps[1]["params"]["model"] == INSTRUCT_SHA256 and "{calc.output}" in steps[1]["params"]["prompt"]
    res = run_cli("ask", "--home", str(node.home), "--yes", "--json", query, timeout=240)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)["result"]["steps"]
    print(f"plan in {planned_s:.3f} s; answer: {out['answer']['output']!r}")
    assert out["calc"]["output"] == 385 and "385" in out["answer"]["output"]


def test_mesh_ask_runs_the_plan_and_prints_one_json_object(node):
    res = run_cli("ask", "--home", str(node.home), "--yes", "--json", "--planner", "rules",
                  "What is the average of 3, 8, 12 and 20?", timeout=240)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out) >= {"plan", "result"} and out["planner"] == "rules"
    calc = out["result"]["steps"]["calc"]
    assert out["result"]["status"] == "done" and calc["output"] == 10.75
    assert sum(r["agreed"] for r in calc["replicas"]) == 3
    assert "calc: done" in res.stderr and "replica" in res.stderr  # live progress, per step and replica


def test_mesh_ask_asks_before_running(node):
    jobs_before = len(call(node, "GET", "/jobs")[1])
    res = run_cli("ask", "--home", str(node.home), "--planner", "rules", "what is 2 to the power 10")
    assert res.returncode == 0 and "not run" in res.stderr and "calc [python]" in res.stdout
    assert len(call(node, "GET", "/jobs")[1]) == jobs_before
    res = run_cli("ask", "--home", str(node.home), "   ")
    assert res.returncode == 2 and res.stderr.startswith("mesh: error: the query is empty")
    res = run_cli("ask", "--home", str(node.home), "--planner", "rules", "--plan-only", "--save",
                  "/nonexistent/dir/plan.json", "what is 2 to the power 10")
    assert res.returncode == 2 and res.stderr.splitlines()[-1] == (
        "mesh: error: cannot write /nonexistent/dir/plan.json: No such file or directory")


def test_mesh_ask_plans_a_percentage_by_the_rules_and_prints_36(node):
    """Issue 25: "What is 15% of 240?" was planned by the model as `output = 15% 240` (modulo), and three
    workers agreed on 15. The rules plan it, the tree says so, and the answer is 36."""
    res = run_cli("ask", "--home", str(node.home), "--yes", "What is 15% of 240?", timeout=240)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "planned by: rules", res.stdout
    assert "output: 36\n" in res.stdout and "calc: done  3 agreed → 36\n" in res.stderr, (res.stdout, res.stderr)
    assert res.stderr.startswith("planning… (the rules)\nplanned in ")
    # asked of the model, the rules still plan it, without waiting for the model
    res = run_cli("ask", "--home", str(node.home), "--plan-only", "--planner", "model", "What is 15% of 240?")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("planned by: rules (the model's plan was not used: the rules recognise the "
                                 "calculation"), res.stdout


def test_mesh_ask_cuts_a_slow_model_plan_off_and_says_so(node):
    t0 = time.monotonic()
    res = run_cli("ask", "--home", str(node.home), "--plan-only", "--planner", "model", "--plan-timeout", "0.3",
                  "Write a haiku about autumn and then summarise it in one word")
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == ("planned by: rules (the model's plan was not used: the model did not "
                                          "plan: out of time after 0.3 s)"), res.stdout
    assert res.stderr.startswith("planning… (the model, at most 0.3 s, else the rules)\n") and took < 30, took
    for bad in ("0", "601"):
        res = run_cli("ask", "--home", str(node.home), "--plan-timeout", bad, "hi")
        assert res.returncode == 2 and res.stderr == (
            f"mesh: error: --plan-timeout must be more than 0 and at most 600 seconds, not {float(bad):g}\n")


def test_a_burst_of_jobs_waits_for_busy_workers_instead_of_failing(node):
    """40 jobs at once at r=3 on 3 workers: each worker takes 4 requests from one peer at a time and
    answers more with "busy"; the submitter holds replicas back until a worker has room."""
    step = {"id": "s", "kind": "python", "params": {"code": "output = sum(range(10 ** 5))"}}
    ids = [call(node, "POST", "/jobs", {"job": {"name": "burst", "steps": [step]}})[1]["job_id"] for _ in range(40)]
    reports = [call(node, "GET", f"/jobs/{job_id}?wait=60")[1] for job_id in ids]
    assert [r["status"] for r in reports] == ["done"] * 40
    errors = [rep.get("error", "") for r in reports for rep in r["steps"]["s"]["replicas"]]
    assert not any("busy" in e for e in errors), errors
