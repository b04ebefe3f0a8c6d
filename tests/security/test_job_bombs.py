"""Jobs shaped to hurt the node that submits or runs them (found by an attack on the running API,
2026-12-05), against real nodes:

- earlier outputs filled into a step's params past what one request can carry: the submitter sent the
  request anyway, the worker dropped the link for frame-too-large and penalised the submitter (an honest
  user's job cost their own node reputation); and 2,500 copies of a 400 KB output in one URL took the
  submitter 4.7 GB. The step now fails at once, saying why, and nothing over the cap is built or sent;
- a json_schema whose minItems makes llama.cpp's converter write 40,000,000 rules (1.4 GB, the event
  loop held 2.6 s): refused with the job, as a user's mistake;
- a python step whose output holds a lone surrogate (JSON text, no UTF-8): the worker never answered and
  the job waited its whole timeout; it fails at once now, like any output that cannot be sent;
- a Last-Event-ID that is no event number (a superscript digit, 5,000 digits): a 500 with a traceback;
  the stream starts from the first event instead.
"""

from __future__ import annotations

import http.client
import json
import time

import psutil
import pytest

from mesh.node.home import read_token
from mesh.wire.envelope import DEFAULT_FRAME_CAP

from .hostile import rejected

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180)]
MAX_PARAMS_BYTES = DEFAULT_FRAME_CAP - (16 << 10)  # a step's params, with earlier outputs in them (mesh.core.dag)


@pytest.fixture(scope="module")
def trio(module_mesh):
    return module_mesh(3, lambda i: ["--no-model", "--no-scrape"])


def post_job(node, job: dict) -> tuple[int, dict]:
    return call(node, "POST", "/jobs", {"job": job})


def call(node, method: str, path: str, body: object = None, headers: dict | None = None,
         timeout: float = 30) -> tuple[int, dict | str]:
    conn = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=timeout)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None,
                     {"Authorization": f"Bearer {read_token(node.home)}", "Content-Type": "application/json",
                      **(headers or {})})
        res = conn.getresponse()
        raw = res.read().decode("utf-8", "replace")
        try:
            return res.status, json.loads(raw)
        except json.JSONDecodeError:
            return res.status, raw
    finally:
        conn.close()


def wait_job(node, job_id: str, timeout: float = 60) -> dict:
    status, rep = call(node, "GET", f"/jobs/{job_id}?wait={int(timeout)}", timeout=timeout + 10)
    assert status == 200, rep
    return rep


def test_earlier_outputs_too_big_for_one_request_fail_the_step_and_cost_the_submitter_nothing(trio):
    sub, workers = trio.nodes[0], trio.nodes[1:]
    before = [rejected(w).get("frame-too-large", 0) for w in workers]
    big = [{"id": f"a{i}", "kind": "python", "params": {"code": f"output = '{i}' * 400_000"}} for i in range(3)]
    status, got = post_job(sub, {"name": "too-big", "redundancy": 2, "timeout": 60, "steps": [
        *big, {"id": "b", "kind": "python", "after": ["a0", "a1", "a2"],
               "params": {"code": "output = sum(len(v) for v in inputs.values())"}}]})
    assert status == 201, got
    rep = wait_job(sub, got["job_id"])
    assert rep["status"] == "failed" and all(rep["steps"][f"a{i}"]["status"] == "done" for i in range(3)), rep
    error = rep["steps"]["b"]["error"]
    assert f"at most {MAX_PARAMS_BYTES:,}" in error and rep["steps"]["b"]["replicas"] == [], rep["steps"]["b"]
    time.sleep(1)  # (anything sent would have arrived by now)
    assert [rejected(w).get("frame-too-large", 0) for w in workers] == before


def test_a_json_schema_that_repeats_a_rule_millions_of_times_is_refused_with_the_job(trio):
    node = trio.nodes[0]
    proc = psutil.Process(node.proc.pid)
    rss = proc.memory_info().rss
    t0 = time.monotonic()
    status, got = post_job(node, {"name": "grammar-bomb", "steps": [{"id": "a", "kind": "llm", "params": {
        "prompt": "list", "json_schema": {"type": "array", "items": {"type": "string"}, "minItems": 40_000_000}}}]})
    took = time.monotonic() - t0
    assert status == 400 and "minItems must be a whole number from 0 to 1000" in got["error"], (status, got)
    assert took < 2.0 and proc.memory_info().rss - rss < 100 << 20, (took, proc.memory_info().rss - rss)


def test_an_output_with_a_lone_surrogate_fails_its_step_at_once(trio):
    node = trio.nodes[0]
    t0 = time.monotonic()
    status, got = post_job(node, {"name": "surrogate", "redundancy": 2, "timeout": 120, "steps": [
        {"id": "a", "kind": "python", "params": {"code": "output = 'ok \\ud800'"}}]})
    assert status == 201, got
    rep = wait_job(node, got["job_id"], 60)
    assert rep["status"] == "failed" and time.monotonic() - t0 < 30, rep
    assert "cannot be sent as JSON" in json.dumps(rep["steps"]["a"]), rep["steps"]["a"]


def test_a_last_event_id_that_is_no_event_number_starts_the_stream_from_the_first_event(trio):
    node = trio.nodes[0]
    status, got = post_job(node, {"name": "events", "redundancy": 2, "steps": [
        {"id": "a", "kind": "python", "params": {"code": "output = 1"}}]})
    assert status == 201, got
    wait_job(node, got["job_id"])
    for header in ("\xb2", "9" * 5000, "-1", "1e3"):
        status, body = call(node, "GET", f"/jobs/{got['job_id']}/events", headers={"Last-Event-ID": header})
        assert status == 200 and isinstance(body, str) and "event: job" in body, (header[:8], status, str(body)[:200])
    status, body = call(node, "GET", f"/jobs/{got['job_id']}/events", headers={"Last-Event-ID": "0"})
    assert status == 200 and "event: job" not in body  # a real event number still resumes after it


def test_an_output_nested_500_deep_fails_its_step_at_once_instead_of_waiting_out_the_timeout(trio):
    """The step writes its own result line, 500 levels of lists: it parsed in the worker's step actor,
    which could not pickle it to its node (Thespian dropped the message as poison), so the replica
    answered nothing until its timeout + 15 s (found by this session's sandbox attacker)."""
    sub = trio.nodes[0]
    deep = "[" * 500 + "]" * 500
    code = ("import os\nos.write(1, ('\\x1ehomemesh-result\\x1e' + '{\"ok\":true,\"output\":" + deep +
            ",\"stdout\":\"\",\"stderr\":\"\"}').encode())\nos._exit(0)")
    t = time.monotonic()
    status, got = post_job(sub, {"name": "deep", "redundancy": 2, "timeout": 30,
                                 "steps": [{"id": "d", "kind": "python", "params": {"code": code}}]})
    assert status == 201, got
    rep = wait_job(sub, got["job_id"])
    assert rep["status"] == "failed" and time.monotonic() - t < 25, (time.monotonic() - t, rep)
    errors = [r.get("error", "") for r in rep["steps"]["d"]["replicas"]]
    assert any("nested deeper than 100" in e for e in errors) and not any("timeout" in e for e in errors), errors
