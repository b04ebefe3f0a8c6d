"""LedgerActor: the one owner of the node's SQLite ledger; every write goes through it as a batch."""

from __future__ import annotations

from pathlib import Path

from thespian.actors import ActorExitRequest, ActorTypeDispatcher

from ledger.store import Ledger
from mesh.errors import LedgerError

from .messages import EntriesRecorded, OpenLedger, PeerStatsQuery, PeerStatsReply, RecordEntries


class LedgerActor(ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self.ledger: Ledger | None = None
        self.error = "ledger not open"

    def receiveMsg_OpenLedger(self, msg: OpenLedger, sender) -> None:
        try:
            self.ledger = Ledger(Path(msg.path))
            self.error = ""
        except LedgerError as exc:
            self.error = str(exc)

    def receiveMsg_RecordEntries(self, msg: RecordEntries, sender) -> None:
        if self.ledger is None:
            self.send(sender, EntriesRecorded(msg.request_id, error=self.error))
            return
        try:
            added = self.ledger.append(msg.entries, msg.ts)
        except LedgerError as exc:
            self.send(sender, EntriesRecorded(msg.request_id, error=str(exc)))
            return
        self.send(sender, EntriesRecorded(msg.request_id, added))

    def receiveMsg_PeerStatsQuery(self, msg: PeerStatsQuery, sender) -> None:
        if self.ledger is None:
            self.send(sender, PeerStatsReply(msg.request_id, {}, error=self.error))
            return
        _, evidence, _ = self.ledger.evidence()
        self.send(sender, PeerStatsReply(msg.request_id, evidence, balance=self.ledger.balance()))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender) -> None:
        if self.ledger is not None:
            self.ledger.close()
