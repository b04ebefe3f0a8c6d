"""NodeActor: the supervisor of a node's workers. It routes work to the ModelRunnerActor, a StepActor
per python replica and the LedgerActor, answers the asker when they reply, and when a child dies it
fails the questions that child held (never leaving them hanging) and recreates long-lived children."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from dataclasses import dataclass
from datetime import timedelta

from thespian.actors import (
    ActorExitRequest,
    ActorTypeDispatcher,
    ChildActorExited,
    PoisonMessage,
    WakeupMessage,
)

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
    StepProgress,
    WarmUp,
)
from .procname import name_process

log = logging.getLogger("mesh.node_actor")
MAX_RUNNER_RESTARTS = 20  # past this a node stops offering llm steps instead of crash-looping
# A model runner still on a step this long past the step's timeout is stuck in llama.cpp (it checks its time
# and its cancel flag between tokens, so a token that never ends sees neither): it is killed and replaced.
# Less than the worker's own ACTOR_GRACE_S, so the step fails saying why, not "no answer".
OVERDUE_S = 8.0
WARM_SANDBOXES = 2  # python sandboxes started ahead of the steps that will use them
STEPS_PER_ACTOR = 200  # python steps one StepActor runs (each in a sandbox of its own) before it is replaced


Question = RunStep | RecordEntries | PeerStatsQuery  # what the NodeActor forwards and answers for
Answer = StepDone | EntriesRecorded | PeerStatsReply


@dataclass
class _Pending:
    asker: object  # Thespian actor addresses
    child: object
    message: Question


def _failure(msg: Question, reason: str) -> Answer:
    """The reply that tells an asker its question died with the child holding it."""
    if isinstance(msg, RunStep):
        return StepDone(msg.request_id, False, error=reason)
    if isinstance(msg, RecordEntries):
        return EntriesRecorded(msg.request_id, error=reason)
    return PeerStatsReply(msg.request_id, {}, error=reason)


def _python(msg: object) -> bool:
    """Whether a forwarded question is a python step (run by a StepActor)."""
    return isinstance(msg, RunStep) and msg.kind == "python"


class NodeActor(ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        name_process("hm-node-actor")
        self.config: NodeConfig | None = None
        self.ledger = None
        self.runners: dict[str, object] = {}  # model sha256 → its ModelRunnerActor (one per model)
        self.loads: dict[str, LoadModel] = {}  # models this node serves (loaded or loading)
        self.loading: set[str] = set()
        self.loaded: list[str] = []
        self.default_sha = ""
        self.model_error = ""
        self.pending: dict[str, _Pending] = {}
        self.ready_asker = None
        self.load_askers: dict[str, list] = {}  # model sha256 → who asked for it to be served now (LoadModel)
        self.restarts: dict[str, int] = {}
        self.runner_pids: dict[str, int] = {}  # model sha256 → its runner's process (from its ModelLoaded)
        self.stopped: set[str] = set()  # runners this actor killed as stuck: replaced, not counted as deaths
        self.timed: set[str] = set()  # model steps whose runner's time is being watched (_time_head)
        self.warm: list = []  # StepActors with a sandbox already started, waiting for a python step
        self.steps_run: dict[str, int] = {}  # str(StepActor address) → python steps it ran (see _done_with)
        self.can_sandbox = False  # bwrap is here (looked up once)

    # -- set-up --------------------------------------------------------------------------------------
    def receiveMsg_NodeConfig(self, msg: NodeConfig, sender) -> None:
        from mesh.steps.sandbox import bwrap_path

        self.config = msg
        self.can_sandbox = bwrap_path() is not None
        self._spawn_ledger()
        self._warm_up()
        if msg.load_model:
            from mesh.steps.models import default_model

            try:
                path, sha = (msg.model_path, msg.model_sha256) if msg.model_path else default_model()
            except ConfigError as exc:
                self.model_error = str(exc)
            else:
                self.default_sha = sha
                self.loads[sha] = LoadModel(str(path), sha, msg.n_threads, msg.cap)
        for path, sha in msg.extra_models:
            self.loads.setdefault(sha, LoadModel(path, sha, msg.n_threads, msg.cap))
        if not self.loads:
            self.send(sender, NodeReady([], self.model_error))
            return
        self.ready_asker = sender  # answered once every model is loaded (or failed): ready means ready
        for sha in self.loads:
            self.loading.add(sha)
            self._spawn_runner(sha)

    def _warm_up(self) -> None:
        """Keep WARM_SANDBOXES step actors with a started sandbox (only where bwrap exists), counting those
        running a sandboxed step: each comes back warm once its step is done (_done_with)."""
        from .step_actor import StepActor

        returning = sum(1 for p in self.pending.values() if _python(p.message) and p.message.sandboxed)
        while self.can_sandbox and len(self.warm) + returning < WARM_SANDBOXES:
            actor = self.createActor(StepActor)
            self.send(actor, WarmUp(True, self.config.step_user, self.config.cap))
            self.warm.append(actor)

    def _spawn_ledger(self) -> None:
        from .ledger_actor import LedgerActor

        self.ledger = self.createActor(LedgerActor)
        self.send(self.ledger, OpenLedger(self.config.ledger_path, self.config.home))

    def receiveMsg_LoadModel(self, msg: LoadModel, sender) -> None:
        """Serve one more model now (one fetched from peers): answered with ModelLoaded once its runner
        has it (or could not)."""
        if msg.sha256 in self.loads and msg.sha256 not in self.loading:
            self.send(sender, ModelLoaded(msg.sha256, "" if msg.sha256 in self.loaded else "not loaded"))
            return
        self.load_askers.setdefault(msg.sha256, []).append(sender)
        if msg.sha256 not in self.loads:
            self.loads[msg.sha256] = LoadModel(msg.path, msg.sha256, msg.n_threads or self.config.n_threads,
                                               self.config.cap)
            self.loading.add(msg.sha256)
            self._spawn_runner(msg.sha256)

    def _spawn_runner(self, sha: str) -> None:
        from .model_runner import ModelRunnerActor

        self.runners[sha] = self.createActor(ModelRunnerActor)
        self.send(self.runners[sha], dataclasses.replace(self.loads[sha], user=self.config.step_user))

    # -- routing -------------------------------------------------------------------------------------
    def receiveMsg_RunStep(self, msg: RunStep, sender) -> None:
        if msg.kind in ("llm", "score"):
            model = msg.params.get("model", "default")
            sha = self.default_sha if model == "default" else model
            child = self.runners.get(sha)
            if child is None or sha in self.loading:
                why = self.model_error if model == "default" and self.model_error else f"model {sha[:12]} not loaded here"
                self.send(sender, StepDone(msg.request_id, False, error=why or "no model on this node"))
                return
        elif msg.kind == "python":
            from .step_actor import StepActor

            child = self.warm.pop(0) if self.warm and msg.sandboxed else self.createActor(StepActor)
            msg = dataclasses.replace(msg, user=self.config.step_user, cap=self.config.cap)
        else:
            self.send(sender, StepDone(msg.request_id, False, error=f"unknown step kind {msg.kind!r}"))
            return
        self._forward(msg, sender, child)
        if msg.kind == "python":
            self._warm_up()

    def receiveMsg_RecordEntries(self, msg: RecordEntries, sender) -> None:
        self._forward(msg, sender, self.ledger)

    def receiveMsg_PeerStatsQuery(self, msg: PeerStatsQuery, sender) -> None:
        self._forward(msg, sender, self.ledger)

    def _forward(self, msg: Question, asker, child) -> None:
        self.pending[msg.request_id] = _Pending(asker, child, msg)
        self.send(child, msg)
        self._time_head(child)

    def _time_head(self, child) -> None:
        """A model runner takes its steps one at a time, in the order sent: the first one pending on it is
        the one it runs, and its time counts from now (from when the one before it was answered)."""
        head = next((rid for rid, p in self.pending.items() if p.child == child), None)
        step = self.pending[head].message if head else None
        if isinstance(step, RunStep) and step.kind in ("llm", "score") and head not in self.timed:
            self.timed.add(head)
            self.wakeupAfter(timedelta(seconds=max(0.0, step.timeout) + OVERDUE_S), payload=head)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender) -> None:
        """A model step's time and OVERDUE_S have passed since its runner took it up: if the runner still
        holds it, the runner is stuck. A json_schema pattern of 317 bytes kept runners on one token for good,
        and every later llm step on that worker failed (found by this project's attack round on llm steps,
        2026-12-06)."""
        self.timed.discard(msg.payload)
        p = self.pending.get(msg.payload) if isinstance(msg.payload, str) else None
        if p is None:  # answered in time
            return
        sha = next((s for s, r in self.runners.items() if r == p.child), None)
        pid = self.runner_pids.get(sha or "")
        if not pid:
            return
        log.warning("model runner of %s is stuck on a step %g s past its timeout: killing it", sha[:12], OVERDUE_S)
        del self.pending[msg.payload]
        self.send(p.asker, _failure(p.message, f"the model runner was still on the step {OVERDUE_S:g} s past its "
                                               "timeout, and was stopped"))
        self.stopped.add(sha)
        self.runner_pids.pop(sha, None)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it exited meanwhile: ChildActorExited replaces it all the same
            pass

    def _answer(self, msg: Answer) -> None:
        p = self.pending.pop(msg.request_id, None)
        if p is None:
            return
        self.timed.discard(msg.request_id)
        self.send(p.asker, msg)
        if _python(p.message):
            self._done_with(p.child, p.message)
        else:
            self._time_head(p.child)  # the runner takes up its next step now

    def _done_with(self, child, step: RunStep) -> None:
        """A StepActor answered its python step: it starts a fresh sandbox and waits for the next one while
        fewer than WARM_SANDBOXES wait (up to STEPS_PER_ACTOR steps), else it exits. A new actor for every
        step forked this process and set up a Thespian actor each time, on every step's path."""
        key = str(child)
        ran = self.steps_run.pop(key, 0) + 1
        if step.sandboxed and self.can_sandbox and len(self.warm) < WARM_SANDBOXES and ran < STEPS_PER_ACTOR:
            self.steps_run[key] = ran
            self.send(child, WarmUp(True, self.config.step_user, self.config.cap))
            self.warm.append(child)
        else:
            self._retire(child)  # (one that ran its STEPS_PER_ACTOR is replaced)

    def _retire(self, child) -> None:
        """A StepActor not kept for another step: told to exit, and the warm ones topped up."""
        self.steps_run.pop(str(child), None)
        self.send(child, ActorExitRequest())
        self._warm_up()

    def receiveMsg_StepDone(self, msg: StepDone, sender) -> None:
        self._answer(msg)

    def receiveMsg_StepProgress(self, msg: StepProgress, sender) -> None:
        p = self.pending.get(msg.request_id)
        if p is not None:  # the question stays open: only StepDone answers it
            self.send(p.asker, msg)

    receiveMsg_EntriesRecorded = receiveMsg_PeerStatsReply = receiveMsg_StepDone

    def receiveMsg_ModelLoaded(self, msg: ModelLoaded, sender) -> None:
        self.loading.discard(msg.sha256)
        if msg.pid and not msg.error and self.runners.get(msg.sha256) == sender:
            self.runner_pids[msg.sha256] = msg.pid
        if msg.error:
            log.warning("model %s failed to load: %s", msg.sha256[:12], msg.error)
            self.loads.pop(msg.sha256, None)
            self.runners.pop(msg.sha256, None)
            if msg.sha256 == self.default_sha:
                self.model_error = msg.error
            self.send(sender, ActorExitRequest())  # harmless if the runner is already gone
        elif msg.sha256 not in self.loaded:
            self.loaded.append(msg.sha256)
        for asker in self.load_askers.pop(msg.sha256, []):
            self.send(asker, ModelLoaded(msg.sha256, msg.error))
        if self.ready_asker is not None and not self.loading:
            errors = self.model_error or ("" if self.loaded else msg.error)
            self.send(self.ready_asker, NodeReady(list(self.loaded), errors))
            self.ready_asker = None

    # -- supervision ---------------------------------------------------------------------------------
    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender) -> None:
        child = msg.childAddress
        for rid, p in list(self.pending.items()):
            if p.child == child:
                del self.pending[rid]
                self.send(p.asker, _failure(p.message, "the worker process died while running it"))
        self.steps_run.pop(str(child), None)
        if child in self.warm:  # a warm step actor died before its step: start another
            self.warm.remove(child)
            self._warm_up()
            return
        sha = next((s for s, r in self.runners.items() if r == child), None)
        if sha is not None and sha in self.stopped and sha in self.loads:  # killed as stuck: not a death
            self.stopped.discard(sha)
            log.warning("model runner of %s stopped; starting a new one", sha[:12])
            self._spawn_runner(sha)
        elif sha is not None and sha in self.loads:
            self.runner_pids.pop(sha, None)
            self.restarts[sha] = self.restarts.get(sha, 0) + 1
            if sha in self.loading or self.restarts[sha] > MAX_RUNNER_RESTARTS:
                why = "the model runner died while loading the model" if sha in self.loading else \
                    f"the model runner died {self.restarts[sha]} times"
                if sha in self.loaded:
                    self.loaded.remove(sha)
                self.receiveMsg_ModelLoaded(ModelLoaded(sha, why + " (see actors.log)"), child)
                return
            log.warning("model runner of %s exited; starting a new one", sha[:12])
            self._spawn_runner(sha)
        elif child == self.ledger and self.config is not None:
            log.warning("ledger actor exited; starting a new one")
            self._spawn_ledger()

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender) -> None:
        inner = msg.poisonMessage
        rid = getattr(inner, "request_id", None)
        p = self.pending.pop(rid, None) if rid else None
        if p is not None:
            self.send(p.asker, _failure(p.message, f"internal error: {msg.details}"[:500]))
            if _python(p.message):  # not kept for another step
                self._retire(p.child)

    def receiveUnrecognizedMessage(self, msg, sender) -> None:
        if not isinstance(msg, ActorExitRequest):
            log.warning("NodeActor ignored %s", type(msg).__name__)
