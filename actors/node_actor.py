"""NodeActor: the supervisor of a node's workers. It routes work to the ModelRunnerActor, a StepActor
per python replica and the LedgerActor, answers the asker when they reply, and when a child dies it
fails the questions that child held (never leaving them hanging) and recreates long-lived children."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from thespian.actors import ActorExitRequest, ActorTypeDispatcher, ChildActorExited, PoisonMessage

from mesh.errors import ConfigError

from .messages import (
    EntriesRecorded,
    LoadModel,
    ModelLoaded,
    NodeConfig,
    NodeReady,
    OpenLedger,
    PeerStatsQuery,
    PeerStatsReply,
    RecordEntries,
    RunStep,
    StepDone,
)

log = logging.getLogger("mesh.node_actor")
MAX_RUNNER_RESTARTS = 20  # past this a node stops offering llm steps instead of crash-looping


@dataclass
class _Pending:
    asker: object
    child: object
    message: object


def _failure(msg: object, reason: str) -> object:
    """The reply that tells an asker its question died with the child holding it."""
    if isinstance(msg, RunStep):
        return StepDone(msg.request_id, False, error=reason)
    if isinstance(msg, RecordEntries):
        return EntriesRecorded(msg.request_id, error=reason)
    return PeerStatsReply(msg.request_id, {}, error=reason)


class NodeActor(ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self.config: NodeConfig | None = None
        self.ledger = None
        self.runner = None
        self.model: LoadModel | None = None
        self.model_error = ""
        self.pending: dict[str, _Pending] = {}
        self.ready_asker = None
        self.runner_restarts = 0

    # -- set-up --------------------------------------------------------------------------------------
    def receiveMsg_NodeConfig(self, msg: NodeConfig, sender) -> None:
        self.config = msg
        self._spawn_ledger()
        models: list[str] = []
        if msg.load_model:
            from mesh.models import default_model

            try:
                path, sha = (msg.model_path, msg.model_sha256) if msg.model_path else default_model()
            except ConfigError as exc:
                self.model_error = str(exc)
            else:
                self.model = LoadModel(str(path), sha, msg.n_threads)
                self._spawn_runner()
                self.ready_asker = sender  # answered once the model is loaded: ready means ready
                return
        self.send(sender, NodeReady(models, self.model_error))

    def _spawn_ledger(self) -> None:
        from .ledger_actor import LedgerActor

        self.ledger = self.createActor(LedgerActor)
        self.send(self.ledger, OpenLedger(self.config.ledger_path))

    def _spawn_runner(self) -> None:
        from .model_runner import ModelRunnerActor

        self.runner = self.createActor(ModelRunnerActor)
        self.send(self.runner, self.model)

    # -- routing -------------------------------------------------------------------------------------
    def receiveMsg_RunStep(self, msg: RunStep, sender) -> None:
        if msg.kind == "llm":
            if self.runner is None:
                self.send(sender, StepDone(msg.request_id, False, error=self.model_error or "no model on this node"))
                return
            child = self.runner
        elif msg.kind == "python":
            from .step_actor import StepActor

            child = self.createActor(StepActor)
        else:
            self.send(sender, StepDone(msg.request_id, False, error=f"unknown step kind {msg.kind!r}"))
            return
        self._forward(msg, sender, child)

    def receiveMsg_RecordEntries(self, msg: RecordEntries, sender) -> None:
        self._forward(msg, sender, self.ledger)

    def receiveMsg_PeerStatsQuery(self, msg: PeerStatsQuery, sender) -> None:
        self._forward(msg, sender, self.ledger)

    def _forward(self, msg, asker, child) -> None:
        self.pending[msg.request_id] = _Pending(asker, child, msg)
        self.send(child, msg)

    def _answer(self, msg) -> None:
        p = self.pending.pop(msg.request_id, None)
        if p is None:
            return
        self.send(p.asker, msg)
        if isinstance(p.message, RunStep) and p.message.kind == "python":
            self.send(p.child, ActorExitRequest())

    def receiveMsg_StepDone(self, msg: StepDone, sender) -> None:
        self._answer(msg)

    receiveMsg_EntriesRecorded = receiveMsg_PeerStatsReply = receiveMsg_StepDone

    def receiveMsg_ModelLoaded(self, msg: ModelLoaded, sender) -> None:
        if msg.error:
            log.warning("model %s failed to load: %s", msg.sha256[:12], msg.error)
            self.model_error, self.model, self.runner = msg.error, None, None
            self.send(sender, ActorExitRequest())  # harmless if the runner is already gone
        if self.ready_asker is not None:
            self.send(self.ready_asker, NodeReady([] if msg.error else [msg.sha256], msg.error))
            self.ready_asker = None

    # -- supervision ---------------------------------------------------------------------------------
    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender) -> None:
        child = msg.childAddress
        for rid, p in list(self.pending.items()):
            if p.child == child:
                del self.pending[rid]
                self.send(p.asker, _failure(p.message, "the worker process died while running it"))
        if child == self.runner and self.model is not None:
            self.runner_restarts += 1
            if self.ready_asker is not None or self.runner_restarts > MAX_RUNNER_RESTARTS:
                why = "the model runner died while loading the model" if self.ready_asker is not None else \
                    f"the model runner died {self.runner_restarts} times"
                self.receiveMsg_ModelLoaded(ModelLoaded(self.model.sha256, why + " (see actors.log)"), child)
                return
            log.warning("model runner exited; starting a new one")
            self._spawn_runner()
        elif child == self.ledger and self.config is not None:
            log.warning("ledger actor exited; starting a new one")
            self._spawn_ledger()

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender) -> None:
        inner = msg.poisonMessage
        rid = getattr(inner, "request_id", None)
        p = self.pending.pop(rid, None) if rid else None
        if p is not None:
            self.send(p.asker, _failure(p.message, f"internal error: {msg.details}"[:500]))

    def receiveUnrecognizedMessage(self, msg, sender) -> None:
        if not isinstance(msg, ActorExitRequest):
            log.warning("NodeActor ignored %s", type(msg).__name__)
