"""What the submission core (mesh.core.submission) asks its driver to do: typed effects, carried out by
the node over sockets and the ledger, or by the simulator on its virtual network. Each is a plain
frozen record; the core has already updated its own state when it returns one."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.core.jobrun import Outcome
from mesh.core.policy import RecheckEvidence, StepEvidence
from mesh.core.spotcheck import Challenge


@dataclass(frozen=True)
class Send:
    """Send this replica or spot check now (its worker slot is already taken); if it cannot be delivered,
    tell the core (Submission.on_unreachable). A check is sent exactly as a replica: the node's driver
    never reads `check` (the simulator finds its truth there), so nothing on the wire tells them apart."""

    job: str
    step: str
    node: str
    kind: str
    params: Mapping[str, Any]
    deadline: float
    check: Challenge | None = None  # a spot check's known answer: never sent, never shown to the worker


@dataclass(frozen=True)
class Timer:
    """Drive `job` again at `at` (a replica's deadline) unless something wakes it sooner."""

    job: str
    at: float


@dataclass(frozen=True)
class Alarm:
    """Call Submission.on_alarm at `at`: a planned spot check is due, or an outstanding one's deadline."""

    at: float


@dataclass(frozen=True)
class Wake:
    """Something changed for `job`: drive it again now."""

    job: str


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger row as the core decides it; the driver adds what needs its keys (a signed receipt on
    `paid`) and the time. `amount` is − for credits paid."""

    kind: str  # paid | agreed | disagreed | no_show | spot_failed
    job: str
    step: str
    peer: str
    amount: float = 0.0
    why: StepEvidence | RecheckEvidence | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)  # anything else (a spot check's answer)

    def details(self) -> dict[str, Any]:
        """The entry's detail as the ledger stores it (`why` kept typed: the ledger encodes it)."""
        return {**self.detail, "why": self.why} if self.why is not None else dict(self.detail)


@dataclass(frozen=True)
class Record:
    """Write these entries in one ledger batch, then report how it went (Submission.on_recorded(id, ok)).
    Receipts go to the paid workers only once the batch is written."""

    id: int
    job: str
    entries: tuple[LedgerEntry, ...]
    outcomes: tuple[Outcome, ...] = ()  # the settled steps the batch pays for (empty: a verdict only)


@dataclass(frozen=True)
class Started:
    """A job's run exists now (submitted, or a recheck the core started): drive it."""

    job: str
    recheck_of: tuple[str, str] | None = None


@dataclass(frozen=True)
class Answer:
    """A worker's answer to a replica: `taken` when the job was waiting for it (else it was never asked,
    late or a duplicate); `ok` once its digest was found to match its output."""

    job: str
    step: str
    node: str
    ok: bool
    digest: str
    taken: bool


@dataclass(frozen=True)
class Judged:
    """A spot check's answer, judged; a failure is also recorded (spot_failed) and blacklists the worker.
    (No answer — busy, an error, a timeout — is never judged.)"""

    node: str
    passed: bool
    got: str  # the digest it answered, or its error
    check: str = ""  # the check's id (the job id its worker saw)


@dataclass(frozen=True)
class Rechecked:
    """A recheck of `job`/`step` ended: confirmed, overturned (the accepted digest went from `before` to
    `after`) or inconclusive. (A job is kept in memory while it is being rechecked.)"""

    job: str
    step: str
    recheck: str
    verdict: str
    before: str
    after: str


@dataclass(frozen=True)
class Finished:
    job: str
    status: str  # done | failed


@dataclass(frozen=True)
class Forgotten:
    """The core let go of a finished job (it keeps the newest `keep`): the driver may too."""

    job: str


Effect = Send | Timer | Alarm | Wake | Record | Started | Answer | Judged | Rechecked | Finished | Forgotten


def as_json(effect: Effect) -> list[Any]:
    """An effect as JSON-ready data, for the core's log."""
    return [type(effect).__name__, dataclasses.asdict(effect)]
