"""Peer message payloads, one dataclass per envelope kind. The kind name is the domain tag suffix
(`homemesh/v1/<kind>`), so a signature for one kind never verifies as another."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RateCard:
    """What a worker charges, in credits, signed in its peer record: payers price its work with it, and
    it refuses a receipt for more than its own measured work at these rates (mesh.core.pricing)."""

    cpu_s: float = 1.0  # per CPU-second of a python step
    tokens_1k: float = 10.0  # per 1,000 tokens generated (llm, ask-model)
    scored_1k: float = 2.5  # per 1,000 tokens scored (verifying another worker's claim)
    scrape: float = 1.0  # per page scraped


@dataclass
class PeerRecord:
    """A node's signed description of itself (see mesh.wire.records): spread by gossip, verified before use,
    replaced by a newer one (higher `issued`), forgotten after `expires`."""

    key: str  # hex Ed25519 public key; the node id is its SHA-256
    addr: str  # host:port of its peer gateway, or a multiaddr (e.g. a circuit through a relay)
    kinds: list[str]
    models: list[str]  # SHA-256 of each model it serves
    sandbox: bool
    version: int  # protocol version it speaks
    issued: int  # ms since the epoch
    expires: int
    sig: str
    # more addresses of the same node, tried in turn when `addr` fails: the circuits of a node behind NAT
    # through its other relays (at most MAX_ALT, mesh.wire.records); signed like the rest
    alt: list[str] = field(default_factory=list)
    rates: RateCard = field(default_factory=RateCard)  # its prices (checked: mesh.wire.records)


@dataclass
class Hello:
    """Sent on connect and as heartbeat: my own record, and the records of peers I know."""

    record: PeerRecord
    peers: list[PeerRecord] = field(default_factory=list)


@dataclass
class StepRequest:
    """Run one replica of a step. `params` are already resolved (no `{x.output}` left)."""

    job: str
    step: str
    kind: str
    params: dict[str, Any]  # JSON; its shape is checked by the step kind (mesh.core.dag.check_request)
    timeout: float  # seconds


@dataclass
class StepResult:
    """A worker's signed answer. `digest` is SHA-256 of the canonical output; `identity` names the code
    or model that produced it; `work` is what the worker measured (tokens, cpu_s)."""

    job: str
    step: str
    ok: bool
    output: object  # the step's JSON output
    digest: str
    identity: str
    work: dict[str, Any]  # JSON numbers and texts, as the worker measured them
    error: str = ""


@dataclass
class Progress:
    """Tokens generated so far by a replica still running (llm steps): the text streams to the submitter
    while the step runs. Informational only: nothing is decided on it."""

    job: str
    step: str
    tokens: int
    text: str


@dataclass
class ReceiptMsg:
    """Carries a payment receipt signed by the submitter. It stays a JSON object on the wire and is
    parsed into ledger.receipts.Receipt by the worker that gets it: the schema would turn an integer
    amount into a float (changing the bytes the payer signed) and count a malformed receipt as
    bad-schema rather than bad-receipt."""

    receipt: dict[str, Any]


@dataclass
class Bye:
    """Clean leave on shutdown."""

    reason: str = ""


KINDS: dict[str, type] = {
    "hello": Hello,
    "step": StepRequest,
    "result": StepResult,
    "receipt": ReceiptMsg,
    "progress": Progress,
    "bye": Bye,
}
