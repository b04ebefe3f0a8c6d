"""A model's chat template: the Jinja template in its GGUF metadata, rendered as llama.cpp's own chat
completion renders it (a sandboxed Jinja environment). A chat request becomes one plain prompt in the job,
so every replica and every verifier of the step continues exactly the same tokens; only the node that
submits needs the file, and the template comes from the file the job's SHA-256 names."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mesh.errors import UserError
from mesh.steps.llamalog import quiet_llama


class TemplateError(UserError):
    """Messages the model's chat template refused (it may require roles to alternate, for one)."""


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # the Jinja template, as the GGUF holds it
    bos: str  # the model's begin- and end-of-sequence tokens as text (templates may write them)
    eos: str

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt for `messages` ({role, content} with text content), ending where the assistant's
        turn begins."""
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
