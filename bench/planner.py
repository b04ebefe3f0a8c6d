"""The planner against bench/planner_cases.json: how many plans have the right shape (the kinds of their
steps, in order), how many answers come out right when the plan is run here (python steps in the
sandbox, llm steps on this machine's models, greedy; pages are not fetched, so scrape plans are judged
by shape alone), and how long planning takes.

    python -m bench.planner [--planner auto|rules|model] [--no-run] [--threads 2] [--json] [--show]

`auto` and `rules` are what `mesh ask` does by default; `model` is `mesh ask --planner model` (the base
model writes the plan under a grammar, the rules stand in when it is unusable). Run it on an older
checkout (PYTHONPATH) to compare planners: it uses only what the planner module has always had."""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.report import emit
from mesh.core.dag import REF, render
from mesh.errors import StepFailed
from mesh.planning import planner
from mesh.steps.llm import Model
from mesh.steps.models import default_model, instruct_model_path
from mesh.steps.sandbox import run_python

CASES = Path(__file__).with_name("planner_cases.json")


class Models:
    """The local models, loaded when first needed, and the instruct model's chat template."""

    def __init__(self, threads: int):
        self.threads, self._loaded = threads, {}
        self.base_path, self.base_sha = default_model()
        path = instruct_model_path()
        self.instruct_path = path
        self.instruct = None
        if path is not None:
            from mesh.steps.chat_template import template_of
            from mesh.steps.models import INSTRUCT_SHA256

            template = template_of(str(path))
            if template is not None and hasattr(planner, "Instruct"):
                self.instruct = planner.Instruct(INSTRUCT_SHA256, lambda text: template.render(
                    [{"role": "user", "content": text}]))

    def model(self, sha: str) -> Model:
        if sha not in self._loaded:
            path = self.instruct_path if self.instruct is not None and sha == self.instruct.sha else self.base_path
            self._loaded[sha] = Model(path, sha, self.threads)
        return self._loaded[sha]


def make_plan(which: str, query: str, models: Models) -> tuple[dict, str]:
    """(job, planner that made it) as the node would make it."""
    takes_instruct = "instruct" in inspect.signature(planner.rule_plan).parameters
    extra = {"instruct": models.instruct} if takes_instruct else {}
    if which == "model" or (which == "auto" and not takes_instruct):  # (older checkouts: auto asked the model first)
        gen = models.model(models.base_sha).generate(**{k: v for k, v in planner.llm_request(query).items()
                                                       if k in ("prompt", "max_tokens", "json_schema")})
        try:
            output, error = json.loads(gen.text), ""
        except ValueError:
            output, error = None, "not complete JSON"
        plan = planner.finish(query, output, error, None, **extra)
        return plan.job, plan.planner
    return planner.rule_plan(query, None, **extra), "rules"


def run_plan(job: dict, models: Models) -> dict[str, Any] | None:
    """Every step's output, in order (None when the plan fetches pages: not here)."""
    if any(s["kind"] == "scrape" for s in job["steps"]):
        return None
    outputs: dict[str, Any] = {}
    try:
        _run_steps(job, models, outputs)
    except StepFailed as exc:  # a plan whose step fails gets no answer (the mesh would fail the job too)
        outputs["_failed"] = str(exc)
    return outputs


def _run_steps(job: dict, models: Models, outputs: dict[str, Any]) -> None:
    for s in job["steps"]:
        params = s["params"]
        if s["kind"] == "python":
            deps = set(s.get("after", [])) | set(REF.findall(json.dumps(params)))
            outputs[s["id"]] = run_python(params["code"], {d: outputs[d] for d in deps}, 30).output
        else:
            p = render(params, outputs)
            sha = p.get("model", "default")
            gen = models.model(models.base_sha if sha == "default" else sha).generate(
                p["prompt"], p.get("max_tokens", 128), stop=p.get("stop"), json_schema=p.get("json_schema"))
            outputs[s["id"]] = gen.text


def judge(case: dict, job: dict, outputs: dict[str, Any] | None) -> bool | None:
    """Whether the answer is right (None: nothing to check, or not run)."""
    if outputs is None or ("answer" not in case and "contains" not in case):
        return None
    if "answer" in case:
        last = [s["id"] for s in job["steps"] if s["kind"] == "python"]
        got = outputs.get(last[-1]) if last else None
        want = case["answer"]
        if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
            return abs(got - want) <= 1e-6 * max(1.0, abs(want))
        return got == want
    last = [s["id"] for s in job["steps"] if s["kind"] in ("llm", "ask-model")]
    text = str(outputs.get(last[-1], "")).lower() if last else ""
    return any(word.lower() in text for word in case["contains"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--planner", choices=["auto", "rules", "model"], default="auto")
    ap.add_argument("--cases", default=str(CASES))
    ap.add_argument("--no-run", action="store_true", help="plan only: no answers")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--show", action="store_true", help="print each case's plan shape and answer")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cases = json.loads(Path(args.cases).read_text())["cases"]
    models = Models(args.threads)
    rows, times, made_by = [], [], {}
    for case in cases:
        t0 = time.perf_counter()
        job, by = make_plan(args.planner, case["query"], models)
        times.append(time.perf_counter() - t0)
        made_by[by] = made_by.get(by, 0) + 1
        shape = [s["kind"] for s in job["steps"]]
        outputs = None if args.no_run else run_plan(job, models)
        right = judge(case, job, outputs)
        rows.append({"query": case["query"], "shape_ok": shape == case["shape"], "shape": shape, "answer_ok": right})
        if args.show:
            last = outputs.get(job["steps"][-1]["id"], outputs.get("_failed")) if outputs else None
            print(f"{'ok ' if shape == case['shape'] else 'BAD'} {right!s:5} {times[-1]:6.2f}s {by:5} "
                  f"{case['query'][:60]!r} -> {shape} {str(last)[:70]!r}", flush=True)
    for r, case in zip(rows, cases, strict=True):
        r["blind"] = bool(case.get("blind"))
    checked = [r for r in rows if r["answer_ok"] is not None]
    blind = [r for r in rows if r["blind"]]
    blind_checked = [r for r in blind if r["answer_ok"] is not None]
    res = {"planner": args.planner, "cases": len(rows), "plan_accuracy": round(sum(r["shape_ok"] for r in rows) / len(rows), 3),
           "answers_checked": len(checked),
           "answer_accuracy": round(sum(bool(r["answer_ok"]) for r in checked) / len(checked), 3) if checked else None,
           "blind_cases": len(blind),
           "blind_plan_accuracy": round(sum(r["shape_ok"] for r in blind) / len(blind), 3) if blind else None,
           "blind_answer_accuracy": round(sum(bool(r["answer_ok"]) for r in blind_checked) / len(blind_checked), 3)
           if blind_checked else None,
           "plan_s_mean": round(statistics.mean(times), 4), "plan_s_max": round(max(times), 4),
           "made_by": made_by, "wrong_shapes": [r["query"] for r in rows if not r["shape_ok"]],
           "wrong_answers": [r["query"] for r in checked if not r["answer_ok"]]}
    emit(res, args.json)


if __name__ == "__main__":
    main()
