"""The simulator's stand-in for the DHT that carries testimony (mesh.core.trust): submitters publish what
their ledgers learned of each worker, and the outvotes their cross-checks proved (a node passes those on
as signed proofs, mesh.wire.proof), and every submitter reads what others published once it has had
time to spread (delay_s). One board per run; nothing on it is trusted by a reader — each weighs it with
its own mesh.core.trust.Shared, as a node does. A reader keeps testimony only about workers its own pools
have named, as a node keeps it only about peers in its table (Testimonies.heard); of a worker newly met it
asks what each issuer says of it now (`said_of`), as a node asks its linked peers every round."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from operator import itemgetter

from mesh.core.trust import Testimony
from mesh.wire.proof import Outvote

Post = Testimony | Outvote

TRIM_AT = 4096  # posts every reader has read are dropped once this many have piled up
_READABLE_FROM = itemgetter(0)


@dataclass
class Board:
    delay_s: float = 30.0  # from publication to being readable by every other submitter
    posts: list[Post] = field(default_factory=list)  # in the order published
    # when each of `posts` becomes readable (in order too): apart, a read is two slices of lists (one list of
    # pairs was a pair unpacked per post per reader, a tenth of a late huge-100k run)
    readable: list[float] = field(default_factory=list)
    cursors: dict[str, int] = field(default_factory=dict)  # reader → index into posts of its next read
    last_read: dict[str, float] = field(default_factory=dict)  # reader → virtual time of its last read
    # worker → issuer → its recent testimony about the worker, (readable from, testimony) in order: the
    # newest one readable when it was published, and any published since
    recent: dict[str, dict[str, list[tuple[float, Testimony]]]] = field(default_factory=dict)

    def publish(self, t: Post, now: float) -> None:
        readable = now + self.delay_s
        self.posts.append(t)
        self.readable.append(readable)
        if type(t) is Testimony:
            said = self.recent.setdefault(t.worker, {}).setdefault(t.issuer, [])
            said.append((readable, t))
            while len(said) > 1 and said[1][0] <= now:  # superseded by one every reader could have now
                del said[0]

    def said_of(self, worker: str, until: float) -> list[Testimony]:
        """What each issuer said of `worker` as of `until`: its newest testimony readable by then."""
        out = []
        for said in self.recent.get(worker, {}).values():
            i = bisect_right(said, until, key=_READABLE_FROM)
            if i:
                out.append(said[i - 1])
        out.sort(key=_READABLE_FROM)
        return [t for _, t in out]

    def join(self, reader: str) -> None:
        self.cursors[reader] = 0

    def read(self, reader: str, now: float) -> list[Post]:
        """What became readable since `reader`'s last read (its own posts included: the reader skips them)."""
        start = self.cursors[reader]
        # posts are published at the engine's time, which only goes forward: their readable times are in
        # order, so the first one not yet readable is found by halving (a walk past every post cost each
        # of 200 readers a step per post)
        end = bisect_right(self.readable, now, lo=start)
        self.cursors[reader], self.last_read[reader] = end, now
        out = self.posts[start:end]
        # the slowest reader's cursor is at most this one's: look for it only when this one is past TRIM_AT
        low = min(self.cursors.values()) if end >= TRIM_AT else 0
        if low >= TRIM_AT:
            del self.posts[:low], self.readable[:low]
            for r in self.cursors:
                self.cursors[r] -= low
        return out
