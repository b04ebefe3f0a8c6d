"""A loaded GGUF model, decoded greedily with a fixed seed so replicas on the same model file and build
agree token for token."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import StepFailed


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int
    seconds: float


class Model:
    def __init__(self, path: Path, sha256: str, n_threads: int | None = None, n_ctx: int = 2048):
        from llama_cpp import Llama  # heavy import: only in the process that holds the model

        self.sha256 = sha256
        self.path = path
        threads = n_threads or max(1, min(4, os.cpu_count() or 1))
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, seed=0, verbose=False)

    def generate(self, prompt: str, max_tokens: int, seed: int = 0, stop: list[str] | None = None) -> Generation:
        n_prompt = len(self.llm.tokenize(prompt.encode()))
        if n_prompt + max_tokens > self.llm.n_ctx():
            raise StepFailed(f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceed the context "
                             f"of {self.llm.n_ctx()}")
        self.llm.reset()
        self.llm.set_seed(seed)
        t0 = time.perf_counter()
        out = self.llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1, top_p=1.0,
                                         seed=seed, stop=stop or None, repeat_penalty=1.0)
        dt = time.perf_counter() - t0
        return Generation(out["choices"][0]["text"], int(out["usage"]["completion_tokens"]), dt)
