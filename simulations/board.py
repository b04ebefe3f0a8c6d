"""The simulator's stand-in for the DHT that carries testimony (mesh.core.trust): submitters publish what
their ledgers learned of each worker, and the outvotes their cross-checks proved (a node passes those on
as signed proofs, mesh.wire.proof), and every submitter reads what others published once it has had
time to spread (delay_s). One board per run; nothing on it is trusted by a reader — each weighs it with
its own mesh.core.trust.Shared, as a node does."""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.core.trust import Testimony
from mesh.wire.proof import Outvote

Post = Testimony | Outvote

TRIM_AT = 4096  # posts every reader has read are dropped once this many have piled up


@dataclass
class Board:
    delay_s: float = 30.0  # from publication to being readable by every other submitter
    posts: list[tuple[float, Post]] = field(default_factory=list)  # (readable from, testimony), in order
    cursors: dict[str, int] = field(default_factory=dict)  # reader → index into posts of its next read

    def publish(self, t: Post, now: float) -> None:
        self.posts.append((now + self.delay_s, t))

    def join(self, reader: str) -> None:
        self.cursors[reader] = 0

    def read(self, reader: str, now: float) -> list[Post]:
        """What became readable since `reader`'s last read (its own posts included: the reader skips them)."""
        start = end = self.cursors[reader]
        while end < len(self.posts) and self.posts[end][0] <= now:
            end += 1
        self.cursors[reader] = end
        out = [t for _, t in self.posts[start:end]]
        low = min(self.cursors.values())
        if low >= TRIM_AT:
            del self.posts[:low]
            for r in self.cursors:
                self.cursors[r] -= low
        return out
