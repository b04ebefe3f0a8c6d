"""Request and response bodies of the HTTP API, as pydantic models: they give /openapi.json its schema
and turn malformed input into a 422 that names the field. mesh.core.dag still judges a job as a whole (a
cycle, a missing reference), so a body that fits these shapes may still get a 400."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mesh.core.catalog import KINDS


class Strict(BaseModel):
    """Unknown fields refused; NaN and infinities too (a NaN timeout was refused as "should be less than or
    equal to 3600", which said nothing of what was wrong)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


QUORUM = r"^(majority|unanimous|[0-9]{1,2}-of-[0-9]{1,2})$"


class StepSpec(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    kind: Literal[tuple(KINDS)]  # type: ignore[valid-type]
    params: dict[str, Any] = Field(default_factory=dict, description="see GET /steps for each kind's schema")
    after: list[str] = Field(default_factory=list)
    compare: str = Field(default="exact", description="exact | text | similar:T | score")


class JobSpec(Strict):
    """The job file format (README, "A job file"). Fields left out take mesh.core.dag's defaults."""

    name: str = "job"
    redundancy: int = Field(default=3, ge=1, le=16, strict=True)
    quorum: str = Field(default="majority", pattern=QUORUM)
    timeout: float = Field(default=300, ge=1, le=3600, strict=True)
    max_replicas: int = Field(default=0, ge=0, le=64, strict=True)
    adaptive: int = Field(default=0, ge=0, le=1000, strict=True)
    steps: list[StepSpec] = Field(min_length=1, max_length=1000)


class SubmitBody(Strict):
    job: JobSpec
    redundancy: int | None = Field(default=None, ge=1, le=16, strict=True, description="overrides the job's")
    quorum: str | None = Field(default=None, pattern=QUORUM, description="overrides the job's")


class Submitted(BaseModel):
    job_id: str


class ErrorBody(BaseModel):
    error: str


class PauseBody(Strict):
    reason: str = Field(default="paused by its owner", min_length=1, max_length=200, strict=True,
                        pattern=r"^[^\x00-\x1f\x7f]*$", description="why (shown in mesh status and the log)")


class PeerHeadsBody(Strict):
    wait: float = Field(default=5.0, ge=0.5, le=60, strict=True, description="seconds to wait for the peers' answers")


class FetchModelBody(Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="the model file's SHA-256, as jobs name it")
    max_bytes: int = Field(default=4 << 30, ge=1, le=4 << 30, strict=True,
                           description="refuse a model larger than this (peers say its size first)")
    sources: list[str] | None = Field(default=None, max_length=64,
                                      description="fetch only from these peers (node ids); default: any that serve it")
    name: str = Field(default="", max_length=64, description="its name in this node's registry (default fetched-SHA12)")


class FetchStatus(BaseModel):
    sha256: str
    state: Literal["fetching", "done", "failed"]
    done_bytes: int
    size: int
    source: str
    error: str
    name: str
    seconds: float


class PlanBody(Strict):
    query: str = Field(min_length=1, max_length=2000)
    planner: Literal["auto", "rules", "model"] = Field(
        default="auto", description="auto, rules: the rules plan part by part (fast, every part kept), the "
                                    "instruct model answers the parts asking for words; model: the base model "
                                    "writes the plan, the rules stand in when it is invalid")
    redundancy: int | None = Field(default=None, ge=1, le=16, strict=True)
    timeout: float = Field(default=60.0, gt=0, le=600, description="seconds the model may take to plan "
                           "(planner model); past them the rules stand in")


class PlanReply(BaseModel):
    plan: dict[str, Any]
    planner: Literal["llm", "rules"]
    fallback: str
    tree: str


class JobSummary(BaseModel):
    job_id: str
    name: str
    status: str
    created: float  # when it was submitted (s since the epoch)
    steps: int = 0
    credits_spent: float = 0.0


class Balance(BaseModel):
    node: str
    balance: float
    earned: float
    spent: float


class StepKind(BaseModel):
    title: str
    description: str
    params: dict[str, Any]
    output: str
    workers: int


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": why} for code, why in (
        (400, "the input is well-formed but cannot be used; `error` says why"),
        (401, "missing or wrong API token"),
        (413, "body too large"),
        (422, "the body does not fit the schema; `error` names the field"))}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no such job"}}


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """Errors under /v1 take OpenAI's shape, so its clients raise them with the message."""

    error: OpenAIErrorDetail


OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIError, "description": spec["description"]} for code, spec in ERRORS.items()}
OPENAI_ERRORS[503] = {"model": OpenAIError, "description": "too few workers, or the replicas did not agree"}
