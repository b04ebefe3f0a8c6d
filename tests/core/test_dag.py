"""Job files: parsing, validation and the step DAG (mesh.core.dag)."""

from __future__ import annotations

import json

import pytest

from mesh.core.dag import (
    MAX_PARAMS_BYTES,
    MAX_PATTERN_SIZE,
    Job,
    check_request,
    load_job_text,
    nested_repeat,
    params_problem,
    parse_job,
    pattern_size,
    render,
)
from mesh.core.quorum import QuorumRule
from mesh.errors import JobError, UserError
from mesh.wire.canonical import canonical

pytestmark = pytest.mark.timeout(60)


def job(*steps: dict, **extra) -> dict:
    return {"name": "t", "steps": list(steps), **extra}


def py(sid: str, code: str = "output = 1", **extra) -> dict:
    return {"id": sid, "kind": "python", "params": {"code": code}, **extra}


def llm(sid: str, prompt: str = "hi", **params) -> dict:
    return {"id": sid, "kind": "llm", "params": {"prompt": prompt, **params}}


def error_of(data, **kw) -> str:
    with pytest.raises(JobError) as info:
        if isinstance(data, str):
            load_job_text(data, "job.json")
        else:
            parse_job(data, "job.json", **kw)
    assert isinstance(info.value, UserError)
    msg = str(info.value)
    assert "\n" not in msg  # one line for the CLI
    return msg


# -- valid jobs -------------------------------------------------------------------------------------------

def test_valid_job_with_python_and_llm_steps():
    text = json.dumps(job(py("numbers", "output = list(range(5))"),
                          llm("summary", "Summarise {numbers.output}", max_tokens=32, seed=7, stop=["\n"]),
                          redundancy=5, quorum="majority", timeout=60, max_replicas=7))
    j = load_job_text(text, "job.json")
    assert isinstance(j, Job)
    assert j.name == "t"
    assert [s.id for s in j.steps] == ["numbers", "summary"]
    assert [s.kind for s in j.steps] == ["python", "llm"]
    assert j.redundancy == 5 and j.quorum == QuorumRule("majority") and j.quorum.needed(5) == 3
    assert j.timeout == 60.0 and isinstance(j.timeout, float)
    assert j.replica_limit == 7
    assert j.step("summary").params == {"prompt": "Summarise {numbers.output}", "max_tokens": 32, "seed": 7,
                                        "stop": ["\n"]}
    assert j.step("summary").after == ["numbers"]
    assert j.order() == ["numbers", "summary"]


def test_defaults():
    j = parse_job(job(py("a")))
    assert j.name == "t" and j.redundancy == 3 and j.quorum.spec == "majority"
    assert j.timeout == 300.0 and j.max_replicas == 0 and j.replica_limit == 6
    assert parse_job({"steps": [py("a")]}).name == "job"


def test_order_respects_dependencies_and_file_order_breaks_ties():
    j = parse_job(job(
        py("d", after=["b", "c"]),
        py("c", after=["a"]),
        py("b", after=["a"]),
        py("a"),
        py("z"),
    ))
    order = j.order()
    assert sorted(order) == ["a", "b", "c", "d", "z"]
    pos = {s: i for i, s in enumerate(order)}
    for s in j.steps:
        for dep in s.after:
            assert pos[dep] < pos[s.id], f"{dep} must run before {s.id}"
    # stable: among the steps that are ready, the earlier one in the file goes first
    assert order == ["a", "c", "b", "d", "z"]


def test_order_is_the_file_order_when_there_are_no_dependencies():
    j = parse_job(job(py("x"), py("b"), py("a"), py("m")))
    assert j.order() == ["x", "b", "a", "m"]


def test_reference_in_params_adds_an_implicit_dependency():
    j = parse_job(job(
        llm("b", "use {a.output} and {a.output} again"),
        py("a"),
        llm("c", "{b.output}"),
    ))
    assert j.step("b").after == ["a"]
    assert j.step("c").after == ["b"]
    assert j.order() == ["a", "b", "c"]


def test_references_nested_in_lists_and_dicts_count():
    j = parse_job(job(py("a"), py("b"), llm("c", "x", stop=["{a.output}", "{b.output}"])))
    assert sorted(j.step("c").after) == ["a", "b"]


def test_after_is_deduplicated_and_kept_with_implicit_deps():
    j = parse_job(job(py("a"), py("b"), llm("c", "{a.output}", ) | {"after": ["b", "b", "a"]}))
    assert j.step("c").after == ["b", "a"]


def test_to_json_round_trips():
    j = parse_job(job(py("a"), llm("b", "{a.output}"), redundancy=4, quorum="3-of-4"))
    again = parse_job(j.to_json())
    assert again.to_json() == j.to_json()
    assert again.redundancy == 4 and again.quorum.k == 3


def test_overrides_replace_the_files_values():
    j = parse_job(job(py("a"), redundancy=3, quorum="majority"), redundancy=5, quorum="unanimous")
    assert j.redundancy == 5 and j.quorum.spec == "unanimous"
    with pytest.raises(JobError):
        parse_job(job(py("a")), redundancy=0)


# -- render -----------------------------------------------------------------------------------------------

def test_render_substitutes_strings_verbatim():
    assert render("say {a.output}!", {"a": 'he said "hi"\n'}) == 'say he said "hi"\n!'


@pytest.mark.parametrize("value", [
    {"b": 1, "a": [1, 2.5, None, True]},
    [3, "x"],
    42,
    1.5,
    None,
    True,
    {"ü": "é"},
])
def test_render_substitutes_other_values_as_canonical_json(value):
    assert render("{a.output}", {"a": value}) == canonical(value).decode()
    assert render("<{a.output}>", {"a": {"b": 1, "a": 2}}) == '<{"a":2,"b":1}>'


def test_render_walks_lists_and_dicts_and_leaves_other_values():
    params = {"prompt": "{x.output} / {y.output}", "stop": ["{x.output}", "."], "max_tokens": 5, "seed": None}
    out = render(params, {"x": "X", "y": [1]})
    assert out == {"prompt": "X / [1]", "stop": ["X", "."], "max_tokens": 5, "seed": None}
    assert params["prompt"] == "{x.output} / {y.output}"  # not mutated


def test_render_does_not_reinterpret_substituted_text():
    assert render("{a.output}", {"a": "{b.output}", "b": "nope"}) == "{b.output}"


# -- errors -----------------------------------------------------------------------------------------------

def test_malformed_json_reports_line_and_column():
    msg = error_of('{\n  "steps": [\n    {"id": "a",, "kind": "python"}\n  ]\n}')
    assert msg.startswith("job.json: not valid JSON")
    assert "line 3" in msg and "column 16" in msg


def test_empty_text_is_malformed_json():
    assert "line 1 column 1" in error_of("")


def test_cycle_names_the_cycle():
    msg = error_of(job(py("a", after=["c"]), py("b", after=["a"]), py("c", after=["b"]), py("free")))
    assert "cycle" in msg
    cycle_part = msg.split("cycle")[1]
    for sid in ("a", "b", "c"):
        assert sid in cycle_part
    assert "free" not in msg


def test_cycle_through_implicit_references():
    msg = error_of(job(llm("a", "{b.output}"), llm("b", "{a.output}")))
    assert "cycle" in msg and "a" in msg and "b" in msg


def test_self_dependency_is_a_cycle():
    assert "cycle" in error_of(job(py("a", after=["a"])))


@pytest.mark.parametrize("kind", ["shell", "Python", "", None, 3])
def test_unknown_kind(kind):
    msg = error_of(job({"id": "a", "kind": kind, "params": {"code": "x"}}))
    assert "unknown kind" in msg and "'a'" in msg and "python, llm" in msg


def test_missing_reference_in_params():
    msg = error_of(job(py("a"), llm("b", "use {ghost.output}")))
    assert "'b'" in msg and "missing step 'ghost'" in msg


def test_missing_reference_in_after():
    msg = error_of(job(py("a"), py("b", after=["a", "ghost"])))
    assert "'b'" in msg and "missing step 'ghost'" in msg


def test_duplicate_id():
    msg = error_of(job(py("a"), py("b"), py("a")))
    assert "duplicate step id 'a'" in msg and "step 3" in msg


@pytest.mark.parametrize("r", [0, 17, -1, "3", 2.5, True, None])
def test_bad_redundancy(r):
    msg = error_of(job(py("a"), redundancy=r))
    assert "redundancy must be an integer from 1 to 16" in msg and repr(r) in msg


@pytest.mark.parametrize("q", ["most", "2 of 3", "0-of-3", "4-of-3", "2-of-17", "-1-of-2", "", 3, None, ["majority"]])
def test_bad_quorum_string(q):
    msg = error_of(job(py("a"), quorum=q))
    assert "quorum" in msg


@pytest.mark.parametrize("q,r,k", [("2-of-5", 3, 2), ("1-of-1", 3, 1), ("16-of-16", 2, 16), ("3-of-4", 9, 3)])
def test_k_of_n_quorum_sets_redundancy_to_n(q, r, k):
    j = parse_job(job(py("a"), redundancy=r, quorum=q))
    assert j.redundancy == int(q.split("-of-")[1])
    assert j.quorum.k == k and j.quorum.needed(j.redundancy) == k
    assert j.replica_limit == 2 * j.redundancy


def test_k_of_n_redundancy_is_checked_against_max_replicas():
    msg = error_of(job(py("a"), quorum="2-of-5", max_replicas=4))
    assert "max_replicas" in msg
    assert parse_job(job(py("a"), quorum="2-of-5", max_replicas=5)).replica_limit == 5


def test_unknown_job_field():
    msg = error_of(job(py("a"), priority=9))
    assert "unknown job field 'priority'" in msg


def test_unknown_step_field():
    msg = error_of(job(py("a") | {"retries": 2}))
    assert "unknown field 'retries'" in msg and "step 1" in msg


@pytest.mark.parametrize("step,param", [(py("a") | {"params": {"code": "x", "shell": "ls"}}, "shell"),
                                        (llm("a", "x", top_k=7), "top_k")])
def test_unknown_params(step, param):
    msg = error_of(job(step))
    assert f"unknown {step['kind']} parameter {param!r}" in msg


@pytest.mark.parametrize("params", [{}, {"code": ""}, {"code": "   \n"}, {"code": 3}, {"code": None}])
def test_python_step_needs_code(params):
    msg = error_of(job({"id": "a", "kind": "python", "params": params}))
    assert "'code'" in msg and "python step" in msg


@pytest.mark.parametrize("params", [{}, {"prompt": ""}, {"prompt": ["x"]}, {"max_tokens": 5}])
def test_llm_step_needs_prompt(params):
    msg = error_of(job({"id": "a", "kind": "llm", "params": params}))
    assert "'prompt'" in msg and "llm step" in msg


def test_missing_params_means_missing_code():
    assert "'code'" in error_of(job({"id": "a", "kind": "python"}))


@pytest.mark.parametrize("extra,needle", [
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 4096}, "max_tokens"), ({"max_tokens": True}, "max_tokens"),
    ({"seed": "1"}, "seed"), ({"seed": False}, "seed"),
    ({"stop": "x"}, "stop"), ({"stop": [""]}, "stop"), ({"stop": ["a"] * 9}, "stop"),
])
def test_llm_parameter_types(extra, needle):
    assert needle in error_of(job(llm("a", "p", **extra)))


# -- json_schema: its shape is checked here, llama.cpp's grammar in mesh.steps.grammar ----------------------

def nested(levels: int) -> dict:
    """A schema `levels` objects deep."""
    schema: dict = {"type": "object"}
    for _ in range(levels - 1):
        schema = {"type": "object", "additionalProperties": schema}
    return schema


@pytest.mark.parametrize("schema,needle", [
    ("{}", "must be a JSON schema object of at most 16 KiB"),
    (["type", "object"], "must be a JSON schema object of at most 16 KiB"),
    ({"type": "object", "description": "x" * 17_000}, "must be a JSON schema object of at most 16 KiB"),
    (nested(33), "must nest at most 32 levels deep"),
    (nested(50_000), "must nest at most 32 levels deep"),  # no RecursionError on the way
])
def test_json_schema_shape_is_checked_by_the_core(schema, needle):
    assert error_of(job(llm("a", "p", json_schema=schema))) == f"job.json: step 'a': json_schema: {needle}"


def test_the_core_leaves_the_grammar_to_mesh_steps_and_never_imports_llama_cpp():
    import subprocess
    import sys

    code = ("import sys; from mesh.core.dag import parse_job; parse_job({'steps': [{'id': 'a', 'kind': 'llm', "
            "'params': {'prompt': 'p', 'json_schema': {'type': 'bogus'}}}]}); "
            "assert 'llama_cpp' not in sys.modules, 'mesh.core imported llama_cpp'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("kind", ["llm", "ask-model"])
def test_a_schema_llama_cpp_cannot_use_is_refused_where_jobs_are_accepted(kind):
    from mesh.steps.grammar import check_grammars

    params = {"prompt": "p", "json_schema": {"type": "bogus"}} | ({"model": "other"} if kind == "ask-model" else {})
    parsed = parse_job(job(py("first"), {"id": "a", "kind": kind, "params": params}), "job.json")
    with pytest.raises(JobError) as info:
        check_grammars(parsed, "job.json")
    assert isinstance(info.value, UserError)
    assert str(info.value).startswith("job.json: step 'a': json_schema: llama.cpp cannot build a grammar from it (")


def test_usable_schemas_pass_the_grammar_check_and_build_a_grammar():
    from mesh.steps.grammar import build_grammar, check_grammars

    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    check_grammars(parse_job(job(llm("a", "p", json_schema=schema), llm("b", "p"), py("c"))))
    check_grammars(parse_job(job(llm("a", "p", json_schema=nested(32)))))  # as deep as the core allows
    assert build_grammar(schema) is not None


def test_a_worker_given_an_unusable_schema_fails_the_step_instead_of_crashing():
    from mesh.errors import StepFailed
    from mesh.steps.grammar import build_grammar

    with pytest.raises(StepFailed, match="^json_schema: llama.cpp cannot build a grammar from it"):
        build_grammar({"type": "bogus"})


@pytest.mark.parametrize("data,needle", [
    ([], "JSON object"),
    ('"steps"', "JSON object"),  # JSON text whose value is a string
    ({"steps": []}, "non-empty list"),
    ({"steps": {}}, "non-empty list"),
    ({}, "non-empty list"),
    ({"name": 3, "steps": [py("a")]}, "'name'"),
    ({"steps": [py("a")], "timeout": 0}, "timeout"),
    ({"steps": [py("a")], "timeout": 3601}, "timeout"),
    ({"steps": [py("a")], "timeout": "60"}, "timeout"),
    ({"steps": [py("a")], "max_replicas": 2}, "max_replicas"),
    ({"steps": [py("a")], "max_replicas": 65}, "max_replicas"),
    ({"steps": ["a"]}, "not an object"),
    ({"steps": [{"kind": "python", "params": {"code": "x"}}]}, "'id'"),
    ({"steps": [py("a b")]}, "'id'"),
    ({"steps": [py("a" * 65)]}, "'id'"),
    ({"steps": [py("a") | {"params": "x"}]}, "'params'"),
    ({"steps": [py("a", after="b")]}, "'after'"),
    ({"steps": [py("a", after=[1])]}, "'after'"),
])
def test_other_structural_errors(data, needle):
    assert needle in error_of(data)


def test_too_many_steps():
    assert "at most 1000" in error_of(job(*[py(f"s{i}") for i in range(1001)]))


def test_errors_name_the_source():
    with pytest.raises(JobError, match=r"^my-job\.json: "):
        load_job_text(json.dumps(job(py("a"), py("a"))), "my-job.json")


# -- earlier outputs reach python code as data only -------------------------------------------------------

def test_a_placeholder_in_python_code_is_refused_with_what_to_do_instead():
    job = {"steps": [{"id": "page", "kind": "scrape", "params": {"url": "https://example.org/"}},
                     {"id": "calc", "kind": "python", "params": {"code": "output = len('{page.output}')"}}]}
    with pytest.raises(JobError) as info:
        parse_job(job)
    assert "python code cannot contain {page.output}" in str(info.value)
    assert "inputs['page']" in str(info.value)


def test_python_steps_get_earlier_outputs_as_inputs_and_their_code_untouched():
    import random

    from mesh.core.jobrun import JobRun
    from mesh.core.policy import Candidate
    from mesh.wire.canonical import digest

    hostile = "'); import os; os.system('x'); ('"  # what a scraped page could make a step's output
    job = parse_job({"redundancy": 1, "steps": [
        {"id": "a", "kind": "python", "params": {"code": "output = 'x'"}},
        {"id": "b", "kind": "python", "after": ["a"], "params": {"code": "output = inputs['a'].upper()"}},
        {"id": "c", "kind": "llm", "after": ["a"], "params": {"prompt": "Text: {a.output}\nSummary:"}}]})
    run = JobRun("j", job, random.Random(1))
    workers = {k: [Candidate(f"w{i}", 0.5, f"10.0.{i}.0/24", 0) for i in range(3)] for k in ("python", "llm:default")}
    first = run.advance(workers, 0.0)
    assert [d.step for d in first] == ["a"]
    run.on_result("a", first[0].node, True, digest(hostile), hostile, {"cpu_s": 0.01}, "")
    later = {d.step: d for d in run.advance(workers, 1.0)}
    assert later["b"].params == {"code": "output = inputs['a'].upper()", "inputs": {"a": hostile}}
    assert later["c"].params["prompt"] == f"Text: {hostile}\nSummary:"  # prompts may still template text


def test_a_job_file_nested_too_deeply_is_one_clear_error():
    with pytest.raises(JobError, match="nested too deeply"):
        load_job_text("[" * 100_000, "deep.json")


def test_render_refuses_before_building_params_past_one_request():
    """2,500 copies of a 400 KB output in one URL: measured first and refused, never built (it took a
    submitting node 4.7 GB); a little under the cap is rendered as before."""
    big = "x" * 400_000
    with pytest.raises(JobError, match=f"at most {MAX_PARAMS_BYTES:,}"):
        render({"url": "http://h/" + "{a.output}" * 2_500}, {"a": big})
    fits = "y" * (MAX_PARAMS_BYTES - 100)
    assert render({"prompt": "{a.output}"}, {"a": fits}) == {"prompt": fits}
    assert params_problem({"prompt": fits}) == ""
    assert "at most" in params_problem({"code": "output = 1", "inputs": {"a": big, "b": big, "c": big}})


@pytest.mark.parametrize("schema", [
    {"type": "array", "items": {"type": "string"}, "minItems": 40_000_000},
    {"type": "object", "properties": {"a": {"type": "string", "maxLength": 10 ** 9}}},
    {"type": "array", "items": {"type": "string"}, "maxItems": -1},
    {"type": "array", "items": {"type": "string"}, "minItems": 2.5},
    {"type": "array", "items": {"anyOf": [{"type": "string", "minLength": True}]}},
])
def test_a_json_schema_whose_counts_would_write_out_millions_of_rules_is_refused(schema):
    step = {"id": "a", "kind": "llm", "params": {"prompt": "list", "json_schema": schema}}
    with pytest.raises(JobError, match="must be a whole number from 0 to 1000"):
        parse_job({"steps": [step]})
    ok = {"type": "array", "items": {"type": "string", "maxLength": 1000}, "minItems": 0, "maxItems": 1000}
    parse_job({"steps": [{**step, "params": {"prompt": "list", "json_schema": ok}}]})


@pytest.mark.parametrize("pattern", ["^[a-z]{100000000}$", "^(ab{100}){100}$", "((a{20}){20}){20}",
                                     "x{5000,}", "a{1,99999999999}", "(a|b){5000}"])
def test_a_pattern_whose_repetitions_would_write_out_a_huge_grammar_is_refused(pattern):
    """Found by this project's red team (2026-12-06): llama.cpp's converter writes a pattern's counted
    repetitions out in full, and "^[a-z]{100000000}$" (40 bytes) took it 700 MB of grammar and 2 GB."""
    assert pattern_size(pattern) > MAX_PATTERN_SIZE
    step = {"id": "a", "kind": "llm", "params": {"prompt": "p", "json_schema": {"type": "string", "pattern": pattern}}}
    with pytest.raises(JobError, match="repeats too much"):
        parse_job({"steps": [step]})
    with pytest.raises(JobError, match="repeats too much"):  # a worker's own check of a request
        check_request("llm", step["params"])


BOMB = "^(" + "|".join(["[a-z]*"] * 40) + ")*$"  # 317 bytes: one token never ended in llama.cpp's sampler


@pytest.mark.parametrize("pattern", [BOMB, "(a*)*", "(a+)+", "(a?)*", "([a-z]+ ?)*", "(|a)*", "(?:a*)+",
                                     "((a*){2})*", "(x(a+)*y)z", "(a{0,3}){2,}"])
def test_a_pattern_that_repeats_a_repetition_is_refused(pattern):
    """Found by this project's attack round on llm steps (2026-12-06): BOMB passed every size limit, and
    its step held each worker's model runner on one token for good (its timeout passed, the runner
    kept going, and every later llm step on that worker failed: "no answer to RunStep within 75 s")."""
    assert nested_repeat(pattern)
    step = {"id": "a", "kind": "llm", "params": {"prompt": "p", "json_schema": {"type": "string", "pattern": pattern}}}
    with pytest.raises(JobError, match="repeats a repetition"):
        parse_job({"steps": [step]})
    assert "repeats a repetition" in params_problem(step["params"])  # a worker's own check of a request


@pytest.mark.parametrize("pattern", ["^[a-z]+( [a-z]+)*$", "(\\d+\\.){3}\\d+", "(a|a)*", "(ab*){3,}",
                                     "^(?:[A-Z][a-z]+)(?: [A-Z][a-z]+)*$", "\\(a*\\)*", "[(*]+", "(a{2,5})*"])
def test_patterns_that_split_their_text_one_way_are_kept(pattern):
    assert not nested_repeat(pattern)
    parse_job({"steps": [{"id": "a", "kind": "llm", "params": {"prompt": "p", "json_schema": {
        "type": "string", "pattern": pattern}}}]})


@pytest.mark.parametrize("pattern, size", [("^\\d{3}-\\d{4}$", 8), ("^[A-Z][a-z]{2,20}$", 21), ("(ab|cd){3}", 12),
                                           ("[]{}]x{2}", 3), ("a{b}", 4), ("[a-z]{4096}", 4096)])
def test_ordinary_patterns_are_measured_and_kept(pattern, size):
    assert pattern_size(pattern) == size
    parse_job({"steps": [{"id": "a", "kind": "llm", "params": {"prompt": "p", "json_schema": {
        "type": "string", "pattern": pattern}}}]})


def test_a_pattern_that_becomes_a_bomb_once_an_output_is_rendered_in_fails_before_it_is_sent():
    """"^[{a.output}]$" is a character class when the job is checked; with step a's output
    "a][a-z]{30000000}[a" rendered in, it was a grammar bomb on every worker (each model runner grew
    ~1 GB, the submitter paid nothing: its step failed)."""
    step = {"id": "b", "kind": "llm", "after": ["a"], "params": {
        "prompt": "hi", "json_schema": {"type": "string", "pattern": "^[{a.output}]$"}}}
    parse_job({"steps": [{"id": "a", "kind": "python", "params": {"code": "output = 1"}}, step]})
    rendered = render(step["params"], {"a": "a][a-z]{30000000}[a"})
    assert "repeats too much" in params_problem(rendered)
    assert params_problem(render(step["params"], {"a": "a-z"})) == ""


@pytest.mark.parametrize("job, says", [
    ({"name": "half \ud83d", "steps": []}, r"lone surrogate \(\\ud83d\)"),
    ({"steps": [{"id": "a", "kind": "python", "params": {"code": "s = '\udfff'"}}]}, "lone surrogate"),
    ({"steps": [{"id": "a", "kind": "python", "params": {"code": "output = 1", "n": float("nan")}}]}, "NaN"),
    ({"steps": [{"id": "a", "kind": "python", "params": {"code": "output = 1", "n": float("inf")}}]}, "infinity"),
])
def test_a_job_without_a_canonical_form_is_refused_before_anything_journals_it(job, says):
    """Everything journaled and signed goes through canonical(); a job that has no such form failed only
    later, inside the core, and its journal could not be replayed (tests/security/test_api_hardening.py)."""
    with pytest.raises(JobError, match=says):
        parse_job(job)
    whole = {"name": "a whole emoji \U0001f600", "steps": [{"id": "a", "kind": "python", "params": {"code": "output = 1"}}]}
    assert parse_job(whole).name.endswith("\U0001f600")
