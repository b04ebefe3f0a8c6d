"""The node's HTTP API (FastAPI in the node's own loop, loopback only): jobs and their event streams, the
step catalogue, the planner, the ledger and peers, and the OpenAI-compatible endpoints (mesh.http.openai_api).
Anything that spends credits or shows private data needs the bearer token; bad input is a 4xx whose
`error` says what is wrong. A request whose Host is not this API's loopback address is refused, and slow
or idle connections are cut off (mesh.http.httpguard)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from actors.messages import RunStep, StepDone
from mesh.core.catalog import catalogue
from mesh.core.dag import Job, parse_job, resolve_models
from mesh.errors import ConfigError, CreditError, JobError, UserError
from mesh.http.api_models import (
    ERRORS,
    NOT_FOUND,
    Balance,
    JobSummary,
    PlanBody,
    PlanReply,
    StepKind,
    SubmitBody,
    Submitted,
)
from mesh.http.httpguard import GuardedH11, HostGuard, allowed_hosts
from mesh.node.bridge import NoAnswer
from mesh.node.events import Event, EventLog
from mesh.planning import planner
from mesh.steps.registry import Registry

if TYPE_CHECKING:
    from mesh.node.lifecycle import Node

MAX_BODY = 4 << 20
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies and clients from timing out
PLAN_TIMEOUT_S = 60.0
EDITOR_CSP = ("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
              "connect-src 'self'; frame-ancestors 'none'")  # no other page may frame it (clickjacking)


class ApiError(HTTPException):
    """An error answer: `status` and a message for a person (OpenAI-shaped under /v1)."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(status, message)
        self.param = param


def error_body(path: str, status: int, message: str, param: str | None = None) -> dict:
    if path.startswith("/v1/"):
        kind = {401: "authentication_error", 402: "insufficient_quota", 404: "not_found_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error")
        return {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return {"error": message}


def _field_errors(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class BodyLimit:
    """Refuse bodies over MAX_BODY before they are read into memory (declared or streamed)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return await JSONResponse(error_body(scope["path"], 413, f"body over {MAX_BODY} bytes"), 413)(
                scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                raise ApiError(413, f"body over {MAX_BODY} bytes")
            return message

        return await self.app(scope, limited, send)


class EditorHeaders:
    """The editor's pages (/editor) may load and call this node and nothing else: a Content-Security-Policy
    the browser enforces. Pure ASGI, so the event streams elsewhere pass through untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != "/editor" and not path.startswith("/editor/"):
            return await self.app(scope, receive, send)

        async def with_csp(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"content-security-policy", EDITOR_CSP.encode()),
                                                  (b"x-frame-options", b"DENY"),
                                                  (b"x-content-type-options", b"nosniff")]}
            await send(message)

        return await self.app(scope, receive, with_csp)


def build_app(node: "Node") -> FastAPI:
    from mesh.http.openai_api import router as openai_router

    app = FastAPI(title="homemesh node API", version="1", docs_url=None, redoc_url=None,
                  description="A homemesh node: submit jobs (DAGs of steps cross-checked by a quorum of "
                              "untrusted nodes), follow them, plan them from a question, read the ledger, and "
                              "chat through an OpenAI-compatible endpoint. Send `Authorization: Bearer "
                              "<node home>/api-token`.")
    app.state.node = node

    @app.exception_handler(StarletteHTTPException)  # also routing's 404/405 and unreadable bodies
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(request.url.path, exc.status_code, str(exc.detail),
                                       getattr(exc, "param", None)), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(request.url.path, 422, _field_errors(exc)), 422)

    @app.get("/health", summary="Is the node up (no token needed)")
    async def health() -> dict[str, Any]:
        return {"ok": True, "node": node.id}

    @app.get("/status", dependencies=[Depends(authorised)], responses=ERRORS,
             summary="The node, its peers, balance and rejected envelopes")
    async def status() -> dict[str, Any]:
        return node.status()

    @app.get("/peers", dependencies=[Depends(authorised)], responses=ERRORS,
             summary="Peers this node knows: address, state, reputation, models")
    async def peers() -> list[dict[str, Any]]:
        return node.status()["peers"]

    @app.post("/jobs", status_code=201, dependencies=[Depends(authorised)], summary="Submit a job",
              responses={**ERRORS, 402: {"model": ERRORS[400]["model"], "description": "past the credit line"}})
    async def submit(body: SubmitBody) -> Submitted:
        job = parse_request_job(node, body.job.model_dump(exclude_unset=True), body.redundancy, body.quorum)
        return Submitted(job_id=submit_job(node, job))

    @app.get("/jobs", dependencies=[Depends(authorised)], responses=ERRORS, summary="Jobs submitted here")
    async def jobs() -> list[JobSummary]:
        return [JobSummary(job_id=j, name=s.run.job.name, status=s.run.status, created=s.created)
                for j, s in node.submitter.jobs.items()]

    @app.get("/jobs/{job_id}", dependencies=[Depends(authorised)], summary="A job's state and result",
             responses={**ERRORS, **NOT_FOUND})
    async def job(job_id: str, wait: float = Query(0, ge=0, le=60, description="seconds to wait for the end")
                  ) -> dict[str, Any]:
        st = node.submitter.jobs.get(job_id)
        if st is None:
            return saved_report(node, job_id)
        if wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(st.done.wait(), wait)
        return node.submitter.report(job_id, st)

    @app.get("/jobs/{job_id}/events", dependencies=[Depends(authorised)],
             responses={**ERRORS, **NOT_FOUND, 200: {"content": {"text/event-stream": {}}, "description":
                        "server-sent events: job, then step / replica / progress in order, done last"}},
             summary="A job's events as a server-sent event stream", response_class=StreamingResponse)
    async def events(job_id: str, last_event_id: str | None = Header(None)):
        st = node.submitter.jobs.get(job_id)
        start = int(last_event_id) + 1 if last_event_id and last_event_id.isdigit() else 0
        if st is None:
            report = saved_report(node, job_id)

            async def finished() -> AsyncIterator[bytes]:
                yield Event("done", report).sse(0)
            return StreamingResponse(finished(), media_type="text/event-stream")
        return StreamingResponse(stream(st.events, start), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/steps", summary="Step kinds with the JSON schema of their parameters (no token needed)")
    async def steps() -> dict[str, StepKind]:
        offered = Counter(k for p in node.peers.up() for k in p.kinds)
        return {k: StepKind(**v) for k, v in catalogue(offered).items()}

    @app.post("/plan", dependencies=[Depends(authorised)], responses=ERRORS,
              summary="Plan a job from a question (the model proposes, the rules stand in)")
    async def plan(body: PlanBody) -> PlanReply:
        try:
            result = await make_plan(node, body.query, body.planner, body.redundancy)
        except UserError as exc:
            raise ApiError(400, str(exc)) from None
        return PlanReply(**result.to_json(), tree=planner.tree(result))

    @app.get("/ledger/balance", dependencies=[Depends(authorised)], responses=ERRORS, summary="Credits")
    async def balance() -> Balance:
        return Balance(**await asyncio.to_thread(read_ledger, node, "balance"))

    @app.get("/ledger/peers", dependencies=[Depends(authorised)], responses=ERRORS,
             summary="Each peer's reputation and record, from this node's ledger")
    async def ledger_peers() -> list[dict[str, Any]]:
        return await asyncio.to_thread(read_ledger, node, "peers")

    @app.get("/ledger/history", dependencies=[Depends(authorised)], responses=ERRORS,
             summary="The newest ledger entries")
    async def history(limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
        return await asyncio.to_thread(read_ledger, node, "history", limit)

    app.add_middleware(EditorHeaders)
    app.mount("/editor", StaticFiles(directory=Path(__file__).parent / "editor", html=True), name="editor")
    app.include_router(openai_router)
    return BodyLimit(app)  # type: ignore[return-value]


def authorised(request: Request) -> None:
    got = request.headers.get("authorization", "")
    token = request.app.state.node.token
    if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
        raise ApiError(401, "missing or wrong API token (send Authorization: Bearer <home>/api-token)")


def parse_request_job(node: "Node", data: dict, redundancy: int | None, quorum: str | None) -> Job:
    """A job from a request: mesh.core.dag's checks, model names resolved to SHA-256s (400 on any problem)."""
    try:
        job = parse_job(data, "job", redundancy, quorum)
        resolve_models(job, Registry(node.opts.home).resolve)
    except JobError as exc:
        raise ApiError(400, str(exc)) from None
    except ConfigError as exc:
        raise ApiError(500, str(exc)) from None
    return job


def submit_job(node: "Node", job: Job) -> str:
    try:
        return node.submitter.submit(job)
    except CreditError as exc:
        raise ApiError(402, str(exc)) from None


def saved_report(node: "Node", job_id: str) -> dict:
    path = node.opts.home / "jobs" / f"{job_id}.json"
    if job_id.isalnum() and len(job_id) <= 64 and path.exists():
        return json.loads(path.read_text())
    raise ApiError(404, f"no job {job_id}")


async def stream(log: EventLog, start: int) -> AsyncIterator[bytes]:
    """Server-sent events from index `start` until the `done` event; a comment keeps idle streams open."""
    i = start
    while True:
        while i < len(log.items):
            yield log.items[i].sse(i)
            i += 1
        if log.closed:
            return
        before = len(log.items)
        await log.wait_past(i, KEEPALIVE_S)
        if len(log.items) == before and not log.closed:
            yield b": keep-alive\n\n"


async def make_plan(node: "Node", query: str, which: str, redundancy: int | None) -> planner.Plan:
    """The model's plan through this node's own model runner (trusted: it is ours), else the rules'."""
    planner.check_query(query)
    if which == "rules":
        return planner.Plan(planner.rule_plan(query, redundancy), "rules", "the rule planner was asked for")
    if "llm" not in node.kinds:
        return planner.finish(query, None, f"this node has no model ({node.model_error or 'started with --no-model'})",
                              redundancy)
    try:
        done = await node.bridge.ask(RunStep(uuid.uuid4().hex, "llm", planner.llm_request(query), PLAN_TIMEOUT_S,
                                             node.sandboxed), PLAN_TIMEOUT_S + 15)
    except NoAnswer as exc:
        return planner.finish(query, None, str(exc), redundancy)
    if not isinstance(done, StepDone) or not done.ok:
        return planner.finish(query, None, getattr(done, "error", "") or "no answer", redundancy)
    return planner.finish(query, done.output, "", redundancy)


def read_ledger(node: "Node", what: str, limit: int = 100) -> Any:
    """Read this node's ledger on its own read-only connection (the LedgerActor alone writes)."""
    from ledger import views
    from ledger.store import Ledger
    from mesh.node.home import LEDGER_FILE

    led = Ledger(node.opts.home / LEDGER_FILE, readonly=True)
    try:
        if what == "balance":
            return views.balance(led, node.id)
        if what == "peers":
            return views.peers(led, int(time.time() * 1000))
        return led.history(limit)
    finally:
        led.close()


class _Server(uvicorn.Server):
    """uvicorn inside the node's loop: the node owns the signals, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def serve_api(node: "Node", sock: socket.socket, stopping: asyncio.Event) -> None:
    """Serve the API on `sock` until `stopping`: only to requests whose Host names it (mesh.http.httpguard), over
    uvicorn's h11 protocol with a deadline per request and a cap on connections."""
    host, port = sock.getsockname()[:2]
    app = HostGuard(build_app(node), allowed_hosts(port, host), error_body)
    # limit_concurrency stays off: uvicorn answers 503 to every request once that many connections are
    # open, idle ones included, which is what a slowloris wants; GuardedH11 evicts idle ones instead
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, ws="none",
                                    http=GuardedH11))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    stop = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # a server that stopped on its own is a fault: raise what stopped it
            raise RuntimeError("the HTTP API stopped")
    finally:
        stop.cancel()
        server.should_exit = True
        await asyncio.wait({task}, timeout=5)
