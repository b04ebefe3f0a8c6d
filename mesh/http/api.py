"""The node's HTTP API (FastAPI in the node's own loop, loopback only): jobs and their event streams, the
step catalogue, the planner, the ledger and peers, and the OpenAI-compatible endpoints (mesh.http.openai_api).
Anything that spends credits or shows private data needs the bearer token; bad input is a 4xx whose
`error` says what is wrong. A request whose Host is not this API's loopback address is refused, and slow
or idle connections are cut off (mesh.http.httpguard). The API sees its node only through the
NodeFacade it is handed (mesh.http.facade)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as FastPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from mesh.core.catalog import catalogue
from mesh.core.jobid import short
from mesh.errors import NoAnswer, StepFailed, UserError
from mesh.http.api_models import (
    ERRORS,
    NOT_FOUND,
    Balance,
    FetchModelBody,
    FetchStatus,
    JobSummary,
    PauseBody,
    PeerHeadsBody,
    PlanBody,
    PlanReply,
    StepKind,
    SubmitBody,
    Submitted,
)
from mesh.http.common import ApiError, authorised, error_body, parse_request_job, submit_job
from mesh.http.dashboard import PAGE_DIR, dashboard_routes
from mesh.http.facade import JobEvents, NodeFacade
from mesh.http.httpguard import GuardedH11, HostGuard, allowed_hosts
from mesh.http.jobids import resolve
from mesh.http.metrics import CONTENT_TYPE, registry_for, render
from mesh.http.middleware import BodyLimit, EditorHeaders
from mesh.http.openai_api import router as openai_router
from mesh.http.pagekeys import page_key_routes
from mesh.planning import planner
from mesh.steps.chat_template import template_of
from mesh.steps.models import DEFAULT_MODEL, INSTRUCT_SHA256, default_model_sha
from mesh.steps.registry import Registry

KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies and clients from timing out
FETCH_TICK_S = 0.5  # how often a model fetch's event stream looks at its progress
PLAN_TIMEOUT_S = 60.0
_EVENT_ID = re.compile(r"[0-9]{1,18}")  # a Last-Event-ID header this node could have sent
AUTH = [Depends(authorised)]


def build_app(node: NodeFacade) -> FastAPI:
    """The API for `node`. Nothing of the node is read while building (the OpenAPI schema is built
    without one); each group of routes is added by its own function."""
    app = FastAPI(title="homemesh node API", version="1", docs_url=None, redoc_url=None,
                  description="A homemesh node: submit jobs (DAGs of steps cross-checked by a quorum of "
                              "untrusted nodes), follow them, plan them from a question, read the ledger, and "
                              "chat through an OpenAI-compatible endpoint. Send `Authorization: Bearer "
                              "<node home>/api-token`.")
    app.state.facade = node
    _error_handlers(app)
    _node_routes(app, node)
    _job_routes(app, node)
    _planning_routes(app, node)
    _ledger_routes(app, node)
    _model_routes(app, node)
    page_key_routes(app, node)
    dashboard_routes(app, node)  # (before the page's mount, which would otherwise take /dashboard/data)
    app.add_middleware(EditorHeaders)
    app.mount("/editor", StaticFiles(directory=Path(__file__).parent / "editor", html=True), name="editor")
    app.mount("/dashboard", StaticFiles(directory=PAGE_DIR, html=True), name="dashboard")
    app.include_router(openai_router)
    return BodyLimit(app)  # type: ignore[return-value]


def _field_errors(exc: RequestValidationError) -> str:
    """The first three faults, each named by its field ("0: JSON decode error" named none: a body that is not
    JSON is said so, with where it breaks)."""
    parts = []
    for e in exc.errors()[:3]:
        if e.get("type") == "json_invalid":
            at = next((x for x in e.get("loc", ()) if isinstance(x, int)), None)
            why = (e.get("ctx") or {}).get("error", "")
            parts.append("the body is not JSON" + (f" ({why})" if why else "") + (f" at character {at}" if at is not None else ""))
            continue
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)  # also routing's 404/405 and unreadable bodies
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(request.url.path, exc.status_code, str(exc.detail),
                                       getattr(exc, "param", None)), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(request.url.path, 422, _field_errors(exc)), 422)


def _node_routes(app: FastAPI, node: NodeFacade) -> None:
    @app.get("/health", summary="Is the node up (no token needed)")
    async def health() -> dict[str, Any]:
        return {"ok": True, "node": node.node_id}

    @app.get("/status", dependencies=AUTH, responses=ERRORS,
             summary="The node, its peers, balance and rejected envelopes")
    async def status() -> dict[str, Any]:
        return node.status()

    registry = registry_for(node)  # this API's own: never the process-wide default registry

    @app.get("/metrics", dependencies=AUTH, response_class=Response,
             responses={**ERRORS, 200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
             summary="The node's counters in Prometheus' text format: jobs, steps, replicas, work, peers, credits")
    async def metrics() -> Response:
        return Response(render(registry), media_type=CONTENT_TYPE)

    @app.get("/peers", dependencies=AUTH, responses=ERRORS,
             summary="Peers this node knows: address, state, reputation, models")
    async def peers() -> list[dict[str, Any]]:
        return node.status()["peers"]

    @app.post("/pause", dependencies=AUTH, responses=ERRORS,
              summary="Take no new steps from peers (running ones finish); peers are told at once")
    async def pause(body: PauseBody | None = None) -> dict[str, Any]:
        return node.pause((body or PauseBody()).reason)

    @app.post("/resume", dependencies=AUTH, responses=ERRORS, summary="Take steps from peers again")
    async def resume() -> dict[str, Any]:
        return node.pause("")


def _job_routes(app: FastAPI, node: NodeFacade) -> None:
    @app.post("/jobs", status_code=201, dependencies=AUTH, summary="Submit a job",
              responses={**ERRORS, 402: {"model": ERRORS[400]["model"], "description": "past the credit line"},
                         409: {"model": ERRORS[400]["model"], "description": "too few workers offer a step's "
                               "capability for the job's redundancy: refused before it runs"}})
    async def submit(body: SubmitBody) -> Submitted:
        job = parse_request_job(node, body.job.model_dump(exclude_unset=True), body.redundancy, body.quorum)
        why = await node.shortage(job)
        if why:
            raise ApiError(409, why)
        return Submitted(job_id=await submit_job(node, job))

    @app.get("/jobs", dependencies=AUTH, responses=ERRORS, summary="Jobs submitted here, newest first")
    async def jobs(limit: int = Query(50, ge=1, le=1000, description="at most this many")) -> list[JobSummary]:
        live = {j: JobSummary(job_id=j, name=s.run.job.name, status=s.status, created=s.created,
                              steps=len(s.run.steps), credits_spent=round(s.job.credits, 6))
                for j, s in node.jobs().items()}
        saved = await asyncio.to_thread(saved_summaries, node.jobs_dir, limit, set(live))
        return sorted([*live.values(), *saved], key=lambda s: -s.created)[:limit]

    @app.get("/jobs/{job_id}", dependencies=AUTH, summary="A job's state and result",
             responses={**ERRORS, **NOT_FOUND})
    async def job(job_id: str, wait: float = Query(0, ge=0, le=60, description="seconds to wait for the end")
                  ) -> dict[str, Any]:
        job_id = await resolve(node, job_id)
        st = node.jobs().get(job_id)
        if st is None:
            return JSONResponse(saved_report(node, job_id))
        if wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(st.done.wait(), wait)
        # encoded as plain JSON: pydantic's encoder stops at 255 levels, and a step's output may nest
        # deeper (a python step's, or a hostile worker's answer): the report then failed with a 500
        return JSONResponse(node.report(st))

    @app.post("/jobs/{job_id}/cancel", dependencies=AUTH, summary="Give a running job up",
              responses={**ERRORS, **NOT_FOUND, 409: {"model": ERRORS[400]["model"], "description": "it had ended"}})
    async def cancel(job_id: str) -> dict[str, Any]:
        job_id = await resolve(node, job_id)
        st = node.jobs().get(job_id)
        if st is None:
            saved_report(node, job_id)  # 404 when there is no such job at all
            raise ApiError(409, f"job {short(job_id)} has ended; nothing to cancel")
        if not node.cancel(job_id):
            raise ApiError(409, f"job {short(job_id)} has ended ({st.run.status}); nothing to cancel")
        with contextlib.suppress(asyncio.TimeoutError):  # the driver ends it at once
            await asyncio.wait_for(st.done.wait(), 10)
        return JSONResponse(node.report(st))

    @app.get("/jobs/{job_id}/events", dependencies=AUTH,
             responses={**ERRORS, **NOT_FOUND, 200: {"content": {"text/event-stream": {}}, "description":
                        "server-sent events: job, then step / replica / progress in order, done last"}},
             summary="A job's events as a server-sent event stream", response_class=StreamingResponse)
    async def events(job_id: str, last_event_id: str | None = Header(None)):
        job_id = await resolve(node, job_id)
        st = node.jobs().get(job_id)
        # an event's number, as this node sent it; anything else (a superscript digit str.isdigit takes,
        # 5,000 digits int() refuses) starts from the first event instead of failing the request with a 500
        start = int(last_event_id) + 1 if last_event_id and _EVENT_ID.fullmatch(last_event_id) else 0
        if st is None:
            report = saved_report(node, job_id)

            async def finished() -> AsyncIterator[bytes]:
                yield sse_frame(0, "done", report)
            return StreamingResponse(finished(), media_type="text/event-stream")
        return StreamingResponse(stream(st.events, start), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _planning_routes(app: FastAPI, node: NodeFacade) -> None:
    @app.get("/steps", summary="Step kinds with the JSON schema of their parameters (no token needed)")
    async def steps() -> dict[str, StepKind]:
        return {k: StepKind(**v) for k, v in catalogue(node.kinds_offered()).items()}

    @app.post("/plan", dependencies=AUTH, responses=ERRORS,
              summary="Plan a job from a question (the model proposes, the rules stand in)")
    async def plan(body: PlanBody) -> PlanReply:
        try:
            result = await make_plan(node, body.query, body.planner, body.redundancy, body.timeout)
        except UserError as exc:
            raise ApiError(400, str(exc)) from None
        return PlanReply(**result.to_json(), tree=planner.tree(result))


def _model_routes(app: FastAPI, node: NodeFacade) -> None:
    @app.post("/models/fetch", status_code=202, dependencies=AUTH, responses=ERRORS,
              summary="Fetch a model this node lacks from peers that serve it (checked part by part and whole)")
    async def fetch_model(body: FetchModelBody) -> FetchStatus:
        try:
            return FetchStatus(**node.fetch_model(body.sha256, body.max_bytes, body.sources, body.name))
        except UserError as exc:
            raise ApiError(400, str(exc)) from None

    @app.get("/models/fetch", dependencies=AUTH, responses=ERRORS,
             summary="Model fetches since the node started, with their progress")
    async def fetches() -> list[FetchStatus]:
        return [FetchStatus(**f) for f in node.fetches()]

    @app.get("/models/fetch/{sha256}/events", dependencies=AUTH,
             responses={**ERRORS, **NOT_FOUND, 200: {"content": {"text/event-stream": {}}, "description":
                        "server-sent events: progress (the fetch's status) as parts come, done last"}},
             summary="A model fetch's progress as a server-sent event stream", response_class=StreamingResponse)
    async def fetch_events(sha256: str):
        if not any(f["sha256"] == sha256 for f in node.fetches()):
            raise ApiError(404, f"no fetch of model {sha256[:64]} since this node started")
        return StreamingResponse(fetch_stream(node, sha256), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _ledger_routes(app: FastAPI, node: NodeFacade) -> None:
    @app.get("/ledger/balance", dependencies=AUTH, responses=ERRORS, summary="Credits")
    async def balance() -> Balance:
        return Balance(**await asyncio.to_thread(read_ledger, node, "balance"))

    @app.get("/ledger/peers", dependencies=AUTH, responses=ERRORS,
             summary="Each peer's reputation and record, from this node's ledger")
    async def ledger_peers() -> list[dict[str, Any]]:
        return await asyncio.to_thread(read_ledger, node, "peers")

    @app.post("/ledger/peer-heads", dependencies=AUTH, responses=ERRORS,
              summary="Ask linked peers for the signed heads of this node's ledger they hold")
    async def peer_heads(body: PeerHeadsBody) -> dict[str, Any]:
        return await node.peer_heads(body.wait)

    @app.get("/ledger/history", dependencies=AUTH, responses=ERRORS,
             summary="The newest ledger entries")
    async def history(limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
        return await asyncio.to_thread(read_ledger, node, "history", limit)

    @app.get("/ledger/explain/{entry_id}", dependencies=AUTH,
             responses={**ERRORS, 404: {"model": ERRORS[400]["model"], "description": "no such entry"}},
             summary="One ledger entry explained in words (as `mesh ledger explain ENTRY --json`)")
    async def explain(entry_id: int = FastPath(ge=1, le=2**62)) -> dict[str, Any]:
        entry = await asyncio.to_thread(read_explained, node, entry_id)
        if entry is None:
            raise ApiError(404, f"no entry {entry_id} in this node's ledger")
        return entry


def saved_summaries(jobs_dir: Path, limit: int, skip: set[str]) -> list[JobSummary]:
    """The newest `limit` reports of jobs no longer in memory (ended before a restart, or forgotten)."""
    try:
        files = sorted(((p.stat().st_mtime, p) for p in jobs_dir.glob("*.json") if p.stem not in skip), reverse=True)
    except OSError:
        return []
    out = []
    for mtime, path in files[:limit]:
        try:
            rep = json.loads(path.read_text())
            out.append(JobSummary(job_id=path.stem, name=str(rep.get("name", "")), status=str(rep.get("status", "")),
                                  created=float(rep.get("created") or mtime), steps=len(rep.get("steps") or {}),
                                  credits_spent=float(rep.get("credits_spent") or 0)))
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # a report being written, or damaged: left out of the list, still readable by id
    return out


def saved_report(node: NodeFacade, job_id: str) -> dict[str, Any]:
    path = node.jobs_dir / f"{job_id}.json"
    if job_id.isalnum() and len(job_id) <= 64 and path.exists():
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as exc:
            raise ApiError(500, f"the saved report of job {job_id} cannot be read ({exc}): {path}") from None
        if not isinstance(report, dict) or not isinstance(report.get("status"), str):  # `mesh job` raised TypeError
            raise ApiError(500, f"the saved report of job {job_id} is not a job report: {path}")
        return report
    raise ApiError(404, f"no job {short(job_id)} on this node (`mesh jobs` lists the jobs submitted from it)")


def sse_frame(index: int, kind: str, data: object) -> bytes:
    """One server-sent event, framed as the node's job events frame theirs."""
    return f"id: {index}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


async def stream(log: JobEvents, start: int) -> AsyncIterator[bytes]:
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


async def fetch_stream(node: NodeFacade, sha: str) -> AsyncIterator[bytes]:
    """A fetch's status as `progress` events whenever it moved (looked at every FETCH_TICK_S), then
    `done` with its end (done or failed); a comment keeps a stalled fetch's stream open."""
    i, last, quiet = 0, None, 0.0
    while True:
        st = next((f for f in node.fetches() if f["sha256"] == sha), None)
        if st is None:  # (fetches are kept while the node runs: only a restart loses one)
            return
        if st["state"] != "fetching":
            yield sse_frame(i, "done", st)
            return
        if st != last:
            yield sse_frame(i, "progress", st)
            i, last, quiet = i + 1, dict(st), 0.0
        elif quiet >= KEEPALIVE_S:
            yield b": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(FETCH_TICK_S)
        quiet += FETCH_TICK_S


async def make_plan(node: NodeFacade, query: str, which: str, redundancy: int | None,
                    timeout: float = PLAN_TIMEOUT_S) -> planner.Plan:
    """The rules' plan, part by part, its words asked of the instruct model when peers serve it (auto,
    rules); or (model) the base model's own plan through this node's model runner (trusted: it is ours),
    given `timeout` seconds, the rules standing in when it is unusable, late, or when they recognise a
    calculation in the query (they win there, without asking the model)."""
    query = planner.check_query(query)  # (whitespace runs collapsed: some rules' regexes were quadratic in them)
    instruct = await _instruct(node, redundancy or 3)
    if which != "model":
        return planner.Plan(planner.vetted(query, planner.rule_plan(query, redundancy, instruct)), "rules")
    if planner.rules_win(query):
        return planner.finish(query, None, "", redundancy, instruct)
    if node.model_missing:
        return planner.finish(query, None, f"this node has no model ({node.model_missing})", redundancy, instruct)
    try:  # (cancelled at the cap, the runner sees its flag and stops generating)
        output = await asyncio.wait_for(node.ask_model(planner.llm_request(query), timeout), timeout)
    except TimeoutError:
        return planner.finish(query, None, f"out of time after {timeout:g} s", redundancy, instruct)
    except (NoAnswer, StepFailed) as exc:
        return planner.finish(query, None, str(exc), redundancy, instruct)
    plan = planner.finish(query, output, "", redundancy, instruct)
    return dataclasses.replace(plan, model=DEFAULT_MODEL) if plan.planner == "llm" else plan


async def _instruct(node: NodeFacade, redundancy: int) -> planner.Instruct | None:
    """The instruct model for a plan's words: when this node has its file (the chat template comes from
    it) and enough peers serve it for the plan's redundancy (else the base model, which more may hold)."""
    held = node.models_held()
    entry = next((e for e in Registry(node.home).entries() if e.sha256 == INSTRUCT_SHA256 and e.path), None)
    if entry is None or held[INSTRUCT_SHA256] < min(redundancy, max(1, held[default_model_sha()])):
        return None
    template = await asyncio.to_thread(template_of, entry.path)
    if template is None:
        return None
    return planner.Instruct(INSTRUCT_SHA256, lambda text: template.render([{"role": "user", "content": text}]))


def read_ledger(node: NodeFacade, what: str, limit: int = 100) -> Any:
    """Read this node's ledger on its own read-only connection (the LedgerActor alone writes)."""
    from ledger import views
    from ledger.store import Ledger

    led = Ledger(node.ledger_path, readonly=True)
    try:
        if what == "balance":
            return views.balance(led, node.node_id)
        if what == "peers":
            return views.peers(led, int(time.time() * 1000))
        return led.history(limit)
    finally:
        led.close()


def read_explained(node: NodeFacade, entry_id: int) -> dict[str, Any] | None:
    """One entry with its explanation (`mesh ledger explain`), on a read-only connection; None: no such entry."""
    from ledger import views
    from ledger.store import Ledger

    led = Ledger(node.ledger_path, readonly=True)
    try:
        return views.explained(led, entry_id, node.node_id)
    finally:
        led.close()


class _Server(uvicorn.Server):
    """uvicorn inside the node's loop: the node owns the signals, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def serve_api(node: NodeFacade, sock: socket.socket, stopping: asyncio.Event) -> None:
    """Serve the API on `sock` until `stopping`: only to requests whose Host names it (mesh.http.httpguard), over
    uvicorn's h11 protocol with a deadline per request and a cap on connections."""
    host, port = sock.getsockname()[:2]
    app = HostGuard(build_app(node), allowed_hosts(port, host), error_body)
    # limit_concurrency stays off: uvicorn answers 503 to every request once that many connections are
    # open, idle ones included, which is what a slowloris wants; GuardedH11 evicts idle ones instead
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, ws="none",
                                    http=GuardedH11.for_token(node.token)))
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
