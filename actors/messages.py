"""Typed messages between a node's own actors (one machine, one operator: Thespian pickles these on
loopback only; nothing here ever comes from a peer). Class names are unique, as ActorTypeDispatcher
dispatches on the bare name. A step's params, output and measured work are JSON (their shape is the step
kind's business), so they are typed as JSON objects, not further."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger.store import Entry
from mesh.core.admission import Account
from mesh.core.policy import Evidence
from mesh.steps.stepuser import StepUser

JsonObject = dict[str, Any]  # a decoded JSON object: a step's params, its measured work


@dataclass(frozen=True)
class NodeConfig:
    home: str
    ledger_path: str
    n_threads: int = 0
    load_model: bool = True
    model_path: str = ""  # a GGUF registered by path; empty → the default model package
    model_sha256: str = ""
    extra_models: list[list[str]] = field(default_factory=list)  # [path, sha256] from the model registry
    step_user: StepUser | None = None  # who python steps run as (set when the node runs as root)
    cap: str = ""  # the name of the owner's cap groups (mesh.steps.cgroup.OwnerCap): steps and runners join them


@dataclass(frozen=True)
class NodeReady:
    models: list[str]  # SHA-256 of every model loaded
    error: str = ""


@dataclass(frozen=True)
class RunStep:
    request_id: str
    kind: str  # llm | score | python
    params: JsonObject
    timeout: float  # seconds
    sandboxed: bool = True
    user: StepUser | None = None  # filled in by the NodeActor for python steps
    memory: int | None = None  # bytes a python step may use (None: the sandbox's own limit)
    cancel_file: str = ""  # once this file exists, the step is stopped (python: its sandbox killed)
    cap: str = ""  # filled in by the NodeActor: the owner's cap groups (--max-cpu, --max-memory)


@dataclass(frozen=True)
class StepDone:
    request_id: str
    ok: bool
    output: object = None  # the step's JSON output
    identity: str = ""  # the code or model that produced it (python:bwrap, gguf:<sha256>)
    work: JsonObject = field(default_factory=dict)  # measured here: cpu_s, tokens, seconds, …
    error: str = ""
    limit: bool = False  # failed of a limit it ran under (time, memory), not of its own code (errors.LimitHit)


@dataclass(frozen=True)
class WarmUp:
    """Tells a StepActor to start its sandbox now, before its step comes."""

    sandboxed: bool = True
    user: StepUser | None = None
    cap: str = ""


@dataclass(frozen=True)
class StepProgress:
    """Sent by a model runner while it generates; the NodeActor forwards it to the asker."""

    request_id: str
    tokens: int
    text: str


@dataclass(frozen=True)
class LoadModel:
    path: str
    sha256: str
    n_threads: int = 0
    cap: str = ""  # the runner joins the owner's CPU cap group before it loads
    user: StepUser | None = None  # filled in by the NodeActor: who the model process drops to (node run as root)


@dataclass(frozen=True)
class ModelLoaded:
    sha256: str
    error: str = ""
    pid: int = 0  # the runner's process, from the runner itself: what the NodeActor kills when it hangs


@dataclass(frozen=True)
class OpenLedger:
    path: str
    home: str = ""  # the node home whose key signs the ledger's heads ('' → unsigned)


@dataclass(frozen=True)
class RecordEntries:
    request_id: str
    entries: list[Entry]
    ts: int  # ms since the epoch, stamped on every entry of the batch


@dataclass(frozen=True)
class EntriesRecorded:
    request_id: str
    added: int = 0
    error: str = ""
    amount: float = 0.0  # sum of the amounts of the entries really added


@dataclass(frozen=True)
class PeerStatsQuery:
    request_id: str


@dataclass(frozen=True)
class PeerStatsReply:
    """What the node's placement view starts from, derived from the ledger's entries."""

    request_id: str
    evidence: dict[str, Evidence]  # node id → its time-decayed reputation evidence
    error: str = ""
    balance: float = 0.0  # credits earned minus spent
    streaks: dict[str, int] = field(default_factory=dict)  # node id → run of validated results
    accounts: dict[str, Account] = field(default_factory=dict)  # node id → credits earned from it, paid to it
