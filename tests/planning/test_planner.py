"""The query planner (mesh.planning.planner) and its computation rules (mesh.planning.rules), as fast pure unit tests.

The rule planner is the fallback every query ends up on when the model's plan is unusable, so its
generated code must compute the right answer (we execute it here and compare with the true value), must
never carry query text other than numbers into code, and must always form a valid job. `finish` must
accept a good model plan unchanged and reject each kind of bad plan with a reason, falling back to the
rule plan. No network, no model, no nodes.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.core.dag import parse_job
from mesh.errors import UserError
from mesh.planning.planner import (
    MAX_PARTS,
    PAGE_CHARS,
    PLAN_SCHEMA,
    PLAN_TOKENS,
    RULES_WIN,
    Instruct,
    Plan,
    check_plan,
    check_query,
    finish,
    from_model,
    llm_request,
    rule_plan,
    rules_win,
    tree,
    vetted,
)
from mesh.planning.rules import computation

pytestmark = pytest.mark.timeout(60)


def run(code: str, inputs: dict | None = None) -> object:
    """Execute rule-generated code (fixed templates + numbers) and return what it sets as output."""
    scope: dict = {"inputs": inputs or {}}
    exec(code, scope)  # noqa: S102 - our own generated code, run in-test only
    return scope["output"]


def fib(n: int) -> int:
    """The n-th Fibonacci number counting from 1 in the sequence 0, 1, 1, 2, 3, ..."""
    a, b = 0, 1
    for _ in range(n - 1):
        a, b = b, a + b
    return a


@pytest.mark.parametrize(("query", "expected"), [
    ("What is 17 * 23 + 4?", 395),
    ("average of 3, 8, 12 and 20", 10.75),
    ("How many primes are below 100?", 25),
    ("is 97 prime", True),
    ("sum of the squares of 1 to 10", 385),
    ("factorial of 10", 3628800),
    ("convert 212 fahrenheit to celsius", 100),
    ("what is 15% of 80", 12),
    ("the 10th fibonacci number", fib(10)),
    ("sort 5, 3, 9, 1", [1, 3, 5, 9]),
    ("product of numbers from 1 to 6", 720),
    ("2 to the power 10", 1024),
    # what is asked of a number's digits, and sums over primes (rules added after blind cases showed them)
    ("the sum of the primes below 30", 2 + 3 + 5 + 7 + 11 + 13 + 17 + 19 + 23 + 29),
    ("how many trailing zeros does 25! have", 6),
    ("how many digits does 2 to the power 64 have", len(str(2 ** 64))),
    ("what is the sum of the digits of 10!", sum(map(int, str(3628800)))),
    ("the 12th fibonacci number, the sequence starting 1, 1", fib(13)),
    ("the 5th fibonacci number starting with 2, 1", 7),  # Lucas: 2, 1, 3, 4, 7
    # percentages (issue 25: a model planned "15% of 240" as 15 % 240)
    ("What is 15% of 240?", 36),
    ("what is 20 percent of 80", 16),
    ("increase 50 by 10%", 55),
    ("Decrease 80 by 25%", 60),
    ("reduce 120 by 30 percent", 84),
    ("What is 240 plus 15%?", 276),
    ("what is 12.5% of 64", 8),
    ("what percent of 200 is 50", 25),
    ("50 is what percentage of 200?", 25),
    ("what is 30 as a percentage of 120", 25),
    ("the percentage change from 80 to 100", 25),
    ("20% off $50", 40),
])
def test_rule_computations_give_the_true_answer(query: str, expected: object) -> None:
    code = computation(query)
    assert code is not None, f"no rule recognised {query!r}"
    out = run(code)
    if isinstance(expected, bool):
        assert out is expected
    elif isinstance(expected, list):
        assert out == expected
    else:
        assert out == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("query", "expected"), [
    ("What is 15% of 240?", 36), ("What is 7% of 300?", 21), ("increase 50 by 10%", 55),
    ("What is 0.5% of 3?", 0.015)])
def test_percentages_are_exact_and_a_whole_result_is_shown_whole(query: str, expected: object) -> None:
    """36, not 36.0; 21, not 21.000000000000004 (7 / 100 * 300, the old template)."""
    out = run(computation(query) or "")
    assert out == expected and type(out) is type(expected)


def test_the_rules_plan_15_percent_of_240_as_one_python_step_computing_36() -> None:
    job = rule_plan("What is 15% of 240?")
    parse_job(job)
    assert kinds(job) == ["python"] and run(job["steps"][0]["params"]["code"]) == 36
    assert "%" not in job["steps"][0]["params"]["code"]  # never Python's modulo


@pytest.mark.parametrize("query", ["what is 5 plus 10% of 200", "what percent of 0 is 5", "15 % 240 is modulo"])
def test_percentages_the_rules_cannot_be_sure_of_are_not_guessed(query: str) -> None:
    code = computation(query)
    assert code is None or "a, b" not in code


def test_reference_fibonacci_is_one_based() -> None:
    assert [fib(n) for n in range(1, 11)] == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]


@pytest.mark.parametrize("query", [
    "Tell me a joke about cats", "what happened on 2024-01-05", "Summarise https://example.org/a1b2"])
def test_non_computations_are_not_recognised(query: str) -> None:
    assert computation(query) is None


@pytest.mark.parametrize("query", ["what is 1e999 * 2", "convert 1e400 km to miles", "primes below 1e99",
                                   "what is 2 * 3e-45?"])
def test_a_number_the_rules_cannot_read_whole_is_not_read_in_part(query: str) -> None:
    """`1e999 * 2` was planned as `999 * 2` and `1e400 km` as 400 km: a number is read whole or not at all."""
    code = computation(query)
    assert code is None, code


@pytest.mark.parametrize(("query", "expected"), [
    ("what is 2 * 3e5", 600000), ("square root of 4e2", 20), ("convert 1.5e3 km to miles", 932.056788),
    ("is 1e1 a prime", False), ("what is 2.5E2 + 1", 251)])
def test_a_number_in_exponent_notation_is_read_whole(query: str, expected: object) -> None:
    out = run(computation(query) or "output = None")
    assert out == pytest.approx(expected, abs=1e-6), out


@pytest.mark.parametrize("query", [
    "__import__('os'); rm -rf / sum of 1, 2, 3",
    "sum of 1, 2, 3 __import__('os').system('rm -rf ~'); rm -rf /",
    "What is 2 + 2; __import__('os').system('rm -rf /')",
    "sum of 1 to 3 `rm -rf ~` exec(open('x').read())",
])
def test_generated_code_holds_no_query_text_but_numbers(query: str) -> None:
    code = computation(query)
    assert code is not None
    for bad in ("__import__", "os", "rm", "-rf", "system", "exec", "open", ";", "`", "'"):
        assert bad not in code, f"{bad!r} leaked into {code!r}"
    assert run(code) in (4, 6)


def kinds(job: dict) -> list[str]:
    return [s["kind"] for s in job["steps"]]


def test_rule_plan_for_two_urls() -> None:
    job = rule_plan("Compare https://a.example/x. and https://b.example/y, which is longer?")
    parsed = parse_job(job)
    assert kinds(job) == ["scrape", "scrape", "python", "llm"]
    assert [s["params"]["url"] for s in job["steps"][:2]] == ["https://a.example/x", "https://b.example/y"]
    text, answer = parsed.steps[2], parsed.steps[3]
    assert set(text.after) == {s["id"] for s in job["steps"][:2]}
    assert parsed.order().index(text.id) == 2
    assert "{text.output}" in answer.params["prompt"] and answer.after == [text.id]


def test_rule_plan_for_a_pure_computation() -> None:
    job = rule_plan("What is 17 * 23 + 4?")
    parse_job(job)
    assert kinds(job) == ["python"] and run(job["steps"][0]["params"]["code"]) == 395


def test_rule_plan_for_a_computation_to_explain() -> None:
    job = rule_plan("Compute 2 to the power 10 and explain what it means")
    parse_job(job)
    assert kinds(job) == ["python", "llm"]
    assert job["steps"][0]["id"] == "calc" and "{calc.output}" in job["steps"][1]["params"]["prompt"]


def test_rule_plan_for_a_plain_question_and_redundancy() -> None:
    job = rule_plan("Who wrote Hamlet?", redundancy=5)
    assert kinds(job) == ["llm"] and "Who wrote Hamlet?" in job["steps"][0]["params"]["prompt"]
    assert job["redundancy"] == 5 and parse_job(job).redundancy == 5
    assert "redundancy" not in rule_plan("Who wrote Hamlet?")


def step(sid: str, kind: str, value: str) -> dict:
    return {"id": sid, "kind": kind, {"scrape": "url", "python": "code", "llm": "prompt"}.get(kind, "x"): value}


CALC = "What is 17 * 23 + 4?"
AVG = "average of 3, 8, 12 and 20"
DAYS = "How many days are there between 2024-01-15 and 2024-03-01?"  # a calculation no rule recognises
DAYS_CODE = "import datetime\noutput = (datetime.date(2024, 3, 1) - datetime.date(2024, 1, 15)).days"
NEWS = "Summarise https://example.org/news"


@pytest.mark.parametrize(("query", "output", "error", "word"), [
    (DAYS, None, "timed out", "did not plan"),
    (DAYS, ["output = 395"], "", "not a plan"),
    (DAYS, {"steps": []}, "", "not a plan"),
    (DAYS, {"steps": [step("s", "shell", "rm -rf /")]}, "", "not scrape, python or llm"),
    ("Tell me a joke", {"steps": [step("answer", "llm", "{answer.output}")]}, "", "cycle"),
    (NEWS, {"steps": [step("answer", "llm", "Summary:")]}, "", "does not fetch"),
    (NEWS, {"steps": [step("p", "scrape", "https://example.org/news"), step("q", "scrape", "https://evil.example/"),
                      step("a", "llm", "{p.output} {q.output}")]}, "", "does not name"),
    (DAYS, {"steps": [step("calc", "python", DAYS_CODE), step("a", "llm", "Say hi")]}, "", "never used"),
    (DAYS, {"steps": [step("calc", "python", "output = 17 ** * 23 +")]}, "", "not Python"),
    (DAYS, {"steps": [step("calc", "python", "output = 1000")]}, "", "computes nothing"),
    (DAYS, {"steps": [step("a", "python", "output = 17 * 23"), step("b", "python", "output = {a.output} + 4")]},
     "", "cannot contain {a.output}"),
    (DAYS, {"steps": [step("bad id!", "python", DAYS_CODE)]}, "", "'id'"),
    # where the rules recognise a calculation they plan it, whatever the model wrote or did
    (CALC, {"steps": [step("calc", "python", "output = 17 * 23 + 4")]}, "", RULES_WIN),
    (AVG, {"steps": [step("calc", "python", "output = 3 ** 8")]}, "", RULES_WIN),
    (CALC, None, "timed out", RULES_WIN),
])
def test_finish_falls_back_to_the_rules(query: str, output: object, error: str, word: str) -> None:
    plan = finish(query, output, error)
    assert plan.planner == "rules"
    assert word in plan.fallback
    assert plan.job == rule_plan(query)


def test_finish_accepts_a_good_computation_plan() -> None:
    output = {"steps": [step("calc", "python", DAYS_CODE), step("answer", "llm", "It is {calc.output} days. Why:")]}
    plan = finish(DAYS, output, redundancy=5)
    assert (plan.planner, plan.fallback) == ("llm", "")
    assert plan.job == {"name": DAYS[:60], "redundancy": 5, "steps": [
        {"id": "calc", "kind": "python", "params": {"code": DAYS_CODE}},
        {"id": "answer", "kind": "llm",
         "params": {"prompt": "It is {calc.output} days. Why:", "max_tokens": 128, "stop": ["\n\n"]}}]}
    assert run(plan.job["steps"][0]["params"]["code"]) == 46


def test_the_models_modulo_plan_of_a_percentage_loses_to_the_rules() -> None:
    """The plan a new user was shown: `output = 15% 240`, 15, "3 agreed". The rules plan it, and get 36."""
    plan = finish("What is 15% of 240?", {"steps": [step("calc", "python", "output = 15% 240")]})
    assert (plan.planner, plan.fallback) == ("rules", RULES_WIN)
    assert run(plan.job["steps"][0]["params"]["code"]) == 36
    assert rules_win("What is 15% of 240?") and rules_win("Summarise https://a.example/ then compute 2 + 3")
    assert not rules_win("Write a haiku about autumn") and not rules_win(DAYS)


def test_a_model_plan_whose_python_does_not_parse_is_refused_in_one_line() -> None:
    plan = finish(DAYS, {"steps": [step("calc", "python", "output = (date(2024, 3, 1) - date(2024, 1, 15)).days +")]})
    assert plan.planner == "rules" and "\n" not in plan.fallback
    assert plan.fallback.startswith("step 'calc': the code is not Python (")


@pytest.mark.parametrize(("query", "code", "word"), [
    ("What is 15% of two hundred and forty?", "output = str(15 * 240 / 100) + '%'", "asks for a percentage"),
    ("What is 15% of two hundred and forty?", "x = 15 * 240 / 100\noutput = f'{x} percent'", "asks for a percentage"),
    ("What is 15% of two hundred and forty?", "output = [15 * 240 / 100]", "a list"),
    ("What is 15% of two hundred and forty?", "output = 15 * 240 > 100", "True or False"),
    (DAYS, "d = (15 - 1) + 31\nr = 'about ' + str(d)\noutput = r", "asks for a calculation"),
    (DAYS, "output = ' '.join(['46', 'days'])", "text (a str)"),
])
def test_a_model_plan_whose_result_cannot_answer_the_question_is_refused(query: str, code: str, word: str) -> None:
    plan = finish(query, {"steps": [step("calc", "python", code)]})
    assert plan.planner == "rules" and word in plan.fallback and "\n" not in plan.fallback, plan.fallback


@pytest.mark.parametrize(("query", "code"), [
    ("What is 15% of two hundred and forty?", "output = 15 * 240 / 100"),
    ("What is 15% of two hundred and forty?", "x = 36.0\noutput = int(x) if x == int(x) else x"),
    (DAYS, DAYS_CODE), (DAYS, "import math\noutput = math.floor(45.9) + 1"),
    ("Write a haiku about 3 cats", "output = 'cat ' * 3"),  # not a calculation: text is fine
])
def test_results_that_may_answer_are_not_refused(query: str, code: str) -> None:
    plan = finish(query, {"steps": [step("calc", "python", code)]})
    assert (plan.planner, plan.fallback) == ("llm", "")


def test_a_rule_plan_with_an_absurd_result_is_refused_with_a_user_error() -> None:
    job = {"name": "x", "steps": [{"id": "calc", "kind": "python", "params": {"code": "output = 'thirty-six'"}}]}
    with pytest.raises(UserError, match="^the plan was refused before it ran: step 'calc' sets output to text"):
        vetted("What is 15% of 240?", job)
    job["steps"][0]["params"]["code"] = "output = ("
    with pytest.raises(UserError, match="the code is not Python"):
        vetted("Write a haiku", job)
    assert vetted("What is 15% of 240?", rule_plan("What is 15% of 240?")) == rule_plan("What is 15% of 240?")


def test_finish_accepts_a_scrape_plan() -> None:
    output = {"steps": [step("page", "scrape", "https://example.org/news"),
                        step("answer", "llm", "Text: {page.output}\nSummary:")]}
    plan = finish(NEWS, output)
    assert (plan.planner, plan.fallback) == ("llm", "")
    assert plan.job["steps"][0]["params"] == {"url": "https://example.org/news", "max_chars": PAGE_CHARS}
    assert parse_job(plan.job).steps[1].after == ["page"]


FEW_SHOT = re.findall(r"Request: (.+)\nPlan: (.+)\n", llm_request("x")["prompt"])


@pytest.mark.parametrize(("query", "plan_text"), FEW_SHOT)
def test_few_shot_examples_are_plans_finish_accepts(query: str, plan_text: str) -> None:
    """Accepted as they are, except where the rules recognise the calculation: there the rules plan."""
    plan = finish(query, json.loads(plan_text))
    assert (plan.planner, plan.fallback) == (("rules", RULES_WIN) if rules_win(query) else ("llm", ""))
    check_plan(query, from_model(query, json.loads(plan_text)))


def test_there_are_few_shot_examples() -> None:
    assert len(FEW_SHOT) >= 5 and {q for q, _ in FEW_SHOT} >= {NEWS, "Write a haiku about autumn"}


def test_llm_request() -> None:
    req = llm_request("  What  is\n 2 + 2? ")
    assert req["prompt"].endswith("Request: What is 2 + 2?\nPlan: ")
    assert req["json_schema"] == PLAN_SCHEMA and req["max_tokens"] == PLAN_TOKENS
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    grammar = json_schema_to_gbnf(json.dumps(PLAN_SCHEMA))
    assert "scrape" in grammar and "python" in grammar and "llm" in grammar


@pytest.mark.parametrize("query", ["", "   \n\t ", "x" * 2001, None])
def test_check_query_rejects(query: object) -> None:
    with pytest.raises(UserError):
        check_query(query)


def test_check_query_collapses_whitespace() -> None:
    assert check_query("  sum of\n1,\t 2  ") == "sum of 1, 2"
    assert check_query("x" * 2000) == "x" * 2000


def test_tree_nests_a_chain() -> None:
    job = {"name": "t", "steps": [
        {"id": "a", "kind": "python", "params": {"code": "output = 2 * 3"}},
        {"id": "b", "kind": "python", "params": {"code": "output = inputs['a'] + 1"}, "after": ["a"]},
        {"id": "c", "kind": "llm", "params": {"prompt": "Say {b.output}", "max_tokens": 8}}]}
    lines = tree(Plan(job, "rules", "the model timed out")).splitlines()
    assert lines[0] == "planned by: rules (the model's plan was not used: the model timed out)"
    assert lines[1] == "3 steps at redundancy 3"
    assert len(lines) == 5 and [ln.split()[1] for ln in lines[2:]] == ["a", "b", "c"]
    indents = [ln.index("└─") for ln in lines[2:]]
    assert indents[0] < indents[1] < indents[2]


def test_tree_of_one_step() -> None:
    text = tree(Plan(rule_plan("What is 17 * 23 + 4?"), "llm", model="gemma-3-270m-q4_k_m"))
    first, second = text.splitlines()[:2]
    assert first == "planned by: the model (gemma-3-270m-q4_k_m)"
    assert second == "1 step at redundancy 3"
    assert tree(Plan(rule_plan("What is 17 * 23 + 4?"), "rules")).splitlines()[0] == "planned by: rules"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("query", ["0" * 2000, "1+" * 999 + "1", "9" * 1990 + " + 1", "(" * 1999 + "1",
                                   "primes from 1 to " + "9" * 1980, "5 degrees " + "c" * 1900 + " to x"])
def test_long_adversarial_queries_plan_without_hanging_or_crashing(query: str) -> None:
    """Found by schemathesis: backtracking regexes took cubic time on a run of 2000 digits."""
    job = rule_plan(query)
    assert parse_job(job).steps


INSTRUCT = Instruct("ab" * 32, lambda text: f"<|user|>{text}<|assistant|>")


@pytest.mark.parametrize("query,shape", [
    ("Compute the sum of the squares of 1 to 10 with python, then have the model say it in words", ["python", "llm"]),
    ("What is the average of 4, 8 and 15? Then explain what an average is.", ["python", "llm"]),
    ("Compute 2 + 3, then compute 4 * 5, then explain both results", ["python", "python", "llm"]),
    ("Scrape https://news.example.com/ then list the headlines", ["scrape", "python", "llm"]),
    ("Summarise https://a.example/ and then write a poem about 2 ** 8", ["scrape", "python", "llm", "python"]),
    ("What happened then?", ["llm"]),
])
def test_every_part_of_a_question_is_planned_in_order(query, shape) -> None:
    job = rule_plan(query, instruct=INSTRUCT)
    parse_job(job)
    assert kinds(job) == shape


def test_words_after_computations_see_every_result_before_them_and_ask_the_instruct_model() -> None:
    job = rule_plan("Compute 2 + 3, then compute 4 * 5, then explain both results", instruct=INSTRUCT)
    words = job["steps"][-1]["params"]
    assert words["model"] == INSTRUCT.sha and words["prompt"].startswith("<|user|>") and "stop" not in words
    assert "{calc.output}" in words["prompt"] and "{calc2.output}" in words["prompt"]
    assert [run(s["params"]["code"]) for s in job["steps"][:2]] == [5, 20]
    base = rule_plan("Compute 2 + 3, then explain it")["steps"][-1]["params"]  # no instruct model: the base one
    assert "model" not in base and base["prompt"].endswith("Question: explain it\nAnswer:")


def test_two_models_are_asked_the_same_question_side_by_side() -> None:
    job = rule_plan("Ask two models what the capital of Italy is and compare their answers", instruct=INSTRUCT)
    parse_job(job)
    base, inst, compare = job["steps"]
    assert kinds(job) == ["llm", "ask-model", "python"] and inst["params"]["model"] == INSTRUCT.sha
    assert "What the capital of Italy is" in base["params"]["prompt"] and "compare" not in base["params"]["prompt"]
    assert run(compare["params"]["code"], {"base": " Rome", "instruct": "rome"}) == {
        "base model": "Rome", "instruct model": "rome", "same": True}
    assert kinds(rule_plan("Ask two models what the capital of Italy is")) == ["llm"]  # without one: one model


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_query_gives_a_valid_plan_or_a_clear_error(query) -> None:
    """A user's words, whatever they hold (braces that look like references, URLs, huge numbers), plan to a
    job the job checks accept, or to a UserError (an empty or overlong query): never another exception."""
    try:
        job = rule_plan(query, instruct=INSTRUCT)
    except UserError:
        return
    parse_job(job)
    assert vetted(query, job) is job  # and nothing the rules write is refused as absurd


def test_braces_in_a_query_are_text_not_references() -> None:
    for query, kept in (("Explain {nope.output}", "(nope.output)"),
                        ("What is 2+3 then say {calc.output} twice", "say (calc.output) twice"),
                        ("Summarise {a.output}", "(a.output)")):
        job = rule_plan(query)
        parse_job(job)
        assert kept in job["steps"][-1]["params"]["prompt"] and "{nope" not in json.dumps(job)


def test_a_question_of_too_many_parts_is_refused_with_a_user_error() -> None:
    """"a then " × 285 planned 286 llm steps, the last prompt holding 285 earlier outputs."""
    with pytest.raises(UserError, match=f"asks for 286 things one after another; a plan takes at most {MAX_PARTS}"):
        rule_plan(("a then " * 400)[:2000])
    assert len(rule_plan(" then ".join(f"compute {i} + {i}" for i in range(MAX_PARTS)))["steps"]) == MAX_PARTS
