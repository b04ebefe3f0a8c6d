"""Whether llama.cpp can turn an llm step's `json_schema` into a grammar. This needs llama_cpp, which the
sans-I/O core (mesh.core) must not import, so mesh.core.dag keeps only the structural checks (an object,
its size, its depth) and whoever accepts a job — the node's API, the CLI — runs `check_grammars` too,
before anything runs. A worker's model runner builds the grammar with `build_grammar`, which turns a
schema that slipped through into a failed step instead of a crashed actor."""

from __future__ import annotations

import json
from typing import Any

from mesh.core.dag import MODEL_KINDS, Job
from mesh.errors import JobError, StepFailed
from mesh.steps.llamalog import quiet_llama


def _to_gbnf(schema: Any) -> tuple[str, str]:
    """(the GBNF grammar, '') or ('', why llama.cpp cannot build one)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # pure Python, no model needed

    try:
        return json_schema_to_gbnf(json.dumps(schema)), ""
    # llama.cpp's pure-Python converter trusts the schema's shape, so a schema it cannot translate raises
    # anything (`"properties": [1]` raised AttributeError: POST /jobs answered a 500); each is a reason here
    except Exception as exc:  # noqa: BLE001
        return "", f"llama.cpp cannot build a grammar from it ({type(exc).__name__}: {str(exc)[:200]})"


def schema_error(schema: Any) -> str:
    """'' when llama.cpp can turn this JSON schema into a grammar; otherwise why not."""
    return _to_gbnf(schema)[1]


def check_grammars(job: Job, source: str = "job") -> None:
    """Raise JobError for the first model step whose json_schema llama.cpp cannot use, worded as
    mesh.core.dag words its other parameter errors."""
    for step in job.steps:
        if step.kind in MODEL_KINDS and "json_schema" in step.params:
            why = schema_error(step.params["json_schema"])
            if why:
                raise JobError(f"{source}: step {step.id!r}: json_schema: {why}")


def build_grammar(schema: Any):
    """The llama.cpp grammar for a step's (rendered) schema; StepFailed when it cannot be built."""
    from llama_cpp import LlamaGrammar

    quiet_llama()
    gbnf, why = _to_gbnf(schema)
    if why:
        raise StepFailed(f"json_schema: {why}")
    return LlamaGrammar.from_string(gbnf, verbose=False)
