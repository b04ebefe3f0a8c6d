"""Another process signing with this node's key: a home copied to a second machine (or a second folder),
or a stolen key. Gossip hands a node its own record back now and then; one that is validly signed by
this node's key, issued after this node started, and not signed by this process can only come from
another holder of the key. Nobody else can make such a record, so this is proof, not a peer's word.

The node says so (an error in its log, `key_in_use_elsewhere` in `mesh status`) and goes on: stopping on
it would let whoever stole a key stop its owner's node. Unnoticed, the two took turns at the one identity
(each record replacing the other's at every peer) and the copy's work went unpaid (red team G)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mesh.wire.messages import PeerRecord

MAX_SIGNED = 4096  # own records remembered (one every 10 min lives 30 min: a handful are ever current)


@dataclass(frozen=True)
class Twin:
    """What shows another holder of this node's key: its record, and the peer that passed it on."""

    addr: str  # the other holder's advertised address (as it signed it)
    alt: tuple[str, ...]
    issued_ms: int
    via: str  # node id of the peer whose gossip carried it
    seen_ms: int  # when this node saw it

    def to_json(self) -> dict:
        return {"addresses": [self.addr, *self.alt], "issued_ms": self.issued_ms, "via": self.via,
                "seen_ms": self.seen_ms}


class KeyTwins:
    """`signed(rec)` for each record this process makes; `check(rec, ...)` for each record of this node's
    own key that gossip brings. `latest` is the last proof seen (None: none)."""

    def __init__(self) -> None:
        self._mine: dict[str, None] = {}  # signatures of records this process signed (an ordered set)
        self.latest: Twin | None = None
        self.count = 0  # records of another holder seen (each checked once: see `_seen`)
        self._seen: set[str] = set()  # their signatures (bounded like _mine)

    def signed(self, rec: PeerRecord) -> None:
        self._mine[rec.sig] = None
        if len(self._mine) > MAX_SIGNED:
            del self._mine[next(iter(self._mine))]

    def check(self, rec: PeerRecord, via: str, now_ms: int, started_ms: int,
              verify: Callable[[PeerRecord], str]) -> Twin | None:
        """The proof when `rec` (of this node's key) was signed by another holder, else None. `verify` is
        the usual record check ('' when valid): only a valid signature is proof. `started_ms`: this node's
        start as the wall clock reads now (a record of its own last run was issued before it)."""
        if rec.sig in self._mine or rec.sig in self._seen or rec.issued <= started_ms:
            return None
        if verify(rec):
            return None
        if len(self._seen) >= MAX_SIGNED:
            self._seen.clear()
        self._seen.add(rec.sig)
        self.count += 1
        self.latest = Twin(rec.addr, tuple(rec.alt), rec.issued, via, now_ms)
        return self.latest

    def status(self) -> dict | None:
        return None if self.latest is None else {**self.latest.to_json(), "records_seen": self.count}
