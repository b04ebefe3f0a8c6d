"""The node's HTTP API (loopback only, bearer token): status, jobs and their results."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import socket
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .dag import parse_job, resolve_models
from .errors import ConfigError, CreditError, JobError
from .registry import Registry

if TYPE_CHECKING:
    from .node import Node

MAX_BODY = 4 << 20


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build_app(node: "Node") -> Starlette:
    def authorised(request: Request) -> bool:
        got = request.headers.get("authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {node.token}".encode())

    def guarded(handler):
        async def wrapper(request: Request):
            if not authorised(request):
                return _error(401, "missing or wrong API token (send Authorization: Bearer <home>/api-token)")
            return await handler(request)
        return wrapper

    async def health(request: Request):
        return JSONResponse({"ok": True, "node": node.id})

    async def status(request: Request):
        return JSONResponse(node.status())

    async def submit(request: Request):
        body = await request.body()
        if len(body) > MAX_BODY:
            return _error(413, f"job over {MAX_BODY} bytes")
        try:
            data = json.loads(body)
        except ValueError:
            return _error(400, "request body is not JSON")
        if not isinstance(data, dict) or "job" not in data:
            return _error(400, "send {\"job\": {...}, \"redundancy\": R?, \"quorum\": RULE?}")
        try:
            job = parse_job(data["job"], "job", data.get("redundancy"), data.get("quorum"))
            resolve_models(job, Registry(node.opts.home).resolve)  # names → the SHA-256s peers advertise
        except JobError as exc:
            return _error(400, str(exc))
        except ConfigError as exc:
            return _error(500, str(exc))
        try:
            job_id = node.submitter.submit(job)
        except CreditError as exc:
            return _error(402, str(exc))
        return JSONResponse({"job_id": job_id}, status_code=201)

    async def job(request: Request):
        job_id = request.path_params["job_id"]
        st = node.submitter.jobs.get(job_id)
        if st is None:
            path = node.opts.home / "jobs" / f"{job_id}.json"
            if job_id.isalnum() and path.exists():
                return JSONResponse(json.loads(path.read_text()))
            return _error(404, f"no job {job_id}")
        try:
            wait = min(float(request.query_params.get("wait", 0)), 60.0)
        except ValueError:
            return _error(400, "wait must be seconds")
        if wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(st.done.wait(), wait)
        return JSONResponse(node.submitter.report(job_id))

    async def jobs(request: Request):
        return JSONResponse([{"job_id": j, "name": s.run.job.name, "status": s.run.status, "created": s.created}
                             for j, s in node.submitter.jobs.items()])

    return Starlette(routes=[
        Route("/health", health),
        Route("/status", guarded(status)),
        Route("/jobs", guarded(submit), methods=["POST"]),
        Route("/jobs", guarded(jobs), methods=["GET"]),
        Route("/jobs/{job_id}", guarded(job)),
    ])


class _Server(uvicorn.Server):
    """uvicorn inside the node's loop: the node owns the signals, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def serve_api(node: "Node", sock: socket.socket, stopping: asyncio.Event) -> None:
    server = _Server(uvicorn.Config(build_app(node), log_level="warning", lifespan="off",
                                    access_log=False, ws="none"))
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
