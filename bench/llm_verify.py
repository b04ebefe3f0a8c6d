"""Verification by scoring against generation: the same model, prompt and output, in the same run. A
verifier scores the claimed tokens in one batched pass (logits for every position) where a generator
decodes them one by one; the figure is verify time ÷ generate time (lower is cheaper). The same for a
sampled claim (temperature 0.8, `mesh.steps.sampling`'s seeded draw, replayed by the verifier), with the
honest sampled claims accepted over `--seeds` seeds and the most off-top tokens and worst gap among them,
and sampled generation's time ÷ greedy generation's (what the seeded sampler costs in Python).

    python -m bench.llm_verify [--tokens 128] [--threads 2] [--pairs 5] [--cpus 0,1] [--seeds 8] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.abab import abab, pin
from bench.report import emit
from mesh.steps.llm import Model
from mesh.steps.models import default_model

PROMPT = "Write a short history of the city of Paris, from its founding to the present day."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=5, help="generate/verify runs, alternating (at least 5)")
    ap.add_argument("--cpus", default="", help="CPU set both run on (default: as started; give --threads CPUs)")
    ap.add_argument("--seeds", type=int, default=8, help="sampled claims generated and scored")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cpus = pin(args.cpus)
    path, sha = default_model()
    model = Model(path, sha, args.threads)
    model.verify(PROMPT, list(model.generate(PROMPT, 8).token_ids))  # load the scorer, warm both
    ok, tokens = True, 0

    def generate() -> float:
        nonlocal gen
        gen = model.generate(PROMPT, args.tokens)
        return gen.seconds

    def verify() -> float:
        nonlocal ok, tokens
        v = model.verify(PROMPT, list(gen.token_ids))
        ok, tokens = ok and v.ok, gen.tokens
        return v.seconds

    gen = None
    r = abab("verify_vs_generate", generate, verify, args.pairs)
    res = {"tokens": tokens, "threads": args.threads, "cpus": cpus,
           "generate_s": round(statistics.median(b for b, _ in r.pairs), 4),
           "verify_s": round(statistics.median(v for _, v in r.pairs), 4), "honest_accepted": ok, **r.fields()}
    res.update(sampled(model, args.tokens, args.seeds))
    res.update(split(model, list(gen.token_ids)))
    emit(res, args.json)


def split(model: Model, token_ids: list[int], runs: int = 3) -> dict:
    """Where a verification's time goes (best of `runs`): the forward pass over prompt + claim with one
    vocabulary-sized row of logits (the last), against the same pass keeping a row for every claimed
    position, as scoring needs. The difference is the output layer over the vocabulary, once a position."""
    seq = model._tokens(PROMPT) + token_ids
    every_from = len(seq) - len(token_ids) - 1  # as Model.verify scores: from the prompt's last token on

    def timed(head: int) -> float:
        t0 = time.perf_counter()
        model.forward(seq, head)
        return time.perf_counter() - t0

    one = min(timed(len(seq) - 1) for _ in range(runs))
    every = min(timed(every_from) for _ in range(runs))
    return {"pass_one_row_s": round(one, 4), "pass_every_row_s": round(every, 4),
            "vocabulary_rows": len(token_ids) + 1, "n_vocab": model.llm.n_vocab()}


def sampled(model: Model, tokens: int, seeds: int) -> dict:
    gen_s, ver_s, accepted, off_top, worst, n = [], [], 0, 0, 0.0, 0
    for seed in range(1, seeds + 1):
        gen = model.generate(PROMPT, tokens, seed=seed, temperature=0.8)
        v = model.verify_sampled(PROMPT, list(gen.token_ids), 0.8, seed, [], tokens, claim=gen.text)
        gen_s.append(gen.seconds / max(1, gen.tokens))
        ver_s.append(v.seconds / max(1, gen.tokens))
        accepted, off_top, worst, n = accepted + v.ok, max(off_top, v.off_top), max(worst, v.worst_gap), n + gen.tokens
    greedy = min(model.generate(PROMPT, tokens).seconds / tokens for _ in range(2))
    return {"sampled_claims": seeds, "sampled_tokens": n, "sampled_honest_accepted": accepted,
            "sampled_off_top_max": off_top, "sampled_worst_gap": round(worst, 3),
            "sampled_verify_vs_generate": round(min(ver_s) / min(gen_s), 3),
            "sampled_vs_greedy_generate": round(min(gen_s) / greedy, 3)}


if __name__ == "__main__":
    main()
