"""A node's side of shared reputation (mesh.core.trust): now and then it asks each linked peer what its
ledger says of the other peers it knows (`testimony-ask`), answers such asks with its own testimony
(`testimony`), and weighs what it hears by the verified work that flows to each issuer. An issuer only
ever speaks for itself — the envelope's signer is the issuer of every item — and each item is checked
as hostile input before it is kept. Proofs of wrong answers (`outvoted`, mesh.wire.proof) come from
whoever has one and count by who signed them, not by who sent them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container, Iterable, Mapping

from mesh.core.policy import Reputations
from mesh.core.trust import BadTestimony, Report, Shared, Standing, Testimony, attest
from mesh.errors import Rejected
from mesh.node.flow import KeyedBuckets
from mesh.node.peers import MAX_PEERS
from mesh.wire.messages import MAX_TESTIMONY, Outvoted, TestimonyAsk, TestimonyItem, TestimonyTell
from mesh.wire.proof import shown, verify_signed

log = logging.getLogger("mesh.node")

TESTIMONY_S = 60.0  # between two rounds of asking every linked peer
SKEW_MS = 300_000  # a testimony stamped further ahead of this node's clock is refused
MAX_PREFIXES = MAX_PEERS  # peers whose last observed network prefix is kept (as many as the peer table holds)
# testimony-asks one peer is answered (burst, then per second): a peer asks once a round (TESTIMONY_S; 1 s at
# the least, --testimony-every). Answered every time, an ask naming 256 workers this node knows cost 3.4 ms and
# a 41 KB answer: 0.68 s of CPU and 8 MB a second for one link's 200 envelopes (second attack round, 2026-12-06)
ANSWER_RULE = (4.0, 1.0)


class Testimonies:
    """The node's testimony: what it holds from others (`shared`), what it tells them."""

    def __init__(self, me: str, own: Reputations, count: Callable[[str], None]):
        self.shared = Shared(me, own)
        self.prefixes: dict[str, str] = {}  # peer → the network prefix it was last observed on (refresh)
        self.count = count  # a rejection by reason (the node's `rejected` counters)
        self.rounds = 0  # times the issuers were weighed
        self.proofs = 0  # outvote proofs kept
        self._answered = KeyedBuckets()  # per asking peer, held to ANSWER_RULE

    def rebind(self, own: Reputations) -> None:
        """The node's reputations were rebuilt (read from the ledger at start)."""
        self.shared.own = own

    def ask(self, peers: Iterable[str]) -> TestimonyAsk | None:
        """The question for one peer: the other peers this node knows (at most MAX_TESTIMONY)."""
        workers = sorted(peers)[:MAX_TESTIMONY]
        return TestimonyAsk(workers) if workers else None

    def answers(self, asker: str, now: float | None = None) -> bool:
        """Whether an ask of `asker`'s would be answered now (ANSWER_RULE), spending nothing."""
        return self._answered.allows(asker, ANSWER_RULE, time.monotonic() if now is None else now)

    def answer(self, asker: str, msg: TestimonyAsk, now_ms: int, now: float | None = None) -> TestimonyTell | None:
        """This node's own testimony about the workers asked of (never about the asker itself); None (and
        counted) when `asker` asks more often than ANSWER_RULE allows. `now`: monotonic seconds."""
        if not self._answered.spend(asker, ANSWER_RULE, time.monotonic() if now is None else now):
            self.count("testimony-rate")
            return None
        items = []
        for w in msg.workers:
            t = attest(self.shared.me, w, self.shared.own, now_ms) if w != asker else None
            if t is not None:
                items.append(TestimonyItem(t.worker, t.good, t.bad, t.streak, t.since, t.last_bad, t.stamp))
        return TestimonyTell(items)

    def heard(self, issuer: str, msg: TestimonyTell, known: Container[str], now_ms: int) -> int:
        """Keep what `issuer` (the envelope's signer) said of peers this node knows (so what is held stays
        bounded by the peer table); items that do not hold together are refused and counted. How many were
        kept."""
        kept, refused, first = 0, 0, ""
        for item in msg.items:
            if item.worker not in known:
                self.count("testimony-unknown-worker")
                continue
            try:
                t = Testimony(issuer, item.worker, item.good, item.bad, item.streak, item.since, item.last_bad,
                              item.stamp)
                t.check()
                if t.stamp > now_ms + SKEW_MS:
                    raise BadTestimony("stamped in the future")
            except BadTestimony as exc:
                self.count("bad-testimony")
                refused, first = refused + 1, first or str(exc)
                continue
            kept += self.shared.take(t)
        if refused:  # one line a message, not one an item: a peer's 40 testimonies a second of 256 bad items
            # each wrote 3,000 lines a second, held the node's API at 200 ms a request and rotated its logs away
            log.warning("testimony from %s refused: bad-testimony: %d of %d items, the first: %s", issuer[:12],
                        refused, len(msg.items), first)
        return kept

    def proof(self, sender: str, proof: Outvoted, network: str, known: Container[str], now_ms: int) -> bool:
        """Keep a proof that a worker this node knows (`known`: its peer table, whose ids cost work to
        mint — keys made for free to be 'outvoted' would otherwise fill memory) was outvoted, when the ids
        that outvoted it are ones this node trusts (mesh.core.trust.Shared.weigh_outvote); their
        signatures are checked only then, so a flood of proofs signed by strangers costs no Ed25519
        verification. True when kept (to pass on)."""
        try:
            o = shown(proof, network)
            if o.accused not in known:
                self.count("proof-unknown-worker")
                return False
            why = self.shared.weigh_outvote(o, now_ms)
            if not why:
                verify_signed(proof)
        except Rejected as exc:
            self.count(exc.reason)
            log.warning("proof from %s refused: %s: %s", sender[:12], exc.reason, exc)
            return False
        if why:
            if why == "untrusted":
                self.count("proof-untrusted")  # not an offence: this node just does not know the majority
            return False
        self.shared.keep_outvote(o, now_ms)
        self.proofs += 1
        log.warning("proof from %s: %s answered %s/%s unlike %d others, trusted here", sender[:12], o.accused[:12],
                    o.job, o.step, len(o.majority))
        return True

    def refresh(self, prefixes: Mapping[str, str], now_ms: int) -> dict[str, float]:
        """Weigh the issuers again; `prefixes`: the observed network prefix of each linked peer. A peer no
        longer linked keeps the prefix it was last seen on (at most MAX_PREFIXES, the least recently seen
        forgotten first): with only linked peers' prefixes known, two ids on one machine that hung up
        before this round counted as two prefixes and confirmed a cheater's run between them."""
        seen = self.prefixes
        for node, prefix in prefixes.items():
            seen.pop(node, None)
            seen[node] = prefix
        while len(seen) > MAX_PREFIXES:
            del seen[next(iter(seen))]
        self.shared.prefix_of = seen
        self.rounds += 1
        return self.shared.refresh(now_ms)

    def reported(self) -> list[str]:
        """Workers an outvote newly proved a wrong answer of (mesh.core.trust.Shared.reported)."""
        return self.shared.reported()

    def reports(self, now_ms: int) -> list[Report]:
        """New proofs and trusted issuers' reports to act on (mesh.core.trust.Shared.reports)."""
        return self.shared.reports(now_ms)

    def standing(self, node: str, now_ms: int) -> Standing:
        return self.shared.standing(node, now_ms)

    def status(self) -> dict:
        return {"rounds": self.rounds, "workers": len(self.shared.about), "proofs": self.proofs,
                "proven": {w[:12]: len(held) for w, held in sorted(self.shared.proven.items())},
                "held": sum(len(v) for v in self.shared.about.values()),
                "issuers": {i[:12]: round(w, 3) for i, w in sorted(self.shared.weights.items())}}
