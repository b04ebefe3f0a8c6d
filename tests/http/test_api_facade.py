"""The HTTP API built on a fake NodeFacade (no Node, no network, no model): everything it shows and does
comes through the facade, so a fake one is enough to drive it. The real node is tests/http/test_api.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from ledger.receipts import make_receipt
from ledger.store import Entry, Ledger
from mesh.core.dag import Job
from mesh.errors import CreditError, StepFailed
from mesh.http.api import build_app, fetch_stream
from mesh.http.facade import NodeFacade
from mesh.http.pagekeys import proof
from mesh.wire.identity import Identity

pytestmark = pytest.mark.timeout(60)

TOKEN = "t0ken"
JOB = {"steps": [{"id": "a", "kind": "python", "params": {"code": "output = 1"}}]}


@dataclass
class Fake:
    home: Path
    submitted: list[Job] = field(default_factory=list)
    credit_ok: bool = True
    pauses: list[str] = field(default_factory=list)

    def pause(self, reason: str) -> dict:
        self.pauses.append(reason)
        return {"paused": reason or None}

    async def submit(self, job: Job) -> str:
        if not self.credit_ok:
            raise CreditError("past the credit line")
        self.submitted.append(job)
        return f"job{len(self.submitted)}"

    def facade(self, **changes) -> NodeFacade:
        async def no_model(params: dict, timeout: float) -> object:
            raise AssertionError("the model was asked though the node has none")

        async def no_heads(wait: float) -> dict:
            return {"asked": [], "answers": [], "wait": wait}

        base = NodeFacade(
            node_id="n" * 64, token=TOKEN, home=self.home, ledger_path=self.home / "ledger.db",
            jobs_dir=self.home / "jobs", model_missing="started with --no-model",
            status=lambda: {"node": "n" * 64, "peers": [{"node": "p" * 64}]}, jobs=lambda: {},
            report=lambda st: {}, submit=self.submit, workers_for=lambda needs: 0,
            kinds_offered=lambda: Counter({"python": 2}), models_held=lambda: Counter({"ab" * 32: 3}),
            ask_model=no_model, peer_heads=no_heads, cancel=lambda job_id: False, pause=self.pause)
        return replace(base, **changes)


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    (tmp_path / "jobs").mkdir()
    return Fake(tmp_path)


def call(facade: NodeFacade, method: str, path: str, body: object = None, token: bool = True,
         app=None) -> tuple[int, object]:
    """One request through the ASGI app (built for this request, or `app`), as uvicorn would hand it over."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    headers = [(b"host", b"127.0.0.1:4751"), (b"content-type", b"application/json"),
               (b"content-length", str(len(data)).encode())]
    if token:
        headers.append((b"authorization", f"Bearer {TOKEN}".encode()))
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": query.encode(), "headers": headers, "scheme": "http",
             "server": ("127.0.0.1", 4751), "client": ("127.0.0.1", 50000), "root_path": ""}
    inbox = [{"type": "http.request", "body": data, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run((app or build_app(facade))(scope, receive, send))
    raw = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(raw) if raw.startswith((b"{", b"[")) else raw


def test_the_schema_is_built_without_a_node():
    assert "/jobs" in build_app(SimpleNamespace()).app.openapi()["paths"]  # type: ignore[arg-type]


def test_health_needs_no_token_and_the_rest_does(fake):
    assert call(fake.facade(), "GET", "/health", token=False) == (200, {"ok": True, "node": "n" * 64})
    assert call(fake.facade(), "GET", "/status", token=False)[0] == 401
    assert call(fake.facade(), "GET", "/peers") == (200, [{"node": "p" * 64}])


def test_submit_goes_to_the_facade_and_a_credit_error_is_402(fake):
    assert call(fake.facade(), "POST", "/jobs", {"job": JOB, "redundancy": 2}) == (201, {"job_id": "job1"})
    assert fake.submitted[0].redundancy == 2 and fake.submitted[0].steps[0].id == "a"
    fake.credit_ok = False
    status, body = call(fake.facade(), "POST", "/jobs", {"job": JOB})
    assert status == 402 and "credit line" in body["error"]


def test_a_finished_job_is_read_from_the_jobs_dir(fake):
    (fake.home / "jobs" / "abc123.json").write_text(json.dumps({"job_id": "abc123", "status": "done"}))
    assert call(fake.facade(), "GET", "/jobs/abc123") == (200, {"job_id": "abc123", "status": "done"})
    assert call(fake.facade(), "GET", "/jobs/ffff99")[0] == 404
    assert call(fake.facade(), "GET", "/jobs/nope")[0] == 400  # not an id at all
    status, raw = call(fake.facade(), "GET", "/jobs/abc123/events")
    assert status == 200 and raw.startswith(b"id: 0\nevent: done\ndata: {")


HAIKU = "Write a haiku about autumn"  # no calculation in it: the model is asked (planner model)


def test_plan_without_a_model_and_with_a_failing_one_falls_back_to_the_rules(fake):
    status, body = call(fake.facade(), "POST", "/plan", {"query": "What is 2 + 3?"})
    assert status == 200 and body["planner"] == "rules" and body["fallback"] == ""  # the default: rules first
    assert body["tree"].splitlines()[0] == "planned by: rules"
    status, body = call(fake.facade(), "POST", "/plan", {"query": HAIKU, "planner": "model"})
    assert status == 200 and body["planner"] == "rules"
    assert body["fallback"].endswith("this node has no model (started with --no-model)")

    async def broken(params: dict, timeout: float) -> object:
        raise StepFailed("the model runner died")

    status, body = call(fake.facade(model_missing="", ask_model=broken), "POST", "/plan",
                        {"query": HAIKU, "planner": "model"})
    assert status == 200 and body["planner"] == "rules" and "the model runner died" in body["fallback"]


def test_a_body_that_is_not_json_or_holds_nan_is_told_so(fake):
    """A 422 said "1: JSON decode error" for a body that is not JSON, and "should be less than or equal to
    3600" for a NaN or infinite timeout (Python's json reads both)."""
    status, body = call(fake.facade(), "POST", "/jobs", b'{"job": {bad')
    assert status == 422 and body["error"].startswith("the body is not JSON (") and "at character 9" in body["error"]
    for number in (b"NaN", b"Infinity", b"1e999"):
        job = b'{"job": {"steps": [{"id": "a", "kind": "python", "params": {}}], "timeout": ' + number + b"}}"
        status, body = call(fake.facade(), "POST", "/jobs", job)
        assert (status, body["error"]) == (422, "job.timeout: Input should be a finite number"), body
    chat = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    status, body = call(fake.facade(), "POST", "/v1/chat/completions", chat)
    assert status == 422 and "finite" in body["error"]["message"], body
    assert not fake.submitted


def test_a_ticket_is_traded_for_the_token_once_and_a_proof_is_for_the_token_and_the_address(fake):
    """mesh/http/pagekeys.py: what a page of the node asks before it holds or sends the token."""
    assert call(fake.facade(), "POST", "/tickets", token=False)[0] == 401
    status, body = call(fake.facade(), "POST", "/tickets")
    assert status == 201 and len(body["ticket"]) == 32
    node = fake.facade()
    app = build_app(node)  # (tickets live in the app, built once as a node builds it)
    tickets = [call(node, "POST", "/tickets", app=app)[1]["ticket"] for _ in range(3)]
    redeem = lambda ticket: call(node, "POST", "/tickets/redeem", {"ticket": ticket}, False, app)  # noqa: E731
    assert redeem(tickets[1]) == (200, {"token": TOKEN})
    assert redeem(tickets[1])[0] == 404  # once
    assert redeem("0" * 32)[0] == 404 and redeem("x")[0] == 422
    assert redeem(tickets[0]) == (200, {"token": TOKEN})
    nonce = "ab" * 16
    status, body = call(node, "GET", f"/prove?nonce={nonce}", token=False)
    assert (status, body) == (200, {"proof": proof(TOKEN, "127.0.0.1:4751", nonce)})
    assert body["proof"] != proof(TOKEN, "127.0.0.1:4752", nonce) != proof("other", "127.0.0.1:4751", nonce)
    assert call(node, "GET", "/prove?nonce=abc", token=False)[0] == 422


def test_the_rules_plan_a_calculation_they_recognise_without_asking_the_model(fake):
    """--planner model once ran the model's `output = 15% 240` (modulo): 15, three workers agreeing."""
    status, body = call(fake.facade(model_missing=""), "POST", "/plan",  # (its ask_model fails the test)
                        {"query": "What is 15% of 240?", "planner": "model"})
    assert status == 200 and body["planner"] == "rules" and "rules recognise the calculation" in body["fallback"]
    assert body["tree"].splitlines()[0].startswith("planned by: rules (the model's plan was not used: the rules")
    assert [s["kind"] for s in body["plan"]["steps"]] == ["python"]


def test_a_model_that_plans_too_long_is_cut_off_and_the_rules_plan(fake):
    asked: list[float] = []

    async def slow(params: dict, timeout: float) -> object:
        asked.append(timeout)
        await asyncio.sleep(30)
        raise AssertionError("not cut off")

    t0 = time.monotonic()
    status, body = call(fake.facade(model_missing="", ask_model=slow), "POST", "/plan",
                        {"query": HAIKU, "planner": "model", "timeout": 0.5})
    assert time.monotonic() - t0 < 10 and asked == [0.5]
    assert status == 200 and body["planner"] == "rules"
    assert body["fallback"] == "the model did not plan: out of time after 0.5 s"
    for bad in (0, -1, 601, "soon"):
        status, body = call(fake.facade(), "POST", "/plan", {"query": HAIKU, "timeout": bad})
        assert status == 422 and "timeout" in body["error"], body


def test_a_plan_the_model_made_names_the_model_and_an_unparseable_one_is_refused(fake):
    async def haiku(params: dict, timeout: float) -> object:
        return {"steps": [{"id": "answer", "kind": "llm", "prompt": "A haiku about autumn:\n"}]}

    async def broken_python(params: dict, timeout: float) -> object:
        return {"steps": [{"id": "calc", "kind": "python", "code": "output = (1 +"}]}

    status, body = call(fake.facade(model_missing="", ask_model=haiku), "POST", "/plan",
                        {"query": HAIKU, "planner": "model"})
    assert status == 200 and body["planner"] == "llm"
    assert body["tree"].splitlines()[0] == "planned by: the model (gemma-3-270m-q4_k_m)"
    status, body = call(fake.facade(model_missing="", ask_model=broken_python), "POST", "/plan",
                        {"query": HAIKU, "planner": "model"})
    assert status == 200 and body["planner"] == "rules"
    assert body["fallback"].startswith("step 'calc': the code is not Python")


def test_steps_and_models_count_what_peers_offer(fake):
    status, steps = call(fake.facade(), "GET", "/steps", token=False)
    assert status == 200 and steps["python"]["workers"] == 2
    status, models = call(fake.facade(), "GET", "/v1/models")
    assert status == 200 and models["data"][0]["x_homemesh"]["peers"] == 3


def test_chat_needs_enough_workers_for_its_redundancy(fake):
    status, body = call(fake.facade(), "POST", "/v1/chat/completions",
                        {"model": "default", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 503 and "fewer than the redundancy" in body["error"]["message"] and not fake.submitted


def test_chat_options_the_mesh_cannot_honour_are_refused_not_ignored(fake):
    """logprobs, logit_bias and penalties were accepted and dropped: the client got an answer it had not
    asked for, and no log-probabilities. Their off values (false, 0, {}) still pass."""
    hi = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    for key, value in (("logprobs", True), ("top_logprobs", 3), ("logit_bias", {"50256": -100}),
                       ("frequency_penalty", 0.5), ("presence_penalty", -1.0)):
        status, body = call(fake.facade(), "POST", "/v1/chat/completions", {**hi, key: value})
        assert status == 400 and body["error"]["param"] == key, (key, body)
        assert "not supported" in body["error"]["message"]
    status, body = call(fake.facade(), "POST", "/v1/chat/completions",
                        {**hi, "logprobs": False, "top_logprobs": 0, "logit_bias": {}, "frequency_penalty": 0})
    assert status == 503 and "fewer than the redundancy" in body["error"]["message"]  # on to placement


def test_the_ledger_is_read_from_the_facades_path(fake):
    me, payer = Identity.generate(), Identity.generate()
    led = Ledger(fake.home / "ledger.db")
    r = make_receipt(payer, "j", "s", me.node_id, 1.5, 1)
    led.append([Entry("earned", "j", "s", payer.node_id, 1.5, {"receipt": r})], 1)
    led.close()
    status, body = call(fake.facade(node_id=me.node_id), "GET", "/ledger/balance")
    assert status == 200 and body == {"node": me.node_id, "balance": 1.5, "earned": 1.5, "spent": 0.0}
    status, rows = call(fake.facade(), "GET", "/ledger/history?limit=5")
    assert status == 200 and rows[0]["receipt"] == r


def test_peer_heads_go_to_the_facade_with_a_bounded_wait(fake):
    status, body = call(fake.facade(), "POST", "/ledger/peer-heads", {"wait": 2})
    assert status == 200 and body == {"asked": [], "answers": [], "wait": 2.0}
    for bad in ({"wait": 0}, {"wait": 61}, {"wait": "x"}, {"extra": 1}):
        status, _ = call(fake.facade(), "POST", "/ledger/peer-heads", bad)
        assert status == 422, bad
    status, _ = call(fake.facade(), "POST", "/ledger/peer-heads", {"wait": 2}, token=False)
    assert status == 401


def test_pause_and_resume_go_to_the_facade_with_a_checked_reason(fake):
    """The owner's pause: a reason of printable text, bounded; resume clears it; both need the token."""
    app = fake.facade()
    assert call(app, "POST", "/pause", token=False)[0] == 401
    assert call(app, "POST", "/pause") == (200, {"paused": "paused by its owner"})
    assert call(app, "POST", "/pause", {"reason": "gaming tonight"}) == (200, {"paused": "gaming tonight"})
    for bad in ({"reason": "a\nfake log line"}, {"reason": "x" * 201}, {"reason": ""}, {"reason": 5}, {"why": "x"}):
        assert call(app, "POST", "/pause", bad)[0] == 422, bad
    assert call(app, "POST", "/resume") == (200, {"paused": None})
    assert fake.pauses == ["paused by its owner", "gaming tonight", ""]


def test_cancel_of_an_unknown_job_is_404_and_of_an_ended_one_409(fake):
    status, body = call(fake.facade(), "POST", "/jobs/0123456789abcdef0000/cancel")
    assert status == 404 and "no job" in body["error"]
    (fake.home / "jobs" / "e0d1e0d1e0d1e0d1e0d1.json").write_text('{"job_id": "e0d1e0d1e0d1e0d1e0d1", "status": "done", "steps": {}}')
    status, body = call(fake.facade(), "POST", "/jobs/e0d1e0d1e0d1e0d1e0d1/cancel")
    assert status == 409 and "has ended" in body["error"]
    status, body = call(fake.facade(), "POST", "/jobs/e0d1/cancel")  # by a prefix too
    assert status == 409 and "job e0d1e0d1 has ended" in body["error"]


def test_a_job_is_found_by_any_unique_prefix_of_four_hex_digits_or_more(fake):
    """Every /jobs/{id} route takes a prefix: one job → that job; several → a one-line 400 naming a few; too
    short or not hex → 400 saying so; none → 404."""
    for jid in ("abcd1234000000000000", "abcd5678000000000000", "abce0000000000000000"):
        (fake.home / "jobs" / f"{jid}.json").write_text(json.dumps({"job_id": jid, "status": "done", "steps": {}}))
    app = fake.facade()
    status, body = call(app, "GET", "/jobs/abcd1")
    assert status == 200 and body["job_id"] == "abcd1234000000000000"
    assert call(app, "GET", "/jobs/ABCE")[1]["job_id"] == "abce0000000000000000"
    status, body = call(app, "GET", "/jobs/abcd")
    assert status == 400 and "ambiguous" in body["error"] and "abcd1234, abcd5678" in body["error"]
    assert "\n" not in body["error"]
    status, body = call(app, "GET", "/jobs/abc")
    assert status == 400 and "at least 4" in body["error"]
    status, body = call(app, "GET", "/jobs/zzzzzz")
    assert status == 400 and "hex" in body["error"]
    assert call(app, "GET", "/jobs/ffff")[0] == 404
    assert call(app, "GET", "/jobs/abcd/events")[0] == 400
    status, body = call(app, "GET", "/jobs/abce/events")
    assert status == 200


def test_a_model_fetch_streams_its_progress_and_ends_with_done(fake, monkeypatch):
    """GET /models/fetch/SHA/events: a progress event each time the fetch moved (none while it stalls),
    then done with how it ended; an unknown fetch is 404."""
    monkeypatch.setattr("mesh.http.api.FETCH_TICK_S", 0.001)
    sha = "ab" * 32
    base = {"sha256": sha, "state": "fetching", "done_bytes": 0, "size": 0, "source": "", "error": "",
            "name": "", "seconds": 0.0}
    seen = [base, {**base, "size": 3 << 20, "source": "p" * 64}, {**base, "size": 3 << 20, "source": "p" * 64},
            {**base, "done_bytes": 1 << 20, "size": 3 << 20}, {**base, "done_bytes": 3 << 20, "size": 3 << 20},
            {**base, "state": "done", "done_bytes": 3 << 20, "size": 3 << 20, "name": "m", "seconds": 1.5}]
    calls = iter([seen[0], *seen])  # (the route looks once before the stream starts)

    def fetches() -> list[dict]:
        return [next(calls, seen[-1])]

    next(calls)

    async def read() -> bytes:  # (the stream itself: the in-memory `call` disconnects after the request)
        return b"".join([frame async for frame in fetch_stream(fake.facade(fetches=fetches), sha)])

    body = asyncio.run(read())
    events = [(e.split("\n")[1].removeprefix("event: "), json.loads(e.split("\n")[2].removeprefix("data: ")))
              for e in body.decode().strip().split("\n\n")]
    assert [k for k, _ in events] == ["progress"] * 4 + ["done"]
    assert [d["done_bytes"] for _, d in events] == [0, 0, 1 << 20, 3 << 20, 3 << 20] and events[-1][1]["name"] == "m"
    assert call(fake.facade(fetches=lambda: []), "GET", f"/models/fetch/{sha}/events")[0] == 404
