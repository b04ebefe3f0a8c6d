"""Signed ledger heads this node keeps for its peers. A node signs its chain's head (ledger/heads.py), but
whoever holds its disk holds its key too and can sign a rewritten history again; heads held by other
nodes cannot be taken back. Each node gives its latest head to a few peers (`Node._share_head`); they
keep a few of each owner here, and hand them back when the owner asks (`mesh ledger verify --peers`),
so a ledger cut short or rebuilt no longer matches what its peers hold.

Everything here came from a peer, and the one who would erase what is held is the key's holder itself:
- a head is kept only when its signature verifies with the sender's own key, and one sender may store one
  head per MIN_GAP_S;
- of an owner's heads, the first ever taken stays and the rest are spread over its history (a new head
  pushes out the one closest in entries to the one before it): four heads sent 5 s apart pushed the one a
  rewrite contradicted out of a keep-the-last-four list, and the rewrite then matched everything held;
- a validly signed head that is not the next one (a lower count, or another hash at a count held) is kept
  apart as `conflict` and handed back with the rest: two histories signed with one key is what the
  owner's verify must see, not a head the holder silently dropped;
- at most PER_PREFIX owners of one network prefix and MAX_OWNERS in all. Past a prefix's share a new owner
  is refused unless that prefix's least recently updated owner has been silent for STALE_S (16 fresh keys
  on an honest owner's prefix pushed it out in 2.6 s); past MAX_OWNERS the prefix holding the most owners
  gives up its least recently updated one."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, OrderedDict
from pathlib import Path

from ledger.heads import head_bytes
from mesh.errors import Rejected, UserError
from mesh.node.home import write_private
from mesh.userfiles import read_text
from mesh.wire.identity import node_id_of, verify
from mesh.wire.messages import LedgerHead

log = logging.getLogger("mesh.node.heldheads")

HELD_FILE = "held-heads.json"
KEEP_PER_OWNER = 4  # heads kept of one owner: its first, and three spread over its history since
MAX_OWNERS = 1024
MAX_FILE = 16 << 20  # held-heads.json of MAX_OWNERS owners is ~1.3 MB; a larger one is not ours, and not read
# owners one network prefix may have here: 1,091 fresh keys from one machine pushed every other owner out
PER_PREFIX = 16
MIN_GAP_S = 5.0  # an owner shares a new head every 10 s at most; more often is a peer spending our CPU
STALE_S = 7 * 86400.0  # an owner that stored nothing for this long may give its place to another of its prefix


class HeldHeads:
    def __init__(self, home: Path):
        self.path = home / HELD_FILE
        self.owners: OrderedDict[str, list[LedgerHead]] = OrderedDict()  # owner key hex → heads, by count
        self.conflicts: dict[str, LedgerHead] = {}  # owner key hex → a signed head off its line (see above)
        self.last: dict[str, float] = {}  # owner key hex → when it last stored one (monotonic)
        self.seen: dict[str, float] = {}  # owner key hex → when it last stored one (wall clock, saved)
        self.prefix: dict[str, str] = {}  # owner key hex → the network prefix it last gave a head from (saved)
        self.dirty = False

    def take(self, owner: bytes, head: LedgerHead, now: float, prefix: str = "", wall: float | None = None) -> str:
        """Keep `owner`'s own signed `head`, from the network `prefix` its link comes from: '' when kept,
        else why not (a counter key). `now`: monotonic seconds; `wall`: the wall clock (for STALE_S)."""
        key = owner.hex()
        wall = time.time() if wall is None else wall
        if now < self.last.get(key, -MIN_GAP_S) + MIN_GAP_S:
            return "head-rate"
        held = self.owners.get(key, [])
        if head in held or head == self.conflicts.get(key):
            return ""
        try:
            good = verify(owner, bytes.fromhex(head.sig), head_bytes(node_id_of(owner), head.n, head.hash))
        except ValueError:
            good = False
        if not good:
            return "bad-head"
        if key not in self.owners and not self._room(prefix, wall):  # (signed first: room may cost another's place)
            return "head-full"
        self.last[key], self.seen[key] = now, wall
        self.dirty = True
        if held and head.n <= held[-1].n:
            return self._conflict(key, head, held)
        self.owners.pop(key, None)
        self.owners[key] = _spread(held + [head])
        self.prefix[key] = prefix
        return ""

    def _conflict(self, key: str, head: LedgerHead, held: list[LedgerHead]) -> str:
        """Keep a head off the owner's line: one that contradicts a held head at its count before one that
        only comes late (it may be an older head of the same chain, which the owner's verify then passes)."""
        counts = {h.n for h in held}
        old = self.conflicts.get(key)
        if old is None or (head.n in counts and old.n not in counts):
            self.conflicts[key] = head
        return "head-conflict"

    def _room(self, prefix: str, wall: float) -> bool:
        """Whether a new owner from `prefix` may be kept, making room as the module docstring says."""
        same = [k for k in self.owners if self.prefix.get(k) == prefix]  # (least recently updated first)
        if len(same) >= PER_PREFIX:
            if wall - self.seen.get(same[0], 0.0) < STALE_S:
                return False
            self._drop(same[0])
        if len(self.owners) >= MAX_OWNERS:
            biggest, _ = Counter(self.prefix.get(k, "") for k in self.owners).most_common(1)[0]
            self._drop(next(k for k in self.owners if self.prefix.get(k, "") == biggest))
        return True

    def _drop(self, key: str) -> None:
        self.owners.pop(key, None)
        for d in (self.conflicts, self.last, self.seen, self.prefix):
            d.pop(key, None)

    def of(self, owner: bytes) -> list[LedgerHead]:
        """What is held of `owner`, by count, and the head off its line last if there is one."""
        key = owner.hex()
        conflict = self.conflicts.get(key)
        return list(self.owners.get(key, [])) + ([conflict] if conflict is not None else [])

    def save(self) -> None:
        """On disk when something changed (each heartbeat at most): a restarted holder still has them."""
        if not self.dirty:
            return
        data = {}
        for k, heads in self.owners.items():  # in order: least recently updated first
            c = self.conflicts.get(k)
            data[k] = {"heads": [[h.n, h.hash, h.sig] for h in heads], "prefix": self.prefix.get(k, ""),
                       "seen": self.seen.get(k, 0.0), "conflict": [c.n, c.hash, c.sig] if c else None}
        write_private(self.path, json.dumps(data))
        self.dirty = False

    def load(self) -> None:
        """Read what was saved (or the older form: owner → heads); a damaged file costs only what does not
        parse (it is our own file, but its heads are still peers' claims, checked again when handed back)."""
        if not self.path.exists():
            return
        try:
            data = json.loads(read_text(self.path, "the held heads", MAX_FILE))
        except UserError as exc:  # over MAX_FILE, not a regular file (/dev/zero filled memory), not UTF-8
            log.warning("%s; starting without the heads held for peers", exc)
            return
        except (ValueError, RecursionError):  # (nested 100,000 deep, it stopped the node's start)
            return
        if not isinstance(data, dict):
            return
        for key, saved in list(data.items())[-MAX_OWNERS:]:
            try:
                bytes.fromhex(key)
                entry = saved if isinstance(saved, dict) else {"heads": saved}
                self.owners[key] = _spread([_head(h) for h in entry["heads"]])
                self.prefix[key] = str(entry.get("prefix", ""))
                self.seen[key] = float(entry.get("seen", 0.0))
                if entry.get("conflict"):
                    self.conflicts[key] = _head(entry["conflict"])
            except (ValueError, TypeError, KeyError, Rejected):
                log.warning("%s: a held head of %s does not parse: skipped", self.path.name, key[:12])
                self._drop(key)


def _head(saved: list) -> LedgerHead:
    n, h, s = saved
    return LedgerHead(int(n), str(h), str(s))


def _spread(heads: list[LedgerHead]) -> list[LedgerHead]:
    """At most KEEP_PER_OWNER of `heads` (by count): the first and the last stay, and each time the one
    closest in entries to the one before it goes, so what is kept reaches back over the whole history."""
    heads = sorted(heads, key=lambda h: h.n)
    while len(heads) > KEEP_PER_OWNER:
        i = min(range(1, len(heads) - 1), key=lambda j: (heads[j].n - heads[j - 1].n, j))
        del heads[i]
    return heads
