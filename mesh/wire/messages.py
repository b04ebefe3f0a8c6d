"""Peer message payloads, one dataclass per envelope kind. The kind name is the domain tag suffix
(`homemesh/v1/<kind>`), so a signature for one kind never verifies as another."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from mesh.errors import Rejected
from mesh.wire.canonical import digest


@dataclass(frozen=True)
class RateCard:
    """What a worker charges, in credits, signed in its peer record: payers price its work with it, and
    it refuses a receipt for more than its own measured work at these rates (mesh.core.pricing)."""

    cpu_s: float = 1.0  # per CPU-second of a python step
    tokens_1k: float = 10.0  # per 1,000 tokens generated (llm, ask-model)
    scored_1k: float = 2.5  # per 1,000 tokens scored (verifying another worker's claim)
    scrape: float = 1.0  # per page scraped


@dataclass(frozen=True)
class Offer:
    """What a node's owner lets peers use of it (`mesh node --max-steps/--max-memory/--max-cpu`, `mesh
    pause`), signed in its record so that placement does not send work the node would refuse."""

    steps: int = 16  # steps it runs at once, for everyone together
    per_peer: int = 4  # steps one requester may have running there at once
    memory: int = 0  # bytes its steps together may use (0: no cap of the owner's)
    cpu: float = 0.0  # the share of its CPUs its steps may use in all (0: no cap)
    paused: bool = False  # taking no new steps (paused by its owner, or outside its hours): skipped, unpunished


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
    work: int = 0  # the nonce proving its key's work (mesh.wire.idwork): ids cost CPU to mint
    # bytes of models it fetches from peers to run a step that needs one it lacks (--fetch-models; 0: none):
    # placement offers it such steps only when too few peers hold the model
    fetch_models: int = 0
    offer: Offer = field(default_factory=Offer)  # the owner's limits (checked: mesh.wire.records)


@dataclass
class Hello:
    """Sent on connect and as heartbeat: my own record, and the records of peers I know (MAX_HELLO_PEERS at
    most: a node sends 8; a hello of 1,400 records, each parsed before anything looked at its sender, cost
    its receiver 88 ms a frame for 1.3 ms of the sender's, found by this project's attack round, 2026-12-06)."""

    record: PeerRecord
    peers: list[PeerRecord] = field(default_factory=list, metadata={"max_items": 16})


@dataclass
class StepRequest:
    """Run one replica of a step. `params` are already resolved (no `{x.output}` left)."""

    job: str
    step: str
    kind: str
    params: dict[str, Any]  # JSON; its shape is checked by the step kind (mesh.core.dag.check_request)
    timeout: float  # seconds

    def __post_init__(self) -> None:
        # a worker keeps both ids until it is paid (its owed table, on disk): unbounded, one stranger's
        # steps with ids of 450 KB each grew its journal by 114 MB in 60 steps
        _job_steps(self.job, [self.step], "a step request", least=1)


MAX_WORK_TEXT = 2000  # characters of a step's stdout or stderr kept in its work
MAX_TOKEN_ID = 1 << 31
MAX_MEASURE = 1e9


@dataclass
class Work:
    """What a worker measured for one step, signed in its answer: a few numbers and bounded texts, nothing
    nested (a peer fills it: it is priced, kept for 1000 jobs and shown in reports)."""

    cpu_s: float = 0.0  # CPU-seconds of a python step (its cgroup)
    peak_mb: float = 0.0
    tokens: int = 0  # generated, or scored
    prompt_tokens: int = 0
    seconds: float = 0.0  # wall time: python steps are paid at least SLOT_SHARE of it (mesh.core.pricing), others show it
    token_ids: list[int] = field(default_factory=list)  # an llm claim's tokens, for verifiers to score
    via: str = ""  # how a page was fetched
    stdout: str = ""
    stderr: str = ""

    def __post_init__(self) -> None:
        for name in ("cpu_s", "peak_mb", "tokens", "prompt_tokens", "seconds"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and 0 <= value <= MAX_MEASURE and math.isfinite(value)):  # (compared first: a huge int overflows isfinite)
                raise Rejected("bad-schema", f"work.{name} must be a number from 0 to {MAX_MEASURE:g}")
        for name in ("cpu_s", "peak_mb", "seconds"):  # floats, as a receiver parses them: the answer re-encodes
            setattr(self, name, float(getattr(self, name)))  # to the bytes signed (mesh.wire.proof)
        if len(self.token_ids) > 4096 or not all(type(t) is int and 0 <= t < MAX_TOKEN_ID for t in self.token_ids):
            raise Rejected("bad-schema", "work.token_ids must be at most 4096 token ids")
        if len(self.via) > 200 or len(self.stdout) > MAX_WORK_TEXT or len(self.stderr) > MAX_WORK_TEXT:
            raise Rejected("bad-schema", f"work texts are limited (via 200, stdout and stderr {MAX_WORK_TEXT})")

    @classmethod
    def measured(cls, work: dict[str, Any]) -> Work:
        """This node's own measurement (the actors' dict), its texts cut to their limits."""
        known = {f.name for f in dataclasses.fields(cls)}
        w = {k: v for k, v in work.items() if k in known}
        for k, cap in (("via", 200), ("stdout", MAX_WORK_TEXT), ("stderr", MAX_WORK_TEXT)):
            if isinstance(w.get(k), str):
                w[k] = w[k][-cap:]
        return cls(**w)

    def to_json(self) -> dict[str, Any]:
        """The fields measured (the empty ones left out), as the core and reports take them."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (0, 0.0, "", [])}


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
    work: Work  # what the worker measured
    error: str = ""
    # SHA-256 (hex) of the request answered, its kind and params (`asked_digest`): an outvote proof holds
    # together only answers to one request. Without it, a submitter that asked three honest workers one step
    # id with different code could show one's honest answer outvoted by the others' (mesh.wire.proof)
    asked: str = ""

    def __post_init__(self) -> None:
        _job_steps(self.job, [self.step], "a result", least=1)
        if len(self.digest) > 64 or len(self.identity) > 200 or len(self.error) > MAX_WORK_TEXT:
            raise Rejected("bad-schema", f"a result's digest, identity and error are limited (64, 200 and "
                                         f"{MAX_WORK_TEXT} characters)")
        if self.asked and not sha256_hex(self.asked):
            raise Rejected("bad-schema", "a result's asked is a SHA-256 (64 lower-case hex)")


def asked_digest(kind: str, params: dict[str, Any]) -> str:
    """What a result's `asked` names: SHA-256 of the canonical [kind, params] of the request it answers."""
    return digest([kind, params])


@dataclass
class Progress:
    """Tokens generated so far by a replica still running (llm steps): the text streams to the submitter
    while the step runs. Informational only: nothing is decided on it."""

    job: str
    step: str
    tokens: int
    text: str

    def __post_init__(self) -> None:
        _job_steps(self.job, [self.step], "a progress message", least=1)


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


@dataclass
class Cancel:
    """Stop these steps of `job` (every step of it when `steps` is empty): its submitter no longer needs
    them (the step settled, the job ended). A worker stops only steps the sender itself asked for."""

    job: str
    steps: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _job_steps(self.job, self.steps, "a cancel")


@dataclass
class ReceiptAck:
    """The worker booked the receipts for these steps of `job` (or had before): its payer stops resending
    them. Signed as every envelope is, so only the payee can stop its own receipts."""

    job: str
    steps: list[str]

    def __post_init__(self) -> None:
        _job_steps(self.job, self.steps, "a receipt-ack", least=1)


@dataclass
class ReceiptAsk:
    """The worker answered these steps of `job` for the recipient and holds no receipt for them: send the
    receipts again if it paid them (nothing is said for steps it did not pay)."""

    job: str
    steps: list[str]

    def __post_init__(self) -> None:
        _job_steps(self.job, self.steps, "a receipt-ask", least=1)


def _job_steps(job: str, steps: list[str], what: str, least: int = 0) -> None:
    if not (1 <= len(job) <= 64 and least <= len(steps) <= 64 and all(1 <= len(s) <= 64 for s in steps)):
        raise Rejected("bad-schema", f"{what} names a job (1 to 64 characters) and at most 64 steps (1 to 64 each)")


_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class LedgerHead:
    """A node's own ledger head as it signed it (ledger.heads.Head: entry count, that entry's hash, the
    signature), given to a peer to keep and handed back when the node checks its history against what
    its peers hold (`mesh ledger verify --peers`)."""

    n: int
    hash: str
    sig: str

    def __post_init__(self) -> None:
        if not (type(self.n) is int and 0 <= self.n < 1 << 53 and len(self.hash) == 64 and len(self.sig) == 128
                and _HEX.issuperset(self.hash) and _HEX.issuperset(self.sig)):
            raise Rejected("bad-schema", "a ledger head is a count, a 64-hex hash and a 128-hex signature")


@dataclass
class HeadAsk:
    """Which of my ledger heads do you hold? Answered by a HeadHeld with the same `nonce`."""

    nonce: str

    def __post_init__(self) -> None:
        if not 1 <= len(self.nonce) <= 64:
            raise Rejected("bad-schema", "a nonce is 1 to 64 characters")


@dataclass
class HeadHeld:
    """The asker's heads this node holds (at most KEEP_PER_OWNER), oldest first."""

    nonce: str
    heads: list[LedgerHead] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= len(self.nonce) <= 64 or len(self.heads) > 8:
            raise Rejected("bad-schema", "a nonce is 1 to 64 characters, and at most 8 heads are held")


MAX_TESTIMONY = 256  # workers asked about, or testimonies told, in one message


@dataclass(frozen=True)
class TestimonyAsk:
    """What do you know of these workers? Answered by a `testimony` with the sender's own testimony about
    those it has a record of (mesh.core.trust)."""

    __test__ = False  # pytest: not a test class

    workers: list[str]

    def __post_init__(self) -> None:
        if not 1 <= len(self.workers) <= MAX_TESTIMONY or not all(len(w) == 64 and set(w) <= _HEX
                                                                  for w in self.workers):
            raise Rejected("bad-schema", f"a testimony-ask names 1 to {MAX_TESTIMONY} node ids (64 hex characters)")


@dataclass(frozen=True)
class TestimonyItem:
    """One worker as the sender's ledger knows it (mesh.core.trust.Testimony without the issuer: the
    issuer is always the envelope's signer, so nobody can speak for another issuer)."""

    __test__ = False

    worker: str
    good: float
    bad: float
    streak: int
    since: int
    last_bad: int
    stamp: int


@dataclass(frozen=True)
class TestimonyTell:
    """The sender's testimony about workers (answering a testimony-ask)."""

    __test__ = False

    items: list[TestimonyItem]

    def __post_init__(self) -> None:
        if len(self.items) > MAX_TESTIMONY:
            raise Rejected("bad-schema", f"a testimony holds at most {MAX_TESTIMONY} items")


MAX_MAJORITY = 8  # outvoting answers in one proof


@dataclass(frozen=True)
class SignedAnswer:
    """A worker's `result` envelope as it signed it: the header fields, the signature and the payload, so
    anyone can check it without the mesh (mesh.wire.proof). `sender` and `to` are public keys (hex)."""

    kind: str
    net: str
    sender: str
    to: str
    seq: int
    ts: int
    sig: str
    payload: StepResult

    def __post_init__(self) -> None:
        if not all(len(k) == 64 and _HEX.issuperset(k) for k in (self.sender, self.to)) \
                or len(self.sig) != 128 or not _HEX.issuperset(self.sig) or len(self.net) > 255:
            raise Rejected("bad-schema", "a signed answer's keys are 64 and its signature 128 lower-case hex "
                                         "characters")


@dataclass(frozen=True)
class Outvoted:
    """Evidence that `accused` gave a wrong answer: its own signed answer to a step and the signed answers
    of the others that agreed on a different one (mesh.wire.proof checks it; mesh.core.trust weighs it by
    who outvoted, not by who sends it)."""

    accused: SignedAnswer
    majority: list[SignedAnswer]

    def __post_init__(self) -> None:
        if not 2 <= len(self.majority) <= MAX_MAJORITY:
            raise Rejected("bad-schema", f"an outvoted proof holds 2 to {MAX_MAJORITY} outvoting answers")


MODEL_PART = 512 << 10  # bytes of a model file in one part: base64 of it fits a 1 MiB frame with room
MAX_MODEL_PARTS = 8192  # parts in one model (4 GiB): its manifest of part hashes fits one frame too


def sha256_hex(value: str) -> bool:
    """Whether `value` spells a SHA-256 as this protocol does: 64 lower-case hex digits."""
    return isinstance(value, str) and len(value) == 64 and _HEX.issuperset(value)


@dataclass(frozen=True)
class ModelAsk:
    """Send me part `part` of the model whose file has SHA-256 `sha` (-1: its manifest). Answered by a
    `model-manifest` or a `model-part` (mesh.node.modelserve)."""

    sha: str
    part: int

    def __post_init__(self) -> None:
        if not sha256_hex(self.sha) or not -1 <= self.part < MAX_MODEL_PARTS:
            raise Rejected("bad-schema", f"a model-ask names a SHA-256 (64 hex) and a part from -1 to {MAX_MODEL_PARTS - 1}")


@dataclass(frozen=True)
class ModelManifest:
    """What the sender serves of model `sha`: its size and the SHA-256 of each MODEL_PART-byte part, so
    each part is checked as it comes (the whole file is checked against `sha` at the end: the manifest
    is the sender's word until then). `error` says why it serves none (then the rest is empty)."""

    sha: str
    size: int
    parts: list[str]
    error: str = ""

    def __post_init__(self) -> None:
        if not sha256_hex(self.sha) or len(self.error) > 200:
            raise Rejected("bad-schema", "a model-manifest names a SHA-256 (64 hex) and an error of at most 200 characters")
        if self.error:
            return
        want = -(-self.size // MODEL_PART) if isinstance(self.size, int) and self.size > 0 else -1
        if not 1 <= want <= MAX_MODEL_PARTS or len(self.parts) != want or not all(sha256_hex(h) for h in self.parts):
            raise Rejected("bad-schema", f"a model-manifest's size is 1 byte to {MAX_MODEL_PARTS} parts of "
                                         f"{MODEL_PART} bytes, with one SHA-256 per part")


@dataclass(frozen=True)
class ModelPart:
    """Part `part` of model `sha`: its bytes, base64 (at most MODEL_PART of them)."""

    sha: str
    part: int
    data: str

    def __post_init__(self) -> None:
        if not sha256_hex(self.sha) or not 0 <= self.part < MAX_MODEL_PARTS or len(self.data) > 4 * MODEL_PART // 3 + 4:
            raise Rejected("bad-schema", f"a model-part names a SHA-256, a part under {MAX_MODEL_PARTS} and at most "
                                         f"{MODEL_PART} bytes")


KINDS: dict[str, type] = {
    "hello": Hello,
    "step": StepRequest,
    "result": StepResult,
    "receipt": ReceiptMsg,
    "progress": Progress,
    "bye": Bye,
    "cancel": Cancel,
    "receipt-ack": ReceiptAck,
    "receipt-ask": ReceiptAsk,
    "head": LedgerHead,
    "head-ask": HeadAsk,
    "head-held": HeadHeld,
    "testimony-ask": TestimonyAsk,
    "testimony": TestimonyTell,
    "outvoted": Outvoted,
    "model-ask": ModelAsk,
    "model-manifest": ModelManifest,
    "model-part": ModelPart,
}
