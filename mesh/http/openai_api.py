"""POST /v1/chat/completions and GET /v1/models, compatible with OpenAI's API (streaming included). Each
request is a one-step llm job cross-checked at the redundancy asked for (`X-Homemesh-Redundancy`, or
`redundancy` in the body; default 3); the answer carries `x_homemesh` (mesh.http.chat)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from mesh.http import chat
from mesh.http.api_models import OPENAI_ERRORS
from mesh.http.common import ApiError, authorised, facade_of, parse_request_job, submit_job
from mesh.http.facade import JobView, NodeFacade
from mesh.steps.chat_template import template_of, untrusted_template_of
from mesh.steps.models import DEFAULT_MODEL, INSTRUCT_SHA256, default_model_sha
from mesh.steps.registry import Registry

DEFAULT_REDUNDANCY = 3
router = APIRouter(prefix="/v1", dependencies=[Depends(authorised)])


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """OpenAI's chat request; fields it has that change nothing here (top_p, user, …) are ignored, those
    the mesh cannot honour (tools, logprobs, logit_bias, penalties, …: chat.UNSUPPORTED) refused when set."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    model: str = Field(min_length=1, max_length=100)
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1, le=2048)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=2048)
    temperature: float | None = Field(default=None, ge=0, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int | None = None
    response_format: dict[str, Any] | None = None
    redundancy: int | None = Field(default=None, ge=1, le=16, description="homemesh: replicas per answer")
    quorum: str | None = Field(default=None, description="homemesh: majority | unanimous | K-of-N")


@router.get("/models", responses=OPENAI_ERRORS, summary="Models the mesh can answer with (OpenAI format)")
async def models(request: Request) -> dict[str, Any]:
    """Each model peers serve now; `default` first: what a chat request naming it runs (the instruct
    model, or the base model on a node without the instruct model's file). x_homemesh.default marks that
    model, x_homemesh.llm_default the one `llm` steps run when they name none (the base model)."""
    node = facade_of(request)
    registry = Registry(node.home)
    names = {e.sha256: e.name for e in registry.entries()}
    holders = node.models_held()
    now = int(time.time())
    base = default_model_sha()
    chat_default = _chat_model(registry, "default")[0]
    chat_default = base if chat_default == "default" else chat_default

    def entry(model_id: str, sha: str) -> dict:
        return {"id": model_id, "object": "model", "created": now, "owned_by": "homemesh",
                "x_homemesh": {"sha256": sha, "peers": holders[sha], "default": sha == chat_default,
                               "llm_default": sha == base}}

    data = [entry(names.get(sha, sha), sha) for sha in sorted(holders)]
    if chat_default in holders:  # what chat requests may also call it
        data.insert(0, entry("default", chat_default))
    return {"object": "list", "data": data}


@router.post("/chat/completions", responses=OPENAI_ERRORS | {200: {"content": {"text/event-stream": {}}}},
             summary="Chat completion answered by the mesh and cross-checked by a quorum of replicas")
async def chat_completions(body: ChatRequest, request: Request,
                           x_homemesh_redundancy: int | None = Header(None, ge=1, le=16),
                           x_homemesh_quorum: str | None = Header(None)):
    node = facade_of(request)
    req = body.model_dump(exclude_none=True)
    model = req["model"]
    req["model"], path, trusted = _chat_model(Registry(node.home), model)
    redundancy = x_homemesh_redundancy or body.redundancy or DEFAULT_REDUNDANCY
    quorum = x_homemesh_quorum or body.quorum or "majority"
    try:
        read = template_of if trusted else untrusted_template_of  # (both cached after the first)
        template = await asyncio.to_thread(read, path) if path else None
        spec = await asyncio.to_thread(chat.job_for, req, redundancy, quorum, template)  # (may wait on a child)
    except chat.ChatError as exc:
        raise ApiError(400, str(exc), exc.param) from None
    job = parse_request_job(node, spec, None, None)
    step = job.steps[0]
    sha = step.params.get("model", "default")  # (names are SHA-256s by now)
    sha = default_model_sha() if sha == "default" else sha
    workers = node.workers_for(step.needs)
    if workers < job.redundancy:
        raise ApiError(503, f"{workers} peers can run model {model!r} now, fewer than the redundancy "
                            f"{job.redundancy} asked for: lower X-Homemesh-Redundancy or wait for peers")
    st = node.jobs()[await submit_job(node, job)]
    cid = f"chatcmpl-{st.run.job_id}"
    needed = job.quorum.needed(job.redundancy)
    max_tokens = step.params["max_tokens"]
    if body.stream:
        usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_stream(node, st, cid, model, sha, needed, max_tokens, usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        await asyncio.wait_for(st.done.wait(), job.timeout + 30)
    except asyncio.TimeoutError:  # (retries and escalation can outlast one timeout: this was a bare 500)
        raise ApiError(504, f"the mesh gave no answer within {job.timeout + 30:g} s; the job goes on: "
                            f"GET /jobs/{st.run.job_id}") from None
    report = node.report(st)
    x = chat.homemesh(report, st.signed, job.quorum.spec, needed, sha)
    if report["steps"][chat.STEP]["status"] != "done":
        raise ApiError(503, f"the mesh did not agree on an answer: {x['rule']['text']} (job {st.run.job_id})")
    return chat.completion(cid, model, report, x, max_tokens)


def _chat_model(registry: Registry, model: str) -> tuple[str, str, bool]:
    """The model a chat request runs ('default' for the base model, else a name or SHA-256 the job
    resolves), the file its chat template is read from ('' : none here), and whether that template may be
    read and rendered in this process (the pinned instruct model's alone: mesh.steps.chat_template).
    `default` is the instruct model when this node has its file, else the base model."""
    if model == DEFAULT_MODEL:
        return "default", "", True
    entries = registry.entries()
    if model == "default":
        model = INSTRUCT_SHA256 if any(e.sha256 == INSTRUCT_SHA256 for e in entries) else "default"
    hit = next((e for e in entries if e.path and model in (e.name, e.sha256)), None)
    return model, hit.path if hit else "", hit is None or hit.sha256 == INSTRUCT_SHA256


def _sse(obj: object) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


async def _stream(node: NodeFacade, st: JobView, cid: str, model: str, sha: str, needed: int, max_tokens: int,
                  include_usage: bool) -> AsyncIterator[bytes]:
    """Chunks of the text a quorum of replicas has already produced; the rest once the step is accepted."""
    yield _sse(chat.chunk(cid, model, {"role": "assistant", "content": ""}))
    sent, seen = "", 0
    while not st.done.is_set():
        await st.events.wait_past(seen, 15)
        seen = len(st.events.items)
        texts = [text for (sid, _), (_, text) in st.partial.items() if sid == chat.STEP]
        agreed = chat.agreed_prefix(texts, needed).lstrip()
        if len(agreed) > len(sent) and agreed.startswith(sent):
            yield _sse(chat.chunk(cid, model, {"content": agreed[len(sent):]}))
            sent = agreed
    report = node.report(st)
    x = chat.homemesh(report, st.signed, st.run.job.quorum.spec, needed, sha)
    if report["steps"][chat.STEP]["status"] != "done":
        yield _sse({"error": {"message": f"the mesh did not agree on an answer: {x['rule']['text']}",
                              "type": "server_error", "param": None, "code": None}, "x_homemesh": x})
        return
    text = chat.content_of(report["steps"][chat.STEP]["output"])
    x["stream_consistent"] = text.startswith(sent)  # False: a streamed prefix was not what was accepted
    if text.startswith(sent) and len(text) > len(sent):
        yield _sse(chat.chunk(cid, model, {"content": text[len(sent):]}))
    yield _sse(chat.chunk(cid, model, {}, chat.finish_reason(report, max_tokens), x_homemesh=x))
    if include_usage:
        yield _sse({**chat.chunk(cid, model, {}), "choices": [], "usage": chat.usage(report)})
    yield b"data: [DONE]\n\n"
