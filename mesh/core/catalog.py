"""The step kinds a job may use, each with a JSON schema of its parameters: what GET /steps serves (the
editor's palette and forms) and where mesh.core.dag takes the parameter names it accepts. mesh.core.dag still
checks the values (ranges, URLs, a schema's shape; mesh.steps.grammar builds grammars), with messages a
person can act on."""

from __future__ import annotations

import copy

_LLM_PARAMS = {
    "prompt": {"type": "string", "minLength": 1, "description": "text the model continues; "
               "{step.output} inserts an earlier step's output", "x-multiline": True},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 2048, "default": 64},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 0,
                    "description": "0: greedy, replicas compared exactly; above 0: sampled, every replica with "
                                   "one seed, compared as text (or scored: compare 'score')"},
    "seed": {"type": "integer", "minimum": -(1 << 63), "maximum": (1 << 63) - 1,
             "description": "the seed every replica of a sampled step draws with; left out: one drawn from the "
             "job id and step id"},
    "stop": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 8, "default": [],
             "description": "strings that end the text"},
    "model": {"type": "string", "default": "default",
              "description": "'default', a model's SHA-256, or a name registered on the submitting node"},
    "json_schema": {"type": "object", "description": "constrain the output to this JSON schema (the output "
                    "is then the JSON value)"},
}

KINDS: dict[str, dict] = {
    "llm": {
        "title": "Ask the LLM",
        "description": "Continue a prompt with the mesh's default model (Gemma 3 270M, a base model: "
                       "write prompts as text to continue). Greedy by default, so honest replicas agree "
                       "token for token.",
        "params": {"type": "object", "required": ["prompt"], "additionalProperties": False,
                   "properties": _LLM_PARAMS},
        "output": "the generated text (or, with json_schema, the JSON value)",
    },
    "ask-model": {
        "title": "Ask another model",
        "description": "Like llm, on a model the job names: run only by nodes holding that GGUF.",
        "params": {"type": "object", "required": ["prompt", "model"], "additionalProperties": False,
                   "properties": _LLM_PARAMS},
        "output": "the generated text (or, with json_schema, the JSON value)",
    },
    "python": {
        "title": "Run Python",
        "description": "Python run in a bubblewrap sandbox (no network, no files but a small /tmp). The "
                       "outputs of the steps it follows are in the dict `inputs`; whatever it assigns to "
                       "`output` (JSON-serialisable) is the result.",
        "params": {"type": "object", "required": ["code"], "additionalProperties": False,
                   "properties": {"code": {"type": "string", "minLength": 1, "x-multiline": True,
                                           "description": "sets `output`; reads `inputs`"}}},
        "output": "the value the code assigned to `output`",
    },
    "scrape": {
        "title": "Scrape a web page",
        "description": "Load a public page in headless Chromium and extract its text (private and "
                       "loopback addresses are refused unless a node allows them).",
        "params": {"type": "object", "required": ["url"], "additionalProperties": False, "properties": {
            "url": {"type": "string", "minLength": 1, "description": "http:// or https:// URL"},
            "selectors": {"type": "object", "additionalProperties": {"type": "string"}, "maxProperties": 32,
                          "description": "name → CSS selector: the text of each match"},
            "wait_for": {"type": "string", "description": "CSS selector to wait for before reading"},
            "links": {"type": "boolean", "default": True, "description": "also return the page's links"},
            "tables": {"type": "boolean", "default": False, "description": "also return its tables as rows"},
            "max_chars": {"type": "integer", "minimum": 1, "maximum": 200000, "default": 20000},
        }},
        "output": "{url, title, text, ...}: the page's visible text and what the selectors matched",
    },
}

KINDS = {k: KINDS[k] for k in ("python", "llm", "ask-model", "scrape")}  # the order users read them in
REQUIRED = {kind: tuple(spec["params"]["required"]) for kind, spec in KINDS.items()}
PARAMS = {kind: frozenset(spec["params"]["properties"]) for kind, spec in KINDS.items()}


def catalogue(offered: dict[str, int] | None = None) -> dict[str, dict]:
    """Every kind with its schema; `offered` (kind → peers offering it) is added as `workers`."""
    out = copy.deepcopy(KINDS)
    for kind, spec in out.items():
        spec["workers"] = (offered or {}).get("llm" if kind == "ask-model" else kind, 0)
    return out
