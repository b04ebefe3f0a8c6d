"""The process that holds a node's GGUF model and runs strangers' llm and score steps in llama.cpp, started
by the model runner actor (actors/model_runner.py) as `python -m mesh.steps.model_worker`. Once the model
is opened it confines itself (mesh.steps.confine), before llama.cpp parses it: no root, no exec, no file
but the model, no socket.

Why a process of its own, not the actor: the actor speaks Thespian, whose TCP ports on 127.0.0.1 unpickle
whatever reaches them, so code run by a llama.cpp bug in the actor could send the root NodeActor a pickle
and run as root again, however confined the actor itself was. This process has no socket at all: it reads
one JSON object a line on stdin and answers the same way on stdout; the actor, which checks every answer,
relays. Lines (one JSON object each):

  in:  {"path", "sha256", "n_threads", "uid", "gid"}           out: {"loaded": pid, "notes": [...]} | {"error"}
  in:  {"op": "generate" | "score", "params": {...}}            out: {"progress": [n, text]} (answered with
       "go" or "stop"), then {"done": {...}} | {"failed": text} | {"crash": text}

Its log (llama.cpp's warnings) goes to stderr, which the actor forwards to the node's actor log."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from mesh.errors import ModelFileError, StepFailed
from mesh.steps.confine import ConfinementError, confine
from mesh.steps.stepuser import StepUser

PR_SET_NAME, PR_SET_PDEATHSIG = 15, 1
CANCELLED = "llm step cancelled"


def _send(out: TextIO, obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


# Codecs Python finds by import at first use: llama.cpp's metadata and jinja2 (which llama-cpp-python
# compiles a model's chat template with, at load) decode with these.
CODECS = ("ascii", "latin-1", "unicode_escape", "raw_unicode_escape", "utf-16", "utf-32")


def _preload() -> None:
    """Import now what loading and the steps import lazily: once confined (another uid, Landlock) this
    process can read no file, and the interpreter's own library may be under a home only root can enter.
    (A module missed here fails its step with PermissionError, "internal error": never silently.)"""
    import codecs

    import jinja2.debug  # noqa: F401  (jinja2 reports a template's error through it)
    import numpy  # noqa: F401
    import numpy.ctypeslib  # noqa: F401
    from llama_cpp import LlamaGrammar, llama_vocab_is_eog  # noqa: F401
    from llama_cpp import llama_cpp as _c  # noqa: F401
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # noqa: F401

    for name in CODECS:
        codecs.lookup(name)


def _readable_by(st: os.stat_result, user: StepUser) -> bool:
    """Whether `user` may read a file of this mode and owner (its directories aside: it opens the file
    through this process's descriptor, /proc/self/fd/N)."""
    if st.st_uid == user.uid:
        return bool(st.st_mode & 0o400)
    return bool(st.st_mode & (0o040 if st.st_gid == user.gid else 0o004))


def _load(spec: dict[str, Any]) -> tuple[Any, list[str]]:
    """Confine this process for good, then load the model (llama.cpp parses a stranger's GGUF confined), through
    /proc/self/fd: a descriptor opened before, the only file Landlock lets it open, also for the scorer's context
    at the first score. A model file the step user may not read (mode 0600, root's) is loaded first and
    confined after, and the notes say so: that parse is not confined."""
    from mesh.steps.llm import Model

    path = Path(spec["path"])
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # (kept open for the scorer)
    _preload()
    sha, threads = str(spec["sha256"]), int(spec.get("n_threads") or 0) or None
    user = StepUser(int(spec["uid"]), int(spec["gid"])) if spec.get("uid") else None
    if user is None or _readable_by(os.fstat(fd), user):
        done = confine(user, [fd])
        return Model(Path(f"/proc/self/fd/{fd}"), sha, threads), done.notes
    model = Model(path, sha, threads)
    model._scorer()  # (now, at its memory's cost: once dropped, this process could not open the file again)
    done = confine(user, [fd])
    return model, [f"{path} is not readable by the step user (uid {user.uid}): llama.cpp parsed it before the "
                   "process was confined (make it readable by others: the node's home keeps it private)",
                   *done.notes]


def _score(model: Any, p: dict[str, Any]) -> dict[str, Any]:
    if float(p.get("temperature", 0)) > 0:  # a seeded draw: replayed on the same seed
        v = model.verify_sampled(p["prompt"], list(p["token_ids"]), float(p["temperature"]), int(p.get("seed", 0)),
                                 list(p.get("stop", [])), int(p.get("max_tokens", 64)), claim=p["claim"])
    else:
        v = model.verify(p["prompt"], list(p["token_ids"]), claim=p["claim"])
    return {"accepted": v.ok, "first_bad": v.first_bad, "tokens": v.tokens,
            "prompt_tokens": model.prompt_tokens(p["prompt"]), "seconds": v.seconds}


def _generate(model: Any, p: dict[str, Any], inp: TextIO, out: TextIO) -> dict[str, Any]:
    def progress(n: int, text: str) -> None:  # the actor answers each: "stop" once the step is cancelled
        _send(out, {"progress": [n, text]})
        if inp.readline().strip() != "go":
            raise StepFailed(CANCELLED)

    gen = model.generate(p["prompt"], int(p.get("max_tokens", 64)), int(p.get("seed", 0)), list(p.get("stop", [])),
                         float(p.get("temperature", 0)), p.get("json_schema"), progress)
    return {"text": gen.text, "tokens": gen.tokens, "prompt_tokens": gen.prompt_tokens, "seconds": gen.seconds,
            "token_ids": list(gen.token_ids)}


def serve(inp: TextIO, out: TextIO) -> int:
    """Load, confine, then answer requests until stdin closes (the actor is gone)."""
    line = inp.readline()
    if not line:
        return 0
    try:
        model, notes = _load(json.loads(line))
    except (ValueError, OSError, RuntimeError, ModelFileError, ConfinementError) as exc:
        _send(out, {"error": str(exc)})
        return 1
    _send(out, {"loaded": os.getpid(), "notes": notes})
    for line in inp:
        req = json.loads(line)
        try:
            if req["op"] == "score":
                _send(out, {"done": _score(model, req["params"])})
            else:
                _send(out, {"done": _generate(model, req["params"], inp, out)})
        except StepFailed as exc:  # the step's own failure (too long for the context, cancelled, …)
            _send(out, {"failed": str(exc)})
        except Exception as exc:  # noqa: BLE001 -- any other fault is the actor's to raise (PoisonMessage), as before
            _send(out, {"crash": f"{type(exc).__name__}: {exc}"})
    return 0


def main() -> int:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # numpy's BLAS pool would start threads before confine()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, b"hm-model", 0, 0, 0)  # (what ps, top and bench/node_memory.py show)
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # dies with its actor (which the NodeActor kills when stuck)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s: %(message)s")
    return serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
