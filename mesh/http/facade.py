"""The view of its node the HTTP API is handed (Node builds it; mesh.http never imports mesh.node): what
the API may read, and the one thing it may do, submit a job. A dataclass of values and callables rather
than the Node typed narrowly, so the API holds exactly these and nothing else of the node."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mesh.core.dag import Job
from mesh.core.jobrun import JobRun
from mesh.wire.messages import SignedAnswer


class JobEvent(Protocol):
    def sse(self, index: int) -> bytes: ...


class JobEvents(Protocol):
    """A job's event log, in order: readers replay from any index, then wait for more."""

    @property
    def items(self) -> Sequence[JobEvent]: ...

    @property
    def closed(self) -> bool: ...  # the `done` event is out: nothing follows

    async def wait_past(self, index: int, timeout: float) -> None: ...


class JobView(Protocol):
    """A job the node is running or has just run, as the API reads it."""

    @property
    def run(self) -> JobRun: ...

    @property
    def created(self) -> float: ...  # time.time() when submitted

    @property
    def done(self) -> asyncio.Event: ...

    @property
    def events(self) -> JobEvents: ...

    @property
    def partial(self) -> Mapping[tuple[str, str], tuple[int, str]]: ...  # (step, node) → (tokens, text so far)

    @property
    def signed(self) -> Mapping[tuple[str, str], SignedAnswer]: ...  # (step, node) → its signed answer


@dataclass(frozen=True)
class NodeFacade:
    node_id: str
    token: str  # the API's bearer token
    home: Path  # the node's home, for its model registry (read here, never written)
    ledger_path: Path  # read on a read-only connection: the LedgerActor alone writes
    jobs_dir: Path  # reports of finished jobs, <job id>.json, for jobs no longer in memory
    model_missing: str  # why this node has no model of its own to plan with ('' when it has one)
    status: Callable[[], dict[str, Any]]  # the node, its peers, balance and rejections (GET /status)
    jobs: Callable[[], Mapping[str, JobView]]  # jobs in memory, by id
    report: Callable[[JobView], dict[str, Any]]  # a job's report (GET /jobs/{id})
    submit: Callable[[Job], Awaitable[str]]  # start a job, its id back once it is on disk; CreditError when
    # this node may not spend, JournalError when its journal cannot keep it
    cancel: Callable[[str], bool]  # give a running job up; False when it had ended
    pause: Callable[[str], dict[str, Any]]  # the owner pauses (a reason) or resumes (''): its limits and pause back
    workers_for: Callable[[str], int]  # peers up now that can run a step needing this capability
    kinds_offered: Callable[[], Counter[str]]  # step kind → peers up offering it
    models_held: Callable[[], Counter[str]]  # model SHA-256 → peers up holding it
    ask_model: Callable[[dict[str, Any], float], Awaitable[object]]  # this node's own model's output; StepFailed
    peer_heads: Callable[[float], Awaitable[dict[str, Any]]]  # the heads of our ledger linked peers hold
    # start fetching a model from peers (sha, max bytes, only from these node ids or None, registry name):
    # its status; ConfigError when there is nothing to fetch or nobody to fetch it from
    fetch_model: Callable[[str, int, list[str] | None, str], dict[str, Any]] = lambda *a: {}
    fetches: Callable[[], list[dict[str, Any]]] = list  # every fetch since the node started, with its progress
    metrics: Callable[[], dict[str, Any]] = dict  # counts kept for /metrics (mesh.node.tally), credits earned and paid
    # the steps run for peers by window and those that earned nothing (mesh.node.worklog), and their use of
    # the owner's limits: {"since", "windows", "unearned", "use": {"slots", "memory" (bytes or None), "cpu"}}
    work: Callable[[], dict[str, Any]] = dict
    # why the mesh cannot run this job now, at its redundancy ('' when it can), after looking for workers
    shortage: Callable[[Job], Awaitable[str]] = lambda job: _enough()


async def _enough() -> str:
    return ""
