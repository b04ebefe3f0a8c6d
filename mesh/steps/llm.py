"""A loaded GGUF model, decoded greedily, or sampled with a seed by `mesh.steps.sampling`, so replicas on
the same model file and build agree token for token; and verification by scoring: one teacher-forced pass
over a claimed output that accepts it when every token was the model's top choice (greedy) or the seed's
draw (sampled), within a log-probability margin, and few were not at all."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import StepFailed
from mesh.steps.gguf import check_gguf
from mesh.steps.grammar import build_grammar
from mesh.steps.llamalog import quiet_llama
from mesh.steps.sampling import draw, score_of


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int
    seconds: float
    token_ids: tuple[int, ...] = ()  # what a verifier scores
    prompt_tokens: int = 0


@dataclass(frozen=True)
class Verification:
    ok: bool
    tokens: int
    worst_gap: float  # largest (top log-probability − the claimed token's), in nats
    first_bad: int  # index of the first token refused (over the margin, or off-top past the budget), -1 when none
    seconds: float
    off_top: int = 0  # positions whose claimed token is not the verifier's own top choice


PROGRESS_EVERY = 8  # tokens between progress reports while streaming
# How far a claimed token may trail the verifier's top choice, and how many may trail it at all. Measured
# (issue 19; gemma3-270m Q4_K_M, llama.cpp 0.3.36, 14 prompts, 1,152 greedy tokens): thread count and
# micro-batch size change nothing (bit-identical logits); what differs is one-by-one generation against the
# verifier's batched pass, on one build (an AVX2 build: an honest token up to 0.991 nats below the
# verifier's top, 18 of 1,152 tokens off it) and across builds (AVX-512 scoring AVX2's tokens: up to
# 0.431, 24 of 1,152). Off-top tokens per claim: up to 4 of 64 and 8 of 128, one in 16.
MARGIN = 1.5  # nats: 0.991 measured × 1.5
OFF_TOP_BASE, OFF_TOP_PER = 2, 16  # off-top tokens allowed: 2 + one per 16 (measured: one per 16 at most)
# Sampled claims (mesh.steps.sampling), measured the same way (76 claims of 32 and 128 tokens, temperature
# 0.7 to 1.0, 7,808 tokens): an honest token's perturbed score up to 1.91 nats (in logits) under the
# verifier's best; 260 of 7,808 tokens off it, at most 4 of 32 and 10 of 128 in one claim.
MARGIN_SAMPLED = 2.5  # nats: 1.91 measured × 1.3
OFF_TOP_SAMPLED = (3, 10)  # off-top tokens allowed: 3 + one per 10


def off_top_sampled(tokens: int) -> int:
    """How many of a sampled claim's tokens may be other than the verifier's own seeded draw."""
    return OFF_TOP_SAMPLED[0] + tokens // OFF_TOP_SAMPLED[1]


def off_top_budget(tokens: int) -> int:
    """How many of a claim's tokens may be other than the verifier's own top choice."""
    return OFF_TOP_BASE + tokens // OFF_TOP_PER


N_CTX = 2048  # tokens, for generating and scoring alike: what one node generated, any node can score


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """The text before the first stop string in it, and whether there was one."""
    at = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


class Model:
    def __init__(self, path: Path, sha256: str, n_threads: int | None = None, n_ctx: int = N_CTX):
        from llama_cpp import Llama  # heavy import: only in the process that holds the model

        quiet_llama()
        check_gguf(path)  # (llama.cpp's own parser is not given a malformed file: ModelFileError first)
        self.sha256 = sha256
        self.path = path
        threads = n_threads or max(1, min(4, os.cpu_count() or 1))
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, seed=0,
                         verbose=False)

    def prompt_tokens(self, prompt: str) -> int:
        """The tokens `prompt` reads as, as a replica reports them (what pricing pays a prompt by)."""
        return len(self.llm.tokenize(prompt.encode()))

    def generate(self, prompt: str, max_tokens: int, seed: int = 0, stop: list[str] | None = None,
                 temperature: float = 0.0, json_schema: dict | None = None,
                 on_progress: Callable[[int, str], None] | None = None) -> Generation:
        """Greedy at temperature 0 (replicas agree token for token); sampled with `seed` above it. A JSON
        schema constrains the output through a llama.cpp grammar."""
        n_prompt = self.prompt_tokens(prompt)
        if n_prompt + max_tokens > self.llm.n_ctx():
            raise StepFailed(f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceed the context "
                             f"of {self.llm.n_ctx()}")
        self.llm.reset()
        self.llm.set_seed(seed)
        t0 = time.perf_counter()
        grammar = None if json_schema is None else build_grammar(json_schema)
        if temperature > 0 and grammar is None:
            text, ids = self._sample(prompt, max_tokens, temperature, seed, list(stop or []), on_progress)
            return Generation(text, len(ids), time.perf_counter() - t0, tuple(ids), n_prompt)
        # greedy; or sampled under a schema's grammar, by llama.cpp's chain (such steps are compared by
        # text, never scored)
        sampled = {"temperature": temperature, "top_k": 40, "top_p": 0.95} if temperature > 0 else {
            "temperature": 0.0, "top_k": 1, "top_p": 1.0}
        args = dict(max_tokens=max_tokens, seed=seed, stop=stop or None, repeat_penalty=1.0, grammar=grammar,
                    **sampled)
        if on_progress is None:
            out = self.llm.create_completion(prompt, **args)
            text, count = out["choices"][0]["text"], int(out["usage"]["completion_tokens"])
        else:  # the same decoding, streamed: a chunk per token, reported every PROGRESS_EVERY tokens
            parts: list[str] = []
            for count, chunk in enumerate(self.llm.create_completion(prompt, stream=True, **args), 1):
                parts.append(chunk["choices"][0]["text"])
                if count % PROGRESS_EVERY == 0:
                    on_progress(count, "".join(parts))
            text, count = "".join(parts), len(parts)
        dt = time.perf_counter() - t0
        prompt_ids = self._tokens(prompt)
        ids = self._tokens(prompt + text)
        tail = tuple(ids[len(prompt_ids):]) if ids[:len(prompt_ids)] == prompt_ids else ()
        return Generation(text, len(tail) or count, dt, tail, n_prompt)  # (a stream ends with an empty chunk)

    def _sample(self, prompt: str, max_tokens: int, temperature: float, seed: int, stop: list[str],
                on_progress: Callable[[int, str], None] | None) -> tuple[str, list[int]]:
        """Sampled decoding by `mesh.steps.sampling` (seeded per job and step, checkable by scoring),
        keeping the token ids as drawn: re-tokenizing the text can spell it with other tokens. Ends at an
        end-of-generation token, at `max_tokens`, or at the token that completes a stop string (the text
        is cut before it), so a verifier can check where it ended too."""
        import numpy as np
        from llama_cpp import llama_cpp as C

        ids: list[int] = []
        raw = b""
        n_vocab = self.llm.n_vocab()
        self.llm.eval(self._tokens(prompt))
        for position in range(max_tokens):
            row = np.ctypeslib.as_array(C.llama_get_logits_ith(self.llm._ctx.ctx, -1), shape=(n_vocab,))
            tok = draw(row, temperature, seed, position).token
            if self._eog(tok):
                break
            ids.append(tok)
            raw += self.llm.detokenize([tok])
            text, stopped = cut_at_stop(raw.decode("utf-8", "replace"), stop)
            if on_progress is not None and len(ids) % PROGRESS_EVERY == 0:
                on_progress(len(ids), text)
            if stopped or len(ids) >= max_tokens:
                break
            self.llm.eval([tok])
        return cut_at_stop(raw.decode("utf-8", "replace"), stop)[0], ids

    def _tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), special=True)

    def verify(self, prompt: str, token_ids: list[int], margin: float = MARGIN, claim: str | None = None,
               max_off_top: int | None = None) -> Verification:
        """Score a claimed continuation in one batched pass (logits for every position) instead of
        generating it token by token. Every token must be within `margin` of the verifier's top choice,
        and at most `max_off_top` of them (by default `off_top_budget` of the claim's length) other than
        it. Both absorb float differences (batched against one-by-one evaluation, one build against
        another), which reorder near-ties; they bound how many tokens a cheat may choose, but cannot tell
        its near-tie from an honest one (bench/llm_steer.py). With `claim`, the token ids must also spell
        exactly that text.
        Raises StepFailed when the prompt and claim do not fit the context: that says nothing about the
        claim, so it is no verdict (a rejection would book an honest generator as disagreeing)."""
        import numpy as np

        if not self._claim_ok(token_ids) or (claim is not None and self._text(token_ids) != claim):
            return Verification(False, len(token_ids), float("inf"), 0, 0.0)
        t0 = time.perf_counter()
        rows = self._rows(prompt, token_ids)[:-1]
        claimed = rows[np.arange(len(token_ids)), np.asarray(token_ids)]
        gaps = rows.max(axis=1) - claimed  # logits, same gap as log-probabilities (one normaliser per row)
        off = np.nonzero(gaps > 0)[0]  # not the verifier's top choice (a tie is no choice)
        budget = off_top_budget(len(token_ids)) if max_off_top is None else max_off_top
        over = np.nonzero(gaps > margin)[0]
        bad = [int(over[0])] if len(over) else []
        if len(off) > budget:
            bad.append(int(off[budget]))  # the first off-top token past the budget
        return Verification(not bad, len(token_ids), float(gaps.max()), min(bad, default=-1),
                            time.perf_counter() - t0, len(off))

    def verify_sampled(self, prompt: str, token_ids: list[int], temperature: float, seed: int,
                       stop: list[str] | None = None, max_tokens: int = 0, claim: str | None = None,
                       margin: float = MARGIN_SAMPLED, max_off_top: int | None = None) -> Verification:
        """Check a sampled claim (temperature above 0, drawn by `mesh.steps.sampling`) in one batched
        pass, as `verify` checks a greedy one, on the seeded perturbed scores: at each position the
        claimed token must be a candidate (its logit no more than `margin` under the candidates' floor)
        whose `logit / temperature + noise` is within `margin / temperature` of the best, and at most
        `max_off_top` positions (by default `off_top_sampled`) may differ from the verifier's own draw.
        The claim must also end where the generator would: at `max_tokens`, at the token completing a
        stop string, or where the draw is an end-of-generation token (held to the same margin).
        `worst_gap` is in logits."""
        import numpy as np

        stop = list(stop or [])
        ids = [int(t) for t in token_ids]
        if not self._claim_ok(ids):
            return Verification(False, len(ids), float("inf"), 0, 0.0)
        text, stopped = cut_at_stop(self._text(ids), stop)
        if claim is not None and text != claim:
            return Verification(False, len(ids), float("inf"), 0, 0.0)
        if stopped and cut_at_stop(self._text(ids[:-1]), stop)[1]:  # it ran on past its stop string
            return Verification(False, len(ids), float("inf"), len(ids) - 1, 0.0)
        t0 = time.perf_counter()
        rows = self._rows(prompt, ids)
        ended = stopped or (0 < max_tokens <= len(ids))  # else the draw after it must be the end
        budget = off_top_sampled(len(ids)) if max_off_top is None else max_off_top
        off, worst, first_bad = 0, 0.0, -1
        for i in range(len(ids) + (0 if ended else 1)):
            d = draw(rows[i], temperature, seed, i)
            if i < len(ids):
                wanted = ids[i]
            else:  # the end: the best-placed end-of-generation token among the candidates
                ends = [int(t) for t in d.ids if self._eog(int(t))]
                wanted = max(ends, key=lambda t: score_of(rows[i], temperature, seed, i, t), default=-1)
                if wanted < 0:
                    first_bad = i
                    break
            if wanted == d.token:
                continue
            gap = (float(np.max(d.scores)) - score_of(rows[i], temperature, seed, i, wanted)) * temperature
            worst = max(worst, gap)
            off += 1
            if gap > margin or float(rows[i][wanted]) < d.floor - margin or off > budget:
                first_bad = i
                break
        return Verification(first_bad < 0, len(ids), worst, first_bad, time.perf_counter() - t0, off)

    def _eog(self, token: int) -> bool:
        from llama_cpp import llama_vocab_is_eog

        return bool(llama_vocab_is_eog(self.llm._model.vocab, token))

    def _claim_ok(self, ids) -> bool:
        return bool(ids) and all(0 <= int(t) < self.llm.n_vocab() for t in ids)

    def _text(self, ids) -> str:
        return self.llm.detokenize([int(t) for t in ids]).decode("utf-8", "replace")

    def _rows(self, prompt: str, token_ids):
        """Logits at every position of a claim, from one batched pass: row i predicts token i, and the last
        row what would follow the claim. Raises StepFailed when the prompt and claim overflow the context:
        that says nothing about the claim, so it is no verdict (a rejection would book an honest generator
        as disagreeing)."""
        import numpy as np

        prompt_ids = self._tokens(prompt)
        seq = prompt_ids + [int(t) for t in token_ids]
        if len(seq) > self.llm.n_ctx():
            raise StepFailed(f"cannot score: prompt ({len(prompt_ids)} tokens) + claim ({len(token_ids)} tokens) "
                             f"exceed the context of {self.llm.n_ctx()}")
        if any(not 0 <= t < self.llm.n_vocab() for t in prompt_ids):
            raise StepFailed("cannot score: the prompt has token ids outside the model's vocabulary")
        head = len(prompt_ids) - 1  # logits are needed from the prompt's last token on
        scorer = self.forward(seq, head)
        return np.asarray(scorer.scores[head:len(seq)])

    def forward(self, seq: list[int], head: int):
        """One forward pass of the scoring context over `seq`, keeping a vocabulary-sized row of logits for
        each position from `head` on; the scorer back. llama.cpp's pass, not Python's eval. Positions
        before `head` go without logits: computing (and keeping) a row per prompt token was most of the
        time and memory of scoring a long prompt. (`_logits_all` is what Llama.eval reads per call; were
        it renamed, every row would be computed again: slower, the same verdict.)"""
        scorer = self._scorer()
        scorer.reset()
        scorer._logits_all = False
        try:
            scorer.eval(seq[:head])
        finally:
            scorer._logits_all = True
        scorer.eval(seq[head:])
        return scorer

    def _scorer(self):
        """A second context that keeps logits for every position (the generator keeps only the last), of
        the generator's size: a claim generated here always fits."""
        if getattr(self, "scorer", None) is None:
            from llama_cpp import Llama

            self.scorer = Llama(model_path=str(self.path), n_ctx=self.llm.n_ctx(), n_threads=self.llm.n_threads,
                                n_threads_batch=self.llm.n_threads, seed=0, verbose=False, logits_all=True)
        return self.scorer
