"""StepActor: runs python replicas in the sandbox, in its own process, one sandbox a step. The NodeActor
keeps a couple of them warm: told WarmUp, one starts its sandbox ahead of the step, so the step does not
wait for namespaces, cgroups and the interpreter to start; after a step it is told WarmUp again (a fresh
sandbox for the next step) or to exit (NodeActor._done_with)."""

from __future__ import annotations

import os
import time

from thespian.actors import ActorExitRequest, ActorTypeDispatcher

from mesh.errors import LimitHit, StepFailed
from mesh.steps.sandbox import Sandbox

from .messages import RunStep, StepDone, WarmUp
from .procname import name_process


class StepActor(ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        name_process("hm-step")
        self.sandbox: Sandbox | None = None

    def receiveMsg_WarmUp(self, msg: WarmUp, sender) -> None:
        try:
            self.sandbox = Sandbox(msg.sandboxed, msg.user, msg.cap)
        except StepFailed:
            self.sandbox = None  # the step will start its own, and fail with the reason then

    def receiveMsg_RunStep(self, msg: RunStep, sender) -> None:
        box, self.sandbox = self.sandbox, None
        try:
            if box is None or box.sandboxed != msg.sandboxed or box.user != msg.user or not box.alive() \
                    or box.group.cap != msg.cap:
                if box is not None:
                    box.close()
                box = Sandbox(msg.sandboxed, msg.user, msg.cap)
            began = time.monotonic()
            res = box.run(msg.params["code"], msg.params.get("inputs", {}), msg.timeout, msg.memory,
                          (lambda: os.path.exists(msg.cancel_file)) if msg.cancel_file else None)
        except StepFailed as exc:
            self.send(sender, StepDone(msg.request_id, False, error=str(exc), limit=isinstance(exc, LimitHit)))
            return
        identity = "python:bwrap" if msg.sandboxed else "python:unsandboxed"
        self.send(sender, StepDone(msg.request_id, True, res.output, identity,
                                   {"cpu_s": round(res.cpu_s, 6), "peak_mb": round(res.peak_mb, 1),
                                    "seconds": round(time.monotonic() - began, 4),  # the slot held: paid as rent
                                    "stdout": res.stdout[-2000:],
                                    "stderr": res.stderr[-2000:]}))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None
