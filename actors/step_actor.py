"""StepActor: runs one python replica in the sandbox, in its own process, then is told to exit."""

from __future__ import annotations

from thespian.actors import ActorTypeDispatcher

from mesh.errors import StepFailed
from mesh.sandbox import run_python

from .messages import RunStep, StepDone


class StepActor(ActorTypeDispatcher):
    def receiveMsg_RunStep(self, msg: RunStep, sender) -> None:
        try:
            res = run_python(msg.params["code"], msg.params.get("inputs", {}), msg.timeout, msg.sandboxed)
        except StepFailed as exc:
            self.send(sender, StepDone(msg.request_id, False, error=str(exc)))
            return
        identity = "python:bwrap" if msg.sandboxed else "python:unsandboxed"
        self.send(sender, StepDone(msg.request_id, True, res.output, identity,
                                   {"cpu_s": round(res.cpu_s, 6), "stdout": res.stdout[-2000:],
                                    "stderr": res.stderr[-2000:]}))
