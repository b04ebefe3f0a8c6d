"""ModelRunnerActor: one actor per GGUF model, relaying its steps to the confined process that holds the
model (mesh.steps.model_worker, named hm-model), so a crash or out-of-memory in llama.cpp costs that
model's processes (which the NodeActor recreates), never the node.

llama.cpp runs in the worker process, not here: this actor speaks Thespian, and Thespian's ports unpickle
whatever reaches them, so code that a stranger's prompt or GGUF file got running in a process with a socket
to the NodeActor would be root again with one pickle. The worker has no socket (its seccomp filter refuses
them), drops root, cannot exec and (Landlock) can open no file but its model; this actor reads its answers
as untrusted input: bounded lines of JSON, every field type-checked. A worker that dies or answers out of
protocol takes this actor with it (os._exit), which is what the NodeActor already handles: the step held
fails ("the worker process died while running it") and a new runner is started."""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

from thespian.actors import ActorExitRequest, ActorTypeDispatcher

from mesh.errors import StepFailed
from mesh.steps.outputs import depth_error
from mesh.steps.stepuser import NOBODY, running_as_root

from .messages import LoadModel, ModelLoaded, RunStep, StepDone, StepProgress
from .procname import name_process

log = logging.getLogger("mesh.model_runner")
MAX_LINE = 32 << 20  # bytes of one answer from the worker (a full context of text is far below)
MAX_LOG_LINES = 1000  # of the worker's stderr forwarded to the log, per runner


class WorkerGone(RuntimeError):
    """The model worker exited, or answered out of protocol (then it is killed)."""


class ModelWorker:
    """The confined model process, seen from its actor: one request at a time, answers read as untrusted."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.bufs = {proc.stdout.fileno(): b"", proc.stderr.fileno(): b""}
        self.closed: set[int] = set()  # of those two, the ones at their end
        self.logged = 0
        self.sha256 = ""

    @classmethod
    def start(cls, msg: LoadModel) -> tuple[ModelWorker, list[str]]:
        """Start the worker and have it load `msg`'s model and confine itself; its notes (what confinement
        could not apply here) back. StepFailed with the worker's reason when it could not load."""
        import mesh

        root = str(Path(mesh.__file__).resolve().parent.parent)  # (this node's code, wherever it runs from)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.Popen([sys.executable, "-m", "mesh.steps.model_worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, close_fds=True,
                                cwd=root)  # (`-m` puts its cwd first on sys.path: the node's own code, no other)
        worker = cls(proc)
        worker.sha256 = msg.sha256
        user = msg.user or (NOBODY if running_as_root() else None)  # (a node always says; tests may not)
        worker.write(json.dumps({"path": os.path.abspath(msg.path), "sha256": msg.sha256, "n_threads": msg.n_threads,
                                 "uid": user.uid if user else 0, "gid": user.gid if user else 0}))
        answer = worker.read()
        if isinstance(answer.get("error"), str):
            worker.end()
            raise StepFailed(answer["error"])
        notes = answer.get("notes")
        if not isinstance(answer.get("loaded"), int) or not isinstance(notes, list):
            raise worker.fault("a malformed answer to loading")
        return worker, [str(n) for n in notes]

    def write(self, line: str) -> None:
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise WorkerGone(f"the model worker exited ({self.proc.poll()})") from None

    def read(self) -> dict[str, Any]:
        """The worker's next answer (a JSON object), forwarding its stderr lines to the log meanwhile."""
        out, err = self.proc.stdout.fileno(), self.proc.stderr.fileno()
        while True:
            while b"\n" in self.bufs[err]:
                line, self.bufs[err] = self.bufs[err].split(b"\n", 1)
                self._log(line)
            if b"\n" in self.bufs[out]:
                line, self.bufs[out] = self.bufs[out].split(b"\n", 1)
                if len(line) > MAX_LINE:
                    raise self.fault(f"a line over {MAX_LINE} bytes")
                try:
                    answer = json.loads(line)
                except (ValueError, RecursionError):
                    answer = None
                if not isinstance(answer, dict):
                    raise self.fault("an answer that is not a JSON object")
                return answer
            if len(self.bufs[out]) > MAX_LINE or len(self.bufs[err]) > MAX_LINE:
                raise self.fault(f"a line over {MAX_LINE} bytes")
            ready, _, _ = select.select([fd for fd in (out, err) if fd not in self.closed], [], [])
            for fd in ready:
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    self.bufs[fd] += chunk
                    continue
                self.closed.add(fd)
                self._log(self.bufs[err])  # (a last line without its newline)
                self.bufs[err] = b""
                if fd == out:
                    raise WorkerGone(f"the model worker exited ({self.end()})")

    def end(self) -> int:
        """Stop the worker (if it still runs) and reap it: its exit status."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()

    def _log(self, line: bytes) -> None:
        if line.strip() and self.logged < MAX_LOG_LINES:
            self.logged += 1
            log.info("model worker %s: %s", self.sha256[:12], line.decode("utf-8", "replace")[:2000])

    def fault(self, what: str) -> WorkerGone:
        """Kill a worker that left the protocol (a bug, or code it should never have run)."""
        self.end()
        return WorkerGone(f"the model worker sent {what}; it was killed")

    def call(self, op: str, params: dict[str, Any], on_progress=None) -> dict[str, Any]:
        """One step in the worker: its result; StepFailed with the step's own failure. `on_progress(n,
        text)` is called at each progress report and may raise StepFailed to cancel the step."""
        self.write(json.dumps({"op": op, "params": params}))
        while True:
            answer = self.read()
            if "progress" not in answer:
                break
            n, text = _progress(answer["progress"])
            if n is None:
                raise self.fault("a malformed progress report")
            try:
                if on_progress is not None:
                    on_progress(n, text)
            except StepFailed:
                self.write("stop")  # (it answers with the step's failure: "llm step cancelled")
            else:
                self.write("go")
        if isinstance(answer.get("failed"), str):
            raise StepFailed(answer["failed"])
        if isinstance(answer.get("crash"), str):  # a fault in the step's code: PoisonMessage, as before
            raise RuntimeError(f"model worker: {answer['crash']}")
        done = answer.get("done")
        if not _shaped(done, SHAPES[op]):
            raise self.fault(f"a malformed {op} result")
        return done


def _progress(value: object) -> tuple[int | None, str]:
    if isinstance(value, list) and len(value) == 2 and type(value[0]) is int and isinstance(value[1], str):
        return value[0], value[1]
    return None, ""


_NUMBER = (int, float)
SHAPES: dict[str, dict[str, Any]] = {
    "generate": {"text": str, "tokens": int, "prompt_tokens": int, "seconds": _NUMBER, "token_ids": list},
    "score": {"accepted": bool, "first_bad": int, "tokens": int, "prompt_tokens": int, "seconds": _NUMBER},
}


def _shaped(done: object, shape: dict[str, Any]) -> bool:
    """Whether a worker's result has exactly these fields of these types (token ids: ints)."""
    if not isinstance(done, dict) or set(done) != set(shape):
        return False
    if not all(isinstance(done[k], t) for k, t in shape.items()):
        return False
    return all(type(t) is int for t in done.get("token_ids", ()))


class ModelRunnerActor(ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        name_process("hm-model-actor")
        self.model: ModelWorker | None = None
        self.error = "model not loaded yet"

    def receiveMsg_LoadModel(self, msg: LoadModel, sender) -> None:
        from mesh.steps.cgroup import join_cpu_cap

        if self.model is not None:  # one runner, one model: the NodeActor starts a runner per model
            self.send(sender, ModelLoaded(msg.sha256, "this runner already holds a model", os.getpid()))
            return
        try:
            join_cpu_cap(msg.cap)  # (before the worker starts: it, and llama.cpp's threads, inherit the group)
            self.model, notes = ModelWorker.start(msg)
            self.error = ""
            for note in notes:
                log.warning("model %s: %s", msg.sha256[:12], note)
        except (OSError, StepFailed) as exc:
            self.error = f"cannot load model {msg.path}: {exc}"
        except WorkerGone as exc:
            self._gone(exc)
        self.send(sender, ModelLoaded(msg.sha256, self.error, os.getpid()))

    def _gone(self, exc: WorkerGone) -> None:
        """The worker died (llama.cpp crashed, ran out of memory, was killed) or left the protocol: this
        actor exits too, as it did when llama.cpp ran in it, and the NodeActor fails the step it held and
        starts a new runner."""
        log.warning("model runner: %s", exc)
        logging.shutdown()
        os._exit(3)

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender) -> None:
        if self.model is not None:  # (PR_SET_PDEATHSIG covers an actor killed instead)
            self.model.end()

    def receiveMsg_RunStep(self, msg: RunStep, sender) -> None:
        if self.model is None:
            self.send(sender, StepDone(msg.request_id, False, error=self.error))
            return
        try:
            self._run(msg, sender)
        except WorkerGone as exc:
            self._gone(exc)

    def _run(self, msg: RunStep, sender) -> None:
        p = msg.params
        if msg.kind == "score":
            try:
                v = self.model.call("score", p)
            except StepFailed as exc:  # e.g. the claim does not fit the context: a failure, not a rejection
                self.send(sender, StepDone(msg.request_id, False, error=str(exc)))
                return
            work = {"tokens": v["tokens"], "prompt_tokens": v["prompt_tokens"],  # (read too: paid)
                    "seconds": round(v["seconds"], 4)}
            self.send(sender, StepDone(msg.request_id, True, {"accepted": v["accepted"], "first_bad": v["first_bad"]},
                                       f"gguf:{self.model.sha256}", work))
            return

        def progress(n: int, text: str) -> None:
            if msg.cancel_file and os.path.exists(msg.cancel_file):  # its requester is gone or gave it up
                raise StepFailed("llm step cancelled")
            self.send(sender, StepProgress(msg.request_id, n, text))

        try:
            gen = self.model.call("generate", p, progress)
        except StepFailed as exc:
            self.send(sender, StepDone(msg.request_id, False, error=str(exc)))
            return
        output: object = gen["text"]
        if p.get("json_schema") is not None:  # the grammar made it JSON: hand on the value, not its text
            try:
                output = json.loads(gen["text"])
            except (ValueError, RecursionError):
                self.send(sender, StepDone(msg.request_id, False, error="the model's output is not complete JSON "
                                           "(raise max_tokens?)"))
                return
        deep = depth_error(output)
        if deep:  # (a json_object answer of 2,048 tokens may be 1,000 brackets deep)
            self.send(sender, StepDone(msg.request_id, False, error=deep))
            return
        self.send(sender, StepDone(msg.request_id, True, output, f"gguf:{self.model.sha256}",
                                   {"tokens": gen["tokens"], "prompt_tokens": gen["prompt_tokens"],
                                    "seconds": round(gen["seconds"], 4), "token_ids": gen["token_ids"]}))
