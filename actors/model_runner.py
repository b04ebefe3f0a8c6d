"""ModelRunnerActor: one process holding one loaded GGUF model, so a crash or out-of-memory in
llama.cpp costs this actor (which the NodeActor recreates), never the node."""

from __future__ import annotations

import json
import os
from pathlib import Path

from thespian.actors import ActorTypeDispatcher

from mesh.errors import ModelFileError, StepFailed
from mesh.steps.outputs import depth_error

from .messages import LoadModel, ModelLoaded, RunStep, StepDone, StepProgress
from .procname import name_process


class ModelRunnerActor(ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        name_process("hm-model")
        self.model = None
        self.error = "model not loaded yet"

    def receiveMsg_LoadModel(self, msg: LoadModel, sender) -> None:
        from mesh.steps.cgroup import join_cpu_cap
        from mesh.steps.llm import Model

        try:
            join_cpu_cap(msg.cap)  # (before the model's threads start: they inherit the group)
            self.model = Model(Path(msg.path), msg.sha256, msg.n_threads or None)
            self.error = ""
        except (ValueError, OSError, RuntimeError, ModelFileError) as exc:
            self.error = f"cannot load model {msg.path}: {exc}"
        self.send(sender, ModelLoaded(msg.sha256, self.error, os.getpid()))

    def receiveMsg_RunStep(self, msg: RunStep, sender) -> None:
        if self.model is None:
            self.send(sender, StepDone(msg.request_id, False, error=self.error))
            return
        p = msg.params
        if msg.kind == "score":
            try:
                if float(p.get("temperature", 0)) > 0:  # a seeded draw: replayed on the same seed
                    v = self.model.verify_sampled(p["prompt"], list(p["token_ids"]), float(p["temperature"]),
                                                  int(p.get("seed", 0)), list(p.get("stop", [])),
                                                  int(p.get("max_tokens", 64)), claim=p["claim"])
                else:
                    v = self.model.verify(p["prompt"], list(p["token_ids"]), claim=p["claim"])
            except StepFailed as exc:  # e.g. the claim does not fit the context: a failure, not a rejection
                self.send(sender, StepDone(msg.request_id, False, error=str(exc)))
                return
            work = {"tokens": v.tokens, "prompt_tokens": self.model.prompt_tokens(p["prompt"]),  # (read too: paid)
                    "seconds": round(v.seconds, 4)}
            self.send(sender, StepDone(msg.request_id, True, {"accepted": v.ok, "first_bad": v.first_bad},
                                       f"gguf:{self.model.sha256}", work))
            return
        def progress(n: int, text: str) -> None:
            if msg.cancel_file and os.path.exists(msg.cancel_file):  # its requester is gone or gave it up
                raise StepFailed("llm step cancelled")
            self.send(sender, StepProgress(msg.request_id, n, text))

        try:
            gen = self.model.generate(p["prompt"], int(p.get("max_tokens", 64)), int(p.get("seed", 0)),
                                      list(p.get("stop", [])), float(p.get("temperature", 0)), p.get("json_schema"),
                                      progress)
        except StepFailed as exc:
            self.send(sender, StepDone(msg.request_id, False, error=str(exc)))
            return
        output: object = gen.text
        if p.get("json_schema") is not None:  # the grammar made it JSON: hand on the value, not its text
            try:
                output = json.loads(gen.text)
            except (ValueError, RecursionError):
                self.send(sender, StepDone(msg.request_id, False, error="the model's output is not complete JSON "
                                           "(raise max_tokens?)"))
                return
        deep = depth_error(output)
        if deep:  # (a json_object answer of 2,048 tokens may be 1,000 brackets deep)
            self.send(sender, StepDone(msg.request_id, False, error=deep))
            return
        self.send(sender, StepDone(msg.request_id, True, output, f"gguf:{self.model.sha256}",
                                   {"tokens": gen.tokens, "prompt_tokens": gen.prompt_tokens,
                                    "seconds": round(gen.seconds, 4), "token_ids": list(gen.token_ids)}))
