"""What the node's API (mesh.http.api) and its OpenAI-compatible endpoint (mesh.http.openai_api) share:
the error answer, the token check, and turning a request into a submitted job. Both import this module,
neither imports the other's helpers."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import HTTPException, Request

from mesh.core.dag import Job, parse_job, resolve_models
from mesh.errors import ConfigError, CreditError, JobError, JournalError
from mesh.http.facade import NodeFacade
from mesh.steps.extract import check_selectors
from mesh.steps.grammar import check_grammars
from mesh.steps.registry import Registry


class ApiError(HTTPException):
    """An error answer: `status` and a message for a person (OpenAI-shaped under /v1)."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(status, message)
        self.param = param


def error_body(path: str, status: int, message: str, param: str | None = None) -> dict[str, Any]:
    if path.startswith("/v1/"):
        kind = {401: "authentication_error", 402: "insufficient_quota", 404: "not_found_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error")
        return {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return {"error": message}


def facade_of(request: Request) -> NodeFacade:
    """The node's view the app was built with (mesh.http.api.build_app keeps it in the app's state)."""
    return request.app.state.facade


def authorised(request: Request) -> None:
    got = request.headers.get("authorization", "")
    token = facade_of(request).token
    if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
        raise ApiError(401, "missing or wrong API token (send Authorization: Bearer <home>/api-token)")


def parse_request_job(node: NodeFacade, data: dict[str, Any], redundancy: int | None, quorum: str | None) -> Job:
    """A job from a request: mesh.core.dag's checks, model names resolved to SHA-256s (400 on any problem)."""
    try:
        job = parse_job(data, "job", redundancy, quorum)
        check_grammars(job)  # (llama.cpp's half of the json_schema check: mesh.core does not import it)
        check_selectors(job)  # (and soupsieve's of the scrape selectors)
        resolve_models(job, Registry(node.home).resolve)
    except JobError as exc:
        raise ApiError(400, str(exc)) from None
    except ConfigError as exc:
        raise ApiError(500, str(exc)) from None
    return job


async def submit_job(node: NodeFacade, job: Job) -> str:
    try:
        return await node.submit(job)
    except CreditError as exc:
        raise ApiError(402, str(exc)) from None
    except JournalError as exc:  # the disk under the journal: the job would not survive a restart
        raise ApiError(503, str(exc)) from None
