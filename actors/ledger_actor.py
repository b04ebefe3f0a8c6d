"""LedgerActor: the one owner of the node's SQLite ledger. Writes that arrive close together are
group-committed: one transaction (one fsync) for all of them, then each asker gets its own answer."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from thespian.actors import ActorExitRequest, ActorTypeDispatcher, WakeupMessage

from ledger.store import Ledger
from mesh.errors import ConfigError, LedgerError
from mesh.wire.identity import load

from .messages import EntriesRecorded, OpenLedger, PeerStatsQuery, PeerStatsReply, RecordEntries
from .procname import name_process

GROUP_WINDOW = timedelta(milliseconds=2)
GROUP_MAX = 64  # batches per transaction


class LedgerActor(ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        name_process("hm-ledger")
        self.ledger: Ledger | None = None
        self.error = "ledger not open"
        self.queue: list[tuple[object, RecordEntries]] = []  # (asker, batch) awaiting one commit

    def receiveMsg_OpenLedger(self, msg: OpenLedger, sender) -> None:
        try:
            me = load(Path(msg.home)) if msg.home else None  # its key signs the chain's heads
            self.ledger = Ledger(Path(msg.path), signer=me.sign if me else None, node=me.node_id if me else "")
            self.error = ""
        except (LedgerError, ConfigError) as exc:
            self.error = str(exc)

    def receiveMsg_RecordEntries(self, msg: RecordEntries, sender) -> None:
        if self.ledger is None:
            self.send(sender, EntriesRecorded(msg.request_id, error=self.error))
            return
        self.queue.append((sender, msg))
        if len(self.queue) >= GROUP_MAX:
            self._flush()
        elif len(self.queue) == 1:
            self.wakeupAfter(GROUP_WINDOW)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender) -> None:
        self._flush()

    def _flush(self) -> None:
        queue, self.queue = self.queue, []
        if not queue:
            return
        try:
            added = self.ledger.append_batches([(m.entries, m.ts) for _, m in queue])
        except LedgerError as exc:
            for asker, m in queue:
                self.send(asker, EntriesRecorded(m.request_id, error=str(exc)))
            return
        for (asker, m), (n, amount) in zip(queue, added, strict=True):
            self.send(asker, EntriesRecorded(m.request_id, n, amount=amount))

    def receiveMsg_PeerStatsQuery(self, msg: PeerStatsQuery, sender) -> None:
        if self.ledger is None:
            self.send(sender, PeerStatsReply(msg.request_id, {}, error=self.error))
            return
        _, evidence, _ = self.ledger.evidence()
        self.send(sender, PeerStatsReply(msg.request_id, evidence, balance=self.ledger.balance(),
                                         streaks=self.ledger.streaks(), accounts=self.ledger.accounts()))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender) -> None:
        self._flush()
        if self.ledger is not None:
            self.ledger.close()
