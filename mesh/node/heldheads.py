"""Signed ledger heads this node keeps for its peers. A node signs its chain's head (ledger/heads.py), but
whoever holds its disk holds its key too and can sign a rewritten history again; heads held by other
nodes cannot be taken back. Each node gives its latest head to a few peers (`Node._share_head`); they
keep the last few of each owner here, and hand them back when the owner asks (`mesh ledger verify
--peers`), so a ledger cut short or rebuilt no longer matches what its peers hold.

Everything here came from a peer: a head is kept only when its signature verifies with the sender's own
key, its count never goes down, one sender may store one head per MIN_GAP_S, and at most MAX_OWNERS
owners are kept (the least recently updated forgotten first), at most PER_PREFIX of one network prefix."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from pathlib import Path

from ledger.heads import head_bytes
from mesh.errors import Rejected
from mesh.node.home import write_private
from mesh.wire.identity import node_id_of, verify
from mesh.wire.messages import LedgerHead

log = logging.getLogger("mesh.node.heldheads")

HELD_FILE = "held-heads.json"
KEEP_PER_OWNER = 4  # the latest heads of one owner kept (a rewrite before any of them still shows)
MAX_OWNERS = 1024
# owners one network prefix may have here: 1,091 fresh keys from one machine pushed every other owner out
PER_PREFIX = 16
MIN_GAP_S = 5.0  # an owner shares a new head every 10 s at most; more often is a peer spending our CPU


class HeldHeads:
    def __init__(self, home: Path):
        self.path = home / HELD_FILE
        self.owners: OrderedDict[str, list[LedgerHead]] = OrderedDict()  # owner key hex → heads, oldest first
        self.last: dict[str, float] = {}  # owner key hex → when it last stored one (monotonic)
        self.prefix: dict[str, str] = {}  # owner key hex → the network prefix it last gave a head from (not saved)
        self.dirty = False

    def take(self, owner: bytes, head: LedgerHead, now: float, prefix: str = "") -> str:
        """Keep `owner`'s own signed `head`, from the network `prefix` its link comes from: '' when kept,
        else why not (a counter key)."""
        key = owner.hex()
        if now < self.last.get(key, -MIN_GAP_S) + MIN_GAP_S:
            return "head-rate"
        held = self.owners.get(key, [])
        if held and head.n <= held[-1].n:
            return "" if head == held[-1] else "head-regressed"
        try:
            good = verify(owner, bytes.fromhex(head.sig), head_bytes(node_id_of(owner), head.n, head.hash))
        except ValueError:
            good = False
        if not good:
            return "bad-head"
        self.last[key] = now
        self.owners.pop(key, None)
        self.owners[key] = (held + [head])[-KEEP_PER_OWNER:]
        self.prefix[key] = prefix
        same = [k for k in self.owners if self.prefix.get(k) == prefix]  # (least recently updated first)
        for gone in same[:max(0, len(same) - PER_PREFIX)]:
            self._drop(gone)
        while len(self.owners) > MAX_OWNERS:
            self._drop(next(iter(self.owners)))
        self.dirty = True
        return ""

    def _drop(self, key: str) -> None:
        self.owners.pop(key, None)
        self.last.pop(key, None)
        self.prefix.pop(key, None)

    def of(self, owner: bytes) -> list[LedgerHead]:
        return list(self.owners.get(owner.hex(), []))

    def save(self) -> None:
        """On disk when something changed (each heartbeat at most): a restarted holder still has them."""
        if not self.dirty:
            return
        data = {k: [[h.n, h.hash, h.sig] for h in v] for k, v in self.owners.items()}
        write_private(self.path, json.dumps(data))  # in order: least recently updated first
        self.dirty = False

    def load(self) -> None:
        """Read what was saved; a damaged file costs only what does not parse (it is our own file, but
        its heads are still peers' claims, checked again when handed back)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(data, dict):
            return
        for key, heads in list(data.items())[-MAX_OWNERS:]:
            try:
                bytes.fromhex(key)
                self.owners[key] = [LedgerHead(int(n), str(h), str(s)) for n, h, s in heads][-KEEP_PER_OWNER:]
            except (ValueError, TypeError, Rejected):
                log.warning("%s: a held head of %s does not parse: skipped", self.path.name, key[:12])
