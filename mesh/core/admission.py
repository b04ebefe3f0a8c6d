"""Who may use a worker's step slots, and on what terms; sans-I/O (the node's worker asks, the tests drive
it alone). Four fresh keys once filled all 16 slots of a worker with 3600 s steps. Now a requester is
*known* when it did work for this node that agreed with others (reciprocity: this node paid it, and its
reputation here is not below neutral) or its reputation here is good; anyone else is a *stranger*
(fresh keys are free, so a stranger's standing is worth nothing). The numbers, for 16 slots:

- one requester: 4 at once (Limits.max_inflight_per_peer, unchanged);
- strangers together: 4 (a quarter), so known requesters always have 12 that strangers cannot take;
- known requesters from one observed network prefix: 12 (three quarters), so one household or cloud
  subnet cannot take every slot even with standing; strangers are bounded by their quarter alone (a
  prefix quota inside it would cut a single new submitter below its own 4), and never count against
  a known requester's prefix, so strangers sharing its network cannot shut it out either;
- a stranger's step runs at most 60 s and with 256 MiB of memory, whatever it asked (known: 3600 s and
  the sandbox's 1 GiB). A step cut short by these caps fails with an error that says so.

A refusal is `busy` (no answer: never punished; the submitter places the replica elsewhere).
A worker may also hold each submitter to a credit line as its own ledger sees it (`credit_refusal`)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

KNOWN_REPUTATION = 0.6  # "good" (mesh.core.policy.BANDS): evidence enough on its own
MAX_TIMEOUT_S = 3600.0  # the longest step anyone may ask for
STRANGER_TIMEOUT_S = 60.0
STRANGER_MEMORY = 256 << 20  # bytes
# A receipt for less than 1/UNDERPAID of a step's work as this worker measured it counts the rest against its
# payer's credit line: paying the minimum charge for every step, a submitter ran 12 steps (4.19 credits
# of CPU) past a line of 0.5. At 4 (a quarter of the work let pass, as an honest payer pays the agreeing
# workers' median, lower than a slow worker's own figure), a payer of the minimum charge got 14 steps of
# ~1 CPU-second past a line of 3 where an honest one got 3 (attack on real nodes, 2026-12-06): the line is
# work done, so all of it counts, whatever a receipt says.
UNDERPAID = 1.0


@dataclass(frozen=True)
class Account:
    """Credits between this node and one peer, from this node's own ledger: what it earned from the peer
    (work it did for the peer, paid with the peer's receipts) and what it paid the peer (work the peer
    did for it, agreed with others)."""

    earned: float = 0.0
    paid: float = 0.0
    short: float = 0.0  # work done for it beyond what its receipts paid, where they paid too little (UNDERPAID)

    @property
    def balance(self) -> float:
        """The peer's balance as this node sees it: work it did here minus work done for it here."""
        return self.paid - self.earned

    def add(self, kind: str, amount: float, measured: float | None = None) -> Account:
        """After one ledger entry (`amount` as the ledger has it: + earned, − paid; `measured`: an earned
        step's work as this node measured it, at its own rates, when the entry kept it)."""
        if kind == "earned":
            return Account(self.earned + amount, self.paid, self.short + shortfall(amount, measured))
        if kind == "paid":
            return Account(self.earned, self.paid - amount, self.short)
        return self


def shortfall(amount: float, measured: float | None) -> float:
    """What a receipt of `amount` for work this node measured at `measured` credits leaves unpaid, as far
    as a credit line counts it: the payer may pay anything from the minimum charge to `measured` (it pays
    the median of the agreeing workers' figures), but the work under 1/UNDERPAID of it counts all the same."""
    if measured is None:
        return 0.0
    return max(0.0, measured / UNDERPAID - amount)


@dataclass(frozen=True)
class Standing:
    """A requester as this worker sees it: its reputation here (0.5 when never judged), whether it did
    work for this node (reciprocity), and the network prefix its link really comes from."""

    node: str
    prefix: str
    reputation: float = 0.5
    did_work: bool = False

    @property
    def known(self) -> bool:
        return self.reputation >= KNOWN_REPUTATION or (self.did_work and self.reputation >= 0.5)

    @property
    def kind(self) -> str:
        return "known" if self.known else "stranger"


@dataclass(frozen=True)
class Shares:
    """How many slots each kind of holder may take at once."""

    total: int = 16
    per_peer: int = 4
    strangers: int = 4
    prefix: int = 12

    @classmethod
    def of(cls, total: int, per_peer: int) -> Shares:
        """A quarter of the slots for strangers, three quarters for one prefix (at least one each)."""
        return cls(total, per_peer, max(1, total // 4), max(1, total - total // 4))


@dataclass(frozen=True)
class Terms:
    """What a step runs with here: its time limit, its memory (None: the sandbox's own, 1 GiB) and, when
    either was cut below what it asked for, in words why (for its error if it fails of it)."""

    timeout: float
    memory: int | None
    cut: str = ""


def terms(who: Standing, timeout: float) -> Terms:
    """A step's limits for `who`: a stranger's are capped (STRANGER_TIMEOUT_S, STRANGER_MEMORY)."""
    asked = max(1.0, min(timeout, MAX_TIMEOUT_S))
    if who.known:
        return Terms(asked, None)
    most = min(asked, STRANGER_TIMEOUT_S)
    cut = (f"this worker gives requesters that have not worked for it at most {STRANGER_TIMEOUT_S:g} s "
           f"and {STRANGER_MEMORY >> 20} MiB a step" + (f" (asked {timeout:g} s)" if most < asked else ""))
    return Terms(most, STRANGER_MEMORY, cut)


def credit_refusal(account: Account, unpaid: float, line: float, failed: float = 0.0) -> str:
    """Why a worker holding submitters to `line` credits refuses this one ('' when it is within it):
    its balance here, less what this node answered for it and was not yet paid, what its receipts paid
    too little (Account.short) and what its steps that failed here took (`failed`: never paid, and a
    step that computed and then raised handed its answer back in the error text), is below −line."""
    owes = unpaid + failed + account.short - account.balance
    if owes <= line:
        return ""
    short = f", {account.short:.2f} short of what your receipts should have paid" if account.short else ""
    fail = f", {failed:.2f} for steps that failed" if failed else ""
    return (f"refused: over this worker's credit line: it has done {owes:g} credits more work for you than "
            f"you for it ({account.earned:g} paid, {unpaid:g} unpaid{short}{fail}, {account.paid:g} earned from "
            f"it), and it allows {line:g}; work for it to earn more")


@dataclass
class Slots:
    """The slots in use, by holder; `take` decides (run now, or why not), `release` frees."""

    shares: Shares = field(default_factory=Shares)
    held: dict[Hashable, Standing] = field(default_factory=dict)

    def refusal(self, who: Standing) -> str:
        """Why `who` may not take a slot now ('' when it may)."""
        s = self.shares
        mine = strangers = prefix = 0
        for h in self.held.values():
            mine += h.node == who.node
            strangers += not h.known
            prefix += h.known and h.prefix == who.prefix
        if mine >= s.per_peer:
            return f"busy: you have {mine} steps running here, the most one requester may"
        if len(self.held) >= s.total:
            return f"busy: all {s.total} step slots are in use"
        if not who.known and strangers >= s.strangers:
            return (f"busy: requesters that have not worked for this node hold {strangers} of its {s.total} "
                    "slots, the most they may")
        if who.known and prefix >= s.prefix:
            return (f"busy: known requesters from your network ({who.prefix}) hold {prefix} of its {s.total} slots, "
                    "the most one network may")
        return ""

    def take(self, key: Hashable, who: Standing) -> str:
        """Hold a slot for `key` ('' when taken), or say why not."""
        why = self.refusal(who) if key not in self.held else "busy: that step is already running here"
        if not why:
            self.held[key] = who
        return why

    def release(self, key: Hashable) -> None:
        self.held.pop(key, None)

    def use(self) -> dict[str, int]:
        """Slots in use by kind of holder, and the limits (for `mesh status`)."""
        strangers = sum(not h.known for h in self.held.values())
        return {"known": len(self.held) - strangers, "stranger": strangers, "total": self.shares.total,
                "stranger_max": self.shares.strangers, "prefix_max": self.shares.prefix,
                "per_peer_max": self.shares.per_peer}
