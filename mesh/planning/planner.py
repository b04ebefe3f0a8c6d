"""Query → job. The model proposes a plan as grammar-constrained JSON (few-shot, since the default model
is a small base model that continues patterns); the plan is used only when it passes the job checks and
fits the query (it fetches exactly the query's URLs, its code computes something, no output is left
unused). Otherwise a deterministic rule planner answers: URLs → scrape, recognised computations →
python, everything else → llm. Sans-I/O: the caller runs the model (`llm_request`) and hands back what
it produced (`finish`)."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass

from mesh.core.dag import REF, Job, parse_job
from mesh.errors import JobError, UserError
from mesh.planning.outputs import misfit
from mesh.planning.parts import TWO_MODELS, URL, clean_url, split
from mesh.planning.rules import computation, numbers

MAX_QUERY = 2000
# parts one question may ask for, one after another: "a then " × 285 planned 286 llm steps, the last one's
# prompt holding 285 earlier outputs, far past the model's context (it could only fail, after the rest ran)
MAX_PARTS = 12
PLAN_TOKENS = 320
PAGE_CHARS = 1500  # of a scraped page's text handed to the model: the context is 2048 tokens
_STEP_ID = {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,15}$"}


def _shape(kind: str, field: str) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["id", "kind", field],
            "properties": {"id": _STEP_ID, "kind": {"const": kind}, field: {"type": "string", "minLength": 1}}}


# What the model may write: a flat step per kind (easier for a small model than nested params).
PLAN_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["steps"], "properties": {
    "steps": {"type": "array", "minItems": 1, "maxItems": 5, "items": {"anyOf": [
        _shape("scrape", "url"), _shape("python", "code"), _shape("llm", "prompt")]}}}}

_EXAMPLES = '''Each request is planned as JSON steps. Kinds: "scrape" fetches a web page (url), "python" computes (code that sets output), "llm" writes text (prompt). "{id.output}" in a prompt inserts an earlier step's output.

Request: Summarise https://example.org/news
Plan: {"steps":[{"id":"page","kind":"scrape","url":"https://example.org/news"},{"id":"answer","kind":"llm","prompt":"Text: {page.output}\\nSummary:"}]}

Request: What is the sum of the squares of 1 to 10?
Plan: {"steps":[{"id":"calc","kind":"python","code":"output = sum(i * i for i in range(1, 11))"}]}

Request: What is the average of 4, 9 and 11?
Plan: {"steps":[{"id":"calc","kind":"python","code":"nums = [4, 9, 11]\\noutput = sum(nums) / len(nums)"}]}

Request: Write a haiku about autumn
Plan: {"steps":[{"id":"answer","kind":"llm","prompt":"A haiku about autumn:\\n"}]}

Request: Compare the titles of https://a.example/ and https://b.example/
Plan: {"steps":[{"id":"a","kind":"scrape","url":"https://a.example/"},{"id":"b","kind":"scrape","url":"https://b.example/"},{"id":"answer","kind":"llm","prompt":"Page A: {a.output}\\nPage B: {b.output}\\nHow their titles differ:"}]}

Request: Compute 2 to the power 20 and explain what it means
Plan: {"steps":[{"id":"calc","kind":"python","code":"output = 2 ** 20"},{"id":"answer","kind":"llm","prompt":"2 to the power 20 is {calc.output}. What this means:"}]}

'''


class InvalidPlan(Exception):
    """The model's plan cannot be used; the message says why (shown as the plan's `fallback`)."""


@dataclass(frozen=True)
class Plan:
    job: dict  # a job file (README "A job file"), checked by mesh.core.dag
    planner: str  # "llm" (the model's plan) or "rules"
    fallback: str = ""  # why the model's plan was not used, when planner == "rules"
    model: str = ""  # the model that wrote the plan (planner == "llm"), as the tree names it

    def to_json(self) -> dict:
        return {"plan": self.job, "planner": self.planner, "fallback": self.fallback}


def check_query(query: object) -> str:
    if not isinstance(query, str) or not query.strip():
        raise UserError("the query is empty: say what you want, e.g. mesh ask \"What is 17 * 23?\"")
    if len(query) > MAX_QUERY:
        raise UserError(f"the query is {len(query)} characters; at most {MAX_QUERY}")
    return " ".join(query.split())


def llm_request(query: str) -> dict:
    """The llm step parameters that ask the model for a plan of `query`."""
    return {"prompt": f"{_EXAMPLES}Request: {check_query(query)}\nPlan: ", "max_tokens": PLAN_TOKENS,
            "json_schema": PLAN_SCHEMA}


RULES_WIN = "the rules recognise the calculation in the question, and where they do they plan it"


def rules_win(query: str) -> bool:
    """Does a part of `query` ask for a calculation the rules recognise? Then their plan is used, never
    the model's: a model once planned "What is 15% of 240?" as `15 % 240` (modulo) and three workers
    agreed on 15."""
    return any(part.kind == "compute" for part in split(check_query(query)))


def finish(query: str, model_output: object, model_error: str = "", redundancy: int | None = None,
           instruct: Instruct | None = None) -> Plan:
    """The model's plan when it is usable and the rules recognise no calculation in the query, else the
    rule plan with the reason."""
    query = check_query(query)
    try:
        if rules_win(query):
            raise InvalidPlan(RULES_WIN)
        if model_error:
            raise InvalidPlan(f"the model did not plan: {model_error}")
        return Plan(check_plan(query, from_model(query, model_output), redundancy), "llm")
    except InvalidPlan as exc:
        return Plan(vetted(query, rule_plan(query, redundancy, instruct)), "rules", str(exc))


def from_model(query: str, value: object) -> dict:
    """The job a model's flat plan describes (raises InvalidPlan when it has the wrong shape)."""
    if not isinstance(value, dict) or not isinstance(value.get("steps"), list) or not value["steps"]:
        raise InvalidPlan("the model's output is not a plan (an object with a list of steps)")
    steps = []
    for raw in value["steps"]:
        if not isinstance(raw, dict) or raw.get("kind") not in ("scrape", "python", "llm"):
            raise InvalidPlan(f"the model wrote a step that is not scrape, python or llm: {str(raw)[:80]}")
        field = {"scrape": "url", "python": "code", "llm": "prompt"}[raw["kind"]]
        params: dict = {field: raw.get(field)}
        if raw["kind"] == "llm":
            params.update(max_tokens=128, stop=["\n\n"])
        elif raw["kind"] == "scrape":
            params["max_chars"] = PAGE_CHARS
        steps.append({"id": raw.get("id"), "kind": raw["kind"], "params": params})
    return {"name": query[:60], "steps": steps}


def check_plan(query: str, job: dict, redundancy: int | None = None) -> dict:
    """`job` when it is a valid job that fits the query; raises InvalidPlan saying what is wrong."""
    if redundancy is not None:
        job = {**job, "redundancy": redundancy}
    try:
        parsed = parse_job(job, "the model's plan")
    except JobError as exc:
        raise InvalidPlan(str(exc)) from None
    _check_urls(query, parsed)
    used = {dep for s in parsed.steps for dep in s.after}
    for s in parsed.steps[:-1]:
        if s.id not in used:
            raise InvalidPlan(f"the output of step {s.id!r} is never used")
    for s in parsed.steps:
        if s.kind == "python":
            _check_code(s.id, s.params["code"])
    check_output_types(query, job)
    if computation(URL.sub(" ", query)):
        _check_computation(query, parsed)
    return job


def check_output_types(query: str, job: dict) -> None:
    """Each python step that computes from nothing earlier sets output to something that can answer the
    question (mesh.planning.outputs); raises InvalidPlan saying which does not. Steps that read pages or
    earlier outputs make text from them by design, so they are not judged."""
    if URL.search(query):
        return
    for s in job["steps"]:
        if s.get("kind") != "python" or s.get("after"):
            continue
        tree = _parses(s["id"], s["params"]["code"])
        if any(isinstance(n, ast.Name) and n.id == "inputs" for n in ast.walk(tree)):
            continue
        reason = misfit(query, s["id"], tree)
        if reason:
            raise InvalidPlan(reason)


def vetted(query: str, job: dict) -> dict:
    """`job` when its python parses and its results fit the question; a UserError saying why not. For the
    rules' own plans: nothing absurd runs, whoever planned it."""
    try:
        for s in job["steps"]:
            if s["kind"] == "python":
                _parses(s["id"], s["params"]["code"])
        check_output_types(query, job)
    except InvalidPlan as exc:
        raise UserError(f"the plan was refused before it ran: {exc}") from None
    return job


def _check_urls(query: str, parsed: Job) -> None:
    """The plan fetches exactly the URLs the query names: a model must not wander off to others."""
    wanted = {clean_url(u) for u in URL.findall(query)}
    fetched = {s.params["url"] for s in parsed.steps if s.kind == "scrape"}
    if wanted - fetched:
        raise InvalidPlan(f"the plan does not fetch {sorted(wanted - fetched)[0]}")
    if fetched - wanted:
        raise InvalidPlan(f"the plan fetches {sorted(fetched - wanted)[0]}, which the query does not name")


def _check_computation(query: str, parsed: Job) -> None:
    """A query asking for a computation gets python code that uses every number the query gives."""
    codes = [s.params["code"] for s in parsed.steps if s.kind == "python"]
    if not codes:
        raise InvalidPlan("the query asks for a computation but the plan has no python step")
    used_nums = {n.value for c in codes for n in ast.walk(ast.parse(c)) if isinstance(n, ast.Constant)
                 and isinstance(n.value, (int, float)) and not isinstance(n.value, bool)}
    # n + 1 counts as n: Python writes "1 to 10" as range(1, 11)
    missing = [n for n in numbers(URL.sub(" ", query)) if not {float(n), float(n) + 1} & used_nums]
    if missing:
        raise InvalidPlan(f"the plan's code does not use the number {missing[0]} from the query")


def _parses(sid: str, code: str) -> ast.Module:
    try:  # (an output pasted into code was refused by parse_job already)
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError) as exc:
        raise InvalidPlan(f"step {sid!r}: the code is not Python ({getattr(exc, 'msg', exc)})") from None


def _check_code(sid: str, code: str) -> None:
    tree = _parses(sid, code)
    names = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets
             if isinstance(t, ast.Name)}
    if "output" not in names:
        raise InvalidPlan(f"step {sid!r}: the code never sets output")
    if not any(isinstance(n, (ast.BinOp, ast.Call, ast.comprehension, ast.Compare, ast.Subscript))
               for n in ast.walk(tree)):
        raise InvalidPlan(f"step {sid!r}: the code computes nothing (it only sets constants)")


@dataclass(frozen=True)
class Instruct:
    """The instruct model a plan's llm steps ask: its SHA-256, and its chat template turning a user
    message into the prompt (the caller reads it from the model's file: planning does no I/O)."""

    sha: str
    render: Callable[[str], str]


ANSWER_TOKENS = 128


def rule_plan(query: str, redundancy: int | None = None, instruct: Instruct | None = None) -> dict:
    """The deterministic plan, part by part (mesh.planning.parts): pages are scraped and their text kept,
    computations the rules recognise run as python, and every part asking for words is an llm step that
    sees what the parts before it produced. "Ask two models ..." asks the base and the instruct model
    the same question and sets their answers side by side."""
    # the query's own "{x.output}" is text, never a reference to a step (it made plans refer to steps that
    # do not exist, or pasted an output where the user had written braces)
    query = REF.sub(lambda m: f"({m.group(1)}.output)", check_query(query))
    if instruct is not None and TWO_MODELS.search(query):
        return _two_models(query, redundancy, instruct)
    steps: list[dict] = []
    known: list[tuple[str, str]] = []  # (what it is, a reference to its output) for later words
    ids: dict[str, int] = {}

    def new_id(base: str) -> str:
        ids[base] = ids.get(base, 0) + 1
        return base if ids[base] == 1 else f"{base}{ids[base]}"

    parts = split(query)
    if len(parts) > MAX_PARTS:
        raise UserError(f"the question asks for {len(parts)} things one after another; a plan takes at most "
                        f"{MAX_PARTS}: ask in several questions")
    for part in parts:
        if part.kind == "scrape":
            pages = [new_id("page") for _ in part.urls]
            steps += [{"id": sid, "kind": "scrape", "params": {"url": url, "max_chars": PAGE_CHARS * 2}}
                      for sid, url in zip(pages, part.urls, strict=True)]
            share = PAGE_CHARS // len(pages)
            code = ("output = '\\n\\n'.join(\n"
                    f"    (p.get('title') or '') + '\\n' + (p.get('text') or '')[:{share}] for p in "
                    f"(inputs[k] for k in {pages!r}))")
            text = new_id("text")
            steps.append({"id": text, "kind": "python", "params": {"code": code}, "after": pages})
            known.append(("Text of the page" + ("s" if len(pages) > 1 else ""), f"{{{text}.output}}"))
            steps.append(_words(new_id("answer"), part.text, known, instruct, summary=True))
            known.append((part.text, f"{{{steps[-1]['id']}.output}}"))
        elif part.kind == "compute":
            calc = new_id("calc")
            steps.append({"id": calc, "kind": "python", "params": {"code": part.code}})
            known.append((part.text, f"{{{calc}.output}}"))
        else:
            steps.append(_words(new_id("answer"), part.text, known, instruct))
            known.append((part.text, f"{{{steps[-1]['id']}.output}}"))
    return _job(query, steps, redundancy)


def _words(sid: str, ask: str, known: list[tuple[str, str]], instruct: Instruct | None,
           summary: bool = False) -> dict:
    """An llm step answering `ask`, shown what the steps before produced."""
    context = "".join(f"{what}: {ref}\n" for what, ref in known)
    if instruct is not None:
        prompt = instruct.render(f"{context}\n{ask}" if context else ask)
        return {"id": sid, "kind": "llm", "params": {"prompt": prompt, "model": instruct.sha,
                                                      "max_tokens": ANSWER_TOKENS}}
    wants = "Summary" if summary and re.search(r"\b(summar|tl;?dr|gist|overview)", ask, re.I) else f"Question: {ask}\nAnswer"
    return {"id": sid, "kind": "llm", "params": {"prompt": f"{context}{wants}:", "max_tokens": ANSWER_TOKENS,
                                                  "stop": ["\nQuestion:", "\n\n\n"]}}


_TWO_ASK = re.compile(r"^(?:please\s+)?(?:ask|have)\s+(?:the\s+)?(?:two|both|2|different)\s+models\s+(?:to\s+)?"
                      r"|^compare\s+what\s+(?:the\s+)?(?:two|both|2|different)\s+models\s+(?:say|think|know)\s+"
                      r"|\s*,?\s*and\s+compare\s+(?:their|the)\s+answers\W*$", re.I)


def _two_models(query: str, redundancy: int | None, instruct: Instruct) -> dict:
    """The same question to the base model (as a continuation) and the instruct model, side by side."""
    question = _TWO_ASK.sub("", query).strip() or query
    question = question[0].upper() + question[1:]
    steps = [
        {"id": "base", "kind": "llm", "params": {"prompt": f"Question: {question}\nAnswer:",
                                                  "max_tokens": ANSWER_TOKENS, "stop": ["\nQuestion:", "\n\n"]}},
        {"id": "instruct", "kind": "ask-model", "params": {"prompt": instruct.render(question), "model": instruct.sha,
                                                           "max_tokens": ANSWER_TOKENS}},
        {"id": "compare", "kind": "python", "after": ["base", "instruct"], "params": {"code": (
            "a, b = inputs['base'].strip(), inputs['instruct'].strip()\n"
            "output = {'base model': a, 'instruct model': b, 'same': a.lower() == b.lower()}")}},
    ]
    return _job(query, steps, redundancy)


def _job(query: str, steps: list[dict], redundancy: int | None) -> dict:
    job = {"name": query[:60], "steps": steps}
    if redundancy is not None:
        job["redundancy"] = redundancy
    parse_job(job, "rule plan")  # a bug here is ours, not the user's: fail loudly
    return job


def tree(plan: Plan) -> str:
    """The plan as an indented tree: each step under the steps it follows."""
    steps = plan.job["steps"]
    after = {s["id"]: list(s.get("after", [])) + sorted(set(REF.findall(str(s.get("params", {})))) -
                                                         set(s.get("after", []))) for s in steps}
    children: dict[str, list[str]] = {}
    for s in steps:
        if after[s["id"]]:
            children.setdefault(after[s["id"]][-1], []).append(s["id"])
    by_id = {s["id"]: s for s in steps}
    by = "rules" if plan.planner == "rules" else f"the model ({plan.model})" if plan.model else "the model"
    lines = [f"planned by: {by}" + (f" (the model's plan was not used: {plan.fallback})" if plan.fallback else ""),
             f"{len(steps)} step{'s' if len(steps) > 1 else ''} at redundancy {plan.job.get('redundancy', 3)}"]

    def show(sid: str, depth: int) -> None:
        s = by_id[sid]
        field = {"scrape": "url", "python": "code", "llm": "prompt", "ask-model": "prompt"}[s["kind"]]
        value = str(s["params"].get(field, "")).replace("\n", "\\n")
        extra = f" (also after {', '.join(after[sid][:-1])})" if len(after[sid]) > 1 else ""
        lines.append(f"{'   ' * depth}└─ {sid} [{s['kind']}] {value[:90]}{'…' if len(value) > 90 else ''}{extra}")
        for child in children.get(sid, []):
            show(child, depth + 1)

    for s in steps:
        if not after[s["id"]]:
            show(s["id"], 0)
    return "\n".join(lines)
