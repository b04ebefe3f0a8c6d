"""A model's chat template: the Jinja template in its GGUF metadata, rendered as llama.cpp's own chat
completion renders it (a sandboxed Jinja environment). A chat request becomes one plain prompt in the job,
so every replica and every verifier of the step continues exactly the same tokens; only the node that
submits needs the file, and the template comes from the file the job's SHA-256 names.

Only the instruct model that comes with homemesh (its SHA-256 pinned) has its template read and rendered in
the node's process. Any other GGUF's (added by the owner, or fetched from a peer) is read and rendered in a
child process held to RENDER_S of CPU and RENDER_MEMORY: a template of two nested loops held a node's
event loop 38.9 s, and one holding 'x' * 400000000 took 437 MB at load (this project's attack round on
the llm path, 2026-12-06).

    python -m mesh.steps.chat_template   (reads {"path"} or {"source", "bos", "eos", "messages"} as JSON
                                          on stdin; writes {"source", "bos", "eos"}, {"prompt"} or {"error"})"""

from __future__ import annotations

import functools
import json
import resource
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mesh.errors import UserError
from mesh.steps.llamalog import quiet_llama

RENDER_S = 10  # CPU-seconds a child may take to read a template (the vocabulary with it) or render one
RENDER_MEMORY = 1 << 30  # bytes of address space it may map
MAX_PROMPT_OUT = 16 << 20  # bytes of answer read back from it


class TemplateError(UserError):
    """Messages the model's chat template refused (it may require roles to alternate, for one)."""


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # the Jinja template, as the GGUF holds it
    bos: str  # the model's begin- and end-of-sequence tokens as text (templates may write them)
    eos: str

    isolated: bool = False  # rendered in a child process (a template this node has no reason to trust)

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt for `messages` ({role, content} with text content), ending where the assistant's
        turn begins."""
        if self.isolated:
            return _child({"source": self.source, "bos": self.bos, "eos": self.eos,
                           "messages": [dict(m) for m in messages]})["prompt"]
        return self._render(messages)

    def _render(self, messages: Sequence[Mapping[str, str]]) -> str:
        import jinja2
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        try:
            return Jinja2ChatFormatter(self.source, self.eos, self.bos)(messages=[dict(m) for m in messages]).prompt
        except (jinja2.TemplateError, ValueError) as exc:  # ValueError: the template's raise_exception()
            raise TemplateError(f"the model's chat template refused these messages: {exc}") from None


@functools.lru_cache(maxsize=8)
def template_of(path: str) -> ChatTemplate | None:
    """The chat template of the GGUF at `path` (None: it has none, as base models do). Reads the
    vocabulary and metadata only (half a second for 98 MB); cached per process."""
    from llama_cpp import Llama

    quiet_llama()
    llm = Llama(model_path=path, vocab_only=True, verbose=False)
    source = llm.metadata.get("tokenizer.chat_template")
    if not source:
        return None
    bos, eos = llm.token_bos(), llm.token_eos()
    return ChatTemplate(source, llm._model.token_get_text(bos) if bos != -1 else "",
                        llm._model.token_get_text(eos) if eos != -1 else "")


@functools.lru_cache(maxsize=8)
def untrusted_template_of(path: str) -> ChatTemplate | None:
    """template_of for a GGUF this node has no reason to trust, read in a child process (cached per
    process: only the strings come back); its renders go to a child too."""
    got = _child({"path": path})
    return ChatTemplate(got["source"], got["bos"], got["eos"], isolated=True) if got.get("source") else None


def _child(request: dict) -> dict:
    """Run `request` in `python -m mesh.steps.chat_template` within RENDER_S and RENDER_MEMORY."""
    try:
        done = subprocess.run([sys.executable, "-m", "mesh.steps.chat_template"], input=json.dumps(request).encode(),
                              capture_output=True, timeout=RENDER_S + 5)
    except subprocess.TimeoutExpired:
        raise TemplateError(f"the model's chat template took more than {RENDER_S} s") from None
    out = done.stdout[:MAX_PROMPT_OUT + 1]
    if done.returncode != 0 or not out or len(out) > MAX_PROMPT_OUT:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        why = "took too long or too much memory" if done.returncode < 0 or "MemoryError" in tail[0] else tail[0][:200]
        raise TemplateError(f"the model's chat template failed: {why}")
    answer = json.loads(out)
    if "error" in answer:
        raise TemplateError(answer["error"])
    return answer


def _main() -> None:
    """The child: its limits first, then the template (compiled by llama.cpp's loader, under them)."""
    request = json.loads(sys.stdin.buffer.read())
    resource.setrlimit(resource.RLIMIT_AS, (RENDER_MEMORY, RENDER_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (RENDER_S, RENDER_S + 1))
    try:
        if "path" in request:
            t = template_of(request["path"])
            answer = {"source": t.source, "bos": t.bos, "eos": t.eos} if t else {}
        else:
            answer = {"prompt": ChatTemplate(request["source"], request["bos"], request["eos"])._render(
                request["messages"])}
    except TemplateError as exc:
        answer = {"error": str(exc)}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    _main()
