"""Peer message payloads, one dataclass per envelope kind. The kind name is the domain tag suffix
(`homemesh/v1/<kind>`), so a signature for one kind never verifies as another."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PeerRef:
    key: str  # hex public key
    addr: str  # host:port of its peer gateway


@dataclass
class Hello:
    """Sent on connect and as heartbeat: who I am, where I listen, what I can run, whom I know."""

    listen: str
    kinds: list[str]
    models: list[str]
    sandbox: bool
    peers: list[PeerRef] = field(default_factory=list)


@dataclass
class StepRequest:
    """Run one replica of a step. `params` are already resolved (no `{x.output}` left)."""

    job: str
    step: str
    kind: str
    params: dict
    timeout: float


@dataclass
class StepResult:
    """A worker's signed answer. `digest` is SHA-256 of the canonical output; `identity` names the code
    or model that produced it; `work` is what the worker measured (tokens, cpu_s)."""

    job: str
    step: str
    ok: bool
    output: Any
    digest: str
    identity: str
    work: dict
    error: str = ""


@dataclass
class ReceiptMsg:
    """Carries a payment receipt signed by the submitter (see ledger.receipts)."""

    receipt: dict


@dataclass
class Bye:
    """Clean leave on shutdown."""

    reason: str = ""


KINDS: dict[str, type] = {
    "hello": Hello,
    "step": StepRequest,
    "result": StepResult,
    "receipt": ReceiptMsg,
    "bye": Bye,
}
