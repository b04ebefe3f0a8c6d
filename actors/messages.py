"""Typed messages between a node's own actors (one machine, one operator: Thespian pickles these on
loopback only; nothing here ever comes from a peer). Class names are unique, as ActorTypeDispatcher
dispatches on the bare name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mesh.steps.stepuser import StepUser


@dataclass
class NodeConfig:
    home: str
    ledger_path: str
    n_threads: int = 0
    load_model: bool = True
    model_path: str = ""  # a GGUF registered by path; empty → the default model package
    model_sha256: str = ""
    extra_models: list[list[str]] = field(default_factory=list)  # [path, sha256] from the model registry
    step_user: StepUser | None = None  # who python steps run as (set when the node runs as root)


@dataclass
class NodeReady:
    models: list[str]
    error: str = ""


@dataclass
class RunStep:
    request_id: str
    kind: str
    params: dict
    timeout: float
    sandboxed: bool = True
    user: StepUser | None = None  # filled in by the NodeActor for python steps


@dataclass
class StepDone:
    request_id: str
    ok: bool
    output: Any = None
    identity: str = ""
    work: dict = field(default_factory=dict)
    error: str = ""


@dataclass
class WarmUp:
    """Tells a StepActor to start its sandbox now, before its step comes."""

    sandboxed: bool = True
    user: StepUser | None = None


@dataclass
class StepProgress:
    """Sent by a model runner while it generates; the NodeActor forwards it to the asker."""

    request_id: str
    tokens: int
    text: str


@dataclass
class LoadModel:
    path: str
    sha256: str
    n_threads: int = 0


@dataclass
class ModelLoaded:
    sha256: str
    error: str = ""


@dataclass
class OpenLedger:
    path: str


@dataclass
class RecordEntries:
    request_id: str
    entries: list  # list[ledger.store.Entry]
    ts: int


@dataclass
class EntriesRecorded:
    request_id: str
    added: int = 0
    error: str = ""
    amount: float = 0.0  # sum of the amounts of the entries really added


@dataclass
class PeerStatsQuery:
    request_id: str


@dataclass
class PeerStatsReply:
    request_id: str
    stats: dict  # node id → mesh.core.policy.Evidence
    error: str = ""
    balance: float = 0.0
    streaks: dict = field(default_factory=dict)  # node id → run of validated results
