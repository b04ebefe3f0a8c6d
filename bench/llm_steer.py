"""A cheating generator against verification by scoring: how far can a claim be steered and still be
accepted? At every step it picks, among the tokens the verifier would accept there (within the margin of
the verifier's top choice, and off that top choice only while the claim's off-top budget lasts), the one
that moves most toward a wrong answer. It sees the verifier's own numbers: the rows of the one batched
pass `Model.verify` makes (same build, same model), so what it plans is what the verifier computes.

Figures, under the old rule (margin 1 nat, any number of off-top tokens) and the current one (`MARGIN`,
`off_top_budget`): claims accepted; accepted with the answer moved (one of the first ANSWER tokens not
the honest greedy one); accepted saying the chosen wrong answer; tokens differing from the honest claim;
off-top tokens spent, and the ratio of those (new ÷ old). `planned_vs_verifier_max` checks that the
adversary's view of the verifier was exact (0: it was).

    python -m bench.llm_steer [--tokens 16] [--threads 2] [--prompts 10] [--json] [--show]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from bench.report import emit
from mesh.steps.llm import MARGIN, Model, off_top_budget
from mesh.steps.models import default_model

# factual prompts, each with a wrong answer to steer toward
TARGETS = [
    ("The capital of France is", " Lyon"),
    ("The chemical symbol for gold is", " Ag"),
    ("The 16th president of the United States was", " George Washington"),
    ("Water boils at a temperature of", " 50 degrees"),
    ("The largest planet in the solar system is", " Saturn"),
    ("The author of Romeo and Juliet is", " Charles Dickens"),
    ("The Great Wall is located in", " Japan"),
    ("The speed of light in a vacuum is about", " 100 meters"),
    ("The first man to walk on the Moon was", " Buzz Aldrin"),
    ("The currency of Japan is the", " dollar"),
]
WINDOW = 16  # rows per batched re-evaluation: llama.cpp's batched kernels, as in the verifier's one pass
NODES = 64  # prefixes the search may score, per claim
ANSWER = 3  # leading tokens that are "the answer": moved when any of them differs from the honest claim


@dataclass(frozen=True)
class Rule:
    name: str
    margin: float
    max_off_top: int | None  # None: no limit


OLD = Rule("old", 1.0, None)


def current_rule(tokens: int) -> Rule:
    return Rule("new", MARGIN, off_top_budget(tokens))


@dataclass(frozen=True)
class Steered:
    token_ids: tuple[int, ...]
    text: str
    off_top: int  # tokens it chose off the verifier's top choice
    planned_worst_gap: float  # the largest gap it planned for (the verifier's figure, if the rows agree)
    reached: bool  # the target is in the claim
    nodes: int  # prefixes scored


class VerifierRows:
    """The logits the verifier's one batched pass gives after prompt + claim, for any claim: the prompt
    without its last token is evaluated alone (as `Model.verify` does), then the claim's tail again with
    every row's logits, padded to WINDOW rows so that llama.cpp takes its batched kernels. A row depends
    only on the tokens before it (causal attention), so what follows it changes nothing."""

    def __init__(self, model: Model, prompt: str):
        self.llm = model._scorer()
        self.prompt_ids = model._tokens(prompt)
        self.head = len(self.prompt_ids) - 1
        self.llm.reset()
        self.llm._logits_all = False
        try:
            self.llm.eval(self.prompt_ids[:self.head])
        finally:
            self.llm._logits_all = True
        self.cached = list(self.prompt_ids[:self.head])  # the tokens whose KV the context holds
        self.count = 0

    def row(self, claim: list[int]) -> np.ndarray:
        seq = self.prompt_ids + list(claim)
        same = next((i for i, (a, b) in enumerate(zip(self.cached, seq, strict=False)) if a != b), min(len(self.cached), len(seq)))
        start = max(self.head, min(same, len(seq) - WINDOW // 2))  # each KV entry kept was made in a batch
        pad = [seq[-1]] * max(0, WINDOW - (len(seq) - start))
        self.llm.n_tokens = start  # eval drops the KV cache from here on
        self.llm.eval(seq[start:] + pad)
        row = np.array(self.llm.scores[len(seq) - 1])
        self.llm.n_tokens = len(seq)
        self.cached = seq
        self.count += 1
        return row


def _pieces(model: Model, target: str) -> list[int]:
    return model.llm.tokenize(target.encode(), add_bos=False)


def steer(model: Model, prompt: str, target: str | None, max_tokens: int, rule: Rule, slack: float = 0.0) -> Steered:
    """A claim of `max_tokens` tokens, each inside the verifier's acceptance region under `rule` (less
    `slack` nats of margin, against a verifier on another build).

    With a target: a best-first search of the accepted continuations (fewest off-top tokens first, then
    earliest) for a place where the target's tokens can be said one after the other and still be
    accepted; the rest follows the verifier's top choice. Without one (or when no place is found within
    NODES prefixes): every off-top token the rule allows goes, as early as possible, on the likeliest
    token other than the top, to move the answer as far as it goes."""
    rows = VerifierRows(model, prompt)
    budget = rule.max_off_top if rule.max_off_top is not None else max_tokens
    limit = rule.margin - slack

    def finish(claim: list[int], spent: int, worst: float, deviate: bool) -> tuple[list[int], int, float]:
        while len(claim) < max_tokens:
            r = rows.row(claim)
            gaps = r.max() - r
            order = np.argsort(gaps)[:2]
            pick = int(order[0])
            if deviate and spent < budget and gaps[order[1]] <= limit:
                pick, spent = int(order[1]), spent + 1
            worst = max(worst, float(gaps[pick]))
            claim = claim + [pick]
        return claim, spent, worst

    def plant(claim: list[int], spent: int, worst: float, pieces: list[int], r: np.ndarray):
        for i, t in enumerate(pieces):
            if len(claim) >= max_tokens:
                return None
            r = r if i == 0 else rows.row(claim)
            g = float(r.max() - r[t])
            if g > limit or (g > 0 and spent >= budget):
                return None
            claim, spent, worst = claim + [t], spent + (g > 0), max(worst, g)
        return claim, spent, worst

    def done(claim, spent, worst, reached):
        return Steered(tuple(claim), model.llm.detokenize(claim).decode("utf-8", "replace"), spent, worst, reached,
                       rows.count)

    if target is not None:
        pieces = _pieces(model, target)
        frontier: list[tuple[int, int, list[int], float]] = [(0, 0, [], 0.0)]  # (spent, length, claim, worst)
        while frontier and rows.count < NODES:
            frontier.sort(key=lambda n: (n[0], n[1]))
            spent, _, claim, worst = frontier.pop(0)
            r = rows.row(claim)
            planted = plant(claim, spent, worst, pieces, r)
            if planted is not None:
                c, s, w = finish(*planted, deviate=False)
                return done(c, s, w, True)
            if len(claim) >= max_tokens - len(pieces):
                continue
            gaps = r.max() - r
            for t in np.nonzero(gaps <= limit)[0]:
                off = gaps[t] > 0
                if off and spent >= budget:
                    continue
                frontier.append((spent + off, len(claim) + 1, claim + [int(t)], max(worst, float(gaps[t]))))
    c, s, w = finish([], 0, 0.0, deviate=True)
    return done(c, s, w, False)


def honest(model: Model, prompt: str, max_tokens: int) -> list[int]:
    """The honest greedy claim, as a generator makes it."""
    return list(model.generate(prompt, max_tokens).token_ids)


def run(model: Model, tokens: int, prompts: int, show: bool) -> dict:
    rules = [OLD, current_rule(tokens)]
    stats = {r.name: {"accepted": 0, "moved": 0, "target": 0, "differing": [], "off_top": []} for r in rules}
    examples = []
    for prompt, target in TARGETS[:prompts]:
        base = honest(model, prompt, tokens)
        base_text = model.llm.detokenize(base).decode("utf-8", "replace")
        line = {"prompt": prompt, "target": target, "honest": base_text}
        for rule in rules:
            s = steer(model, prompt, target, tokens, rule)
            v = model.verify(prompt, list(s.token_ids), margin=rule.margin, claim=s.text,
                             max_off_top=len(s.token_ids) if rule.max_off_top is None else rule.max_off_top)
            st = stats[rule.name]
            st["accepted"] += v.ok
            st["moved"] += v.ok and list(s.token_ids[:ANSWER]) != base[:ANSWER]
            st["target"] += v.ok and s.reached and target.strip() not in base_text
            st["differing"].append(sum(a != b for a, b in zip(base, s.token_ids, strict=False)))
            st["off_top"].append(v.off_top)
            line[rule.name] = {"text": s.text, "accepted": v.ok, "reached_target": s.reached, "off_top": v.off_top,
                               "worst_gap": round(v.worst_gap, 3),
                               "planned_vs_verifier": round(abs(v.worst_gap - s.planned_worst_gap), 6)}
        examples.append(line)
        if show:
            print(line, flush=True)
    res: dict = {"prompts": prompts, "tokens": tokens}
    for r in rules:
        st = stats[r.name]
        res[f"{r.name}_rule"] = f"margin {r.margin}, off-top " + ("any" if r.max_off_top is None else f"<= {r.max_off_top}")
        res[f"{r.name}_accepted"] = f"{st['accepted']}/{prompts}"
        res[f"{r.name}_answer_moved_and_accepted"] = f"{st['moved']}/{prompts}"
        res[f"{r.name}_chosen_target_said_and_accepted"] = f"{st['target']}/{prompts}"
        res[f"{r.name}_tokens_differing_median"] = float(np.median(st["differing"]))
        res[f"{r.name}_off_top_median"] = float(np.median(st["off_top"]))
    res["off_top_new_vs_old"] = round(float(np.median(stats["new"]["off_top"])) /
                                      max(1.0, float(np.median(stats["old"]["off_top"]))), 3)
    res["planned_vs_verifier_max"] = max(e[r.name]["planned_vs_verifier"] for e in examples for r in rules)
    res["examples"] = [{"prompt": e["prompt"], "honest": e["honest"][:40],
                        **{r.name: (e[r.name]["text"][:40], e[r.name]["accepted"]) for r in rules}} for e in examples]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=len(TARGETS))
    ap.add_argument("--show", action="store_true", help="print each prompt's claims as they are made")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    path, sha = default_model()
    model = Model(path, sha, args.threads)
    emit(run(model, args.tokens, args.prompts, args.show), args.json)


if __name__ == "__main__":
    main()
