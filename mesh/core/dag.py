"""Job files: parsing, validation and the step DAG. Everything that can be wrong with a job is found
here, before anything runs, and reported as one JobError line."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mesh.core.catalog import KINDS, PARAMS, REQUIRED
from mesh.core.compare import Comparator
from mesh.core.quorum import QuorumRule
from mesh.errors import JobError
from mesh.wire.canonical import canonical
from mesh.wire.envelope import DEFAULT_FRAME_CAP

if TYPE_CHECKING:
    import networkx as nx

STEP_KINDS = tuple(KINDS)
MODEL_KINDS = ("llm", "ask-model")  # run by a model runner; ask-model names its model
REF = re.compile(r"\{([A-Za-z0-9_-]+)\.output\}")
STEP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_STEPS = 1000


def _networkx():
    """networkx, imported at the first job, not with this module: ~14 MiB an idle node (and every `mesh`
    command that parses no job) would otherwise carry."""
    import networkx

    return networkx


@dataclass
class Step:
    id: str
    kind: str
    params: dict
    after: list[str] = field(default_factory=list)
    compare: str = "exact"  # see mesh.core.compare

    @property
    def needs(self) -> str:
        """The capability a worker must offer: 'python', or 'llm:<model sha256>' ('llm:default' for the
        default model)."""
        return f"llm:{self.params.get('model', 'default')}" if self.kind in MODEL_KINDS else self.kind


@dataclass
class Job:
    name: str
    steps: list[Step]
    redundancy: int = 3
    quorum: QuorumRule = field(default_factory=lambda: QuorumRule.parse("majority"))
    timeout: float = 300.0
    max_replicas: int = 0  # 0 → 2 × redundancy
    adaptive: int = 0  # N > 0: a worker with N validated results in a row may run a step alone, checked 1/N
    _order: list[str] | None = field(default=None, repr=False, compare=False)

    @property
    def replica_limit(self) -> int:
        return self.max_replicas or 2 * self.redundancy

    def order(self) -> list[str]:
        """Step ids in a dependency-respecting order (stable: file order breaks ties); computed once, as
        the simulator starts thousands of runs of one job."""
        if self._order is None:
            nx = _networkx()
            index = {s.id: i for i, s in enumerate(self.steps)}
            self._order = list(nx.lexicographical_topological_sort(self.graph(), key=index.__getitem__))
        return list(self._order)

    def graph(self) -> nx.DiGraph:
        g = _networkx().DiGraph()
        for s in self.steps:
            g.add_node(s.id)
            g.add_edges_from((dep, s.id) for dep in s.after)
        return g

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def to_json(self) -> dict:
        return {
            "name": self.name, "redundancy": self.redundancy, "quorum": self.quorum.spec,
            "timeout": self.timeout, "max_replicas": self.replica_limit,
            "adaptive": self.adaptive,
            "steps": [{"id": s.id, "kind": s.kind, "params": s.params, "after": s.after, "compare": s.compare}
                      for s in self.steps],
        }


class _Twice(ValueError):
    """A key given twice in one object of a job file: the first would be dropped without a word."""


def _one_each(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        raise _Twice(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out


def load_job_text(text: str, source: str = "job") -> Job:
    try:
        data = json.loads(text, object_pairs_hook=_one_each)
    except json.JSONDecodeError as exc:
        raise JobError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except _Twice as exc:
        raise JobError(f"{source}: the key {str(exc)!r} appears twice in one object (JSON keeps only the last)") from None
    except RecursionError:
        raise JobError(f"{source}: nested too deeply to be a job") from None
    return parse_job(data, source)


def _refs(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(REF.findall(value))
    if isinstance(value, list):
        return set().union(*map(_refs, value)) if value else set()
    if isinstance(value, dict):
        return set().union(*map(_refs, value.values())) if value else set()
    return set()


def parse_job(data: Any, source: str = "job", redundancy: int | None = None, quorum: str | None = None) -> Job:
    """Validate a decoded job object; `redundancy`/`quorum` override the file's values. Checks run in a
    fixed order (job fields, then each step in file order, then references, then cycles), so a job with
    several mistakes is always refused for the same one."""
    if not isinstance(data, dict):
        raise JobError(f"{source}: a job is a JSON object with a 'steps' list")
    problem = _not_canonical(data)
    if problem:
        raise JobError(f"{source}: {problem}")
    unknown = set(data) - {"name", "redundancy", "quorum", "steps", "timeout", "max_replicas", "adaptive"}
    if unknown:
        raise JobError(f"{source}: unknown job field {sorted(unknown)[0]!r}")
    name = data.get("name", "job")
    if not isinstance(name, str):
        raise JobError(f"{source}: 'name' must be a string")
    r, rule = _parse_quorum(data, source, redundancy, quorum)
    timeout, max_rep, adaptive = _parse_limits(data, source, r, rule)
    steps = _parse_steps(data.get("steps"), source)
    job = Job(name=name, steps=steps, redundancy=r, quorum=rule, timeout=float(timeout), max_replicas=max_rep,
              adaptive=adaptive)
    g = job.graph()
    nx = _networkx()
    if not nx.is_directed_acyclic_graph(g):
        cycle = " -> ".join(u for u, _ in nx.find_cycle(g))
        raise JobError(f"{source}: steps form a cycle: {cycle}")
    return job


def _not_canonical(data: Any) -> str:
    """'' when `data` has the canonical form everything journaled and signed goes through, else why not. A
    job with a lone surrogate in it ("\\ud800", as JavaScript sends half an emoji) was taken, failed at its
    first step with a traceback, broke GET /jobs and left a journal the node could not start from."""
    try:
        canonical(data)
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end] if isinstance(exc.object, str) else ""
        return (f"its text holds a lone surrogate ({bad.encode('unicode_escape').decode()}), which is not "
                f"Unicode: send every character whole")
    except ValueError:
        return "it holds a number JSON has no form for (NaN or infinity)"
    except RecursionError:
        return ""  # (nested too deep: the field's own check names where)
    except TypeError as exc:
        return f"it holds a value JSON has no form for ({exc})"
    return ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_quorum(data: dict, source: str, redundancy: int | None, quorum: str | None) -> tuple[int, QuorumRule]:
    """(redundancy, quorum rule); a K-of-N rule fixes the redundancy at N."""
    r = redundancy if redundancy is not None else data.get("redundancy", 3)
    if not _is_int(r) or not 1 <= r <= 16:
        raise JobError(f"{source}: redundancy must be an integer from 1 to 16, got {r!r}")
    try:
        rule = QuorumRule.parse(quorum if quorum is not None else data.get("quorum", "majority"), r)
    except JobError as exc:
        raise JobError(f"{source}: {exc}") from None
    return rule.n or r, rule


def _parse_limits(data: dict, source: str, r: int, rule: QuorumRule) -> tuple[int | float, int, int]:
    """(timeout, max_replicas, adaptive), each checked against the redundancy and rule already parsed."""
    timeout = data.get("timeout", 300.0)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 1 <= timeout <= 3600:
        raise JobError(f"{source}: timeout must be seconds from 1 to 3600")
    max_rep = data.get("max_replicas", 0)
    if not _is_int(max_rep) or not (max_rep == 0 or r <= max_rep <= 64):
        raise JobError(f"{source}: max_replicas must be 0 (auto) or from redundancy to 64")
    adaptive = data.get("adaptive", 0)
    if not _is_int(adaptive) or not 0 <= adaptive <= 1000:
        raise JobError(f"{source}: adaptive must be 0 (off) or the run of validated results (1-1000) that "
                       "lets a worker run a step alone")
    if adaptive and rule.k:
        raise JobError(f"{source}: adaptive replication works with the majority or unanimous rule, not {rule.spec}")
    return timeout, max_rep, adaptive


def _parse_steps(raw_steps: Any, source: str) -> list[Step]:
    """Each step checked on its own, then every reference (in 'after' or a `{step.output}`) resolved:
    a step referred to without being listed in 'after' is added to it."""
    if not isinstance(raw_steps, list) or not raw_steps:
        raise JobError(f"{source}: 'steps' must be a non-empty list")
    if len(raw_steps) > MAX_STEPS:
        raise JobError(f"{source}: at most {MAX_STEPS} steps")
    seen: set[str] = set()
    steps = [_parse_step(raw, i, seen, source) for i, raw in enumerate(raw_steps)]
    for s in steps:
        for dep in set(s.after) | _refs(s.params):
            if dep not in seen:
                raise JobError(f"{source}: step {s.id!r} refers to missing step {dep!r}")
            if dep not in s.after:
                s.after.append(dep)
    return steps


def _parse_step(raw: Any, i: int, seen: set[str], source: str) -> Step:
    where = f"{source}: step {i + 1}"
    if not isinstance(raw, dict):
        raise JobError(f"{where} is not an object")
    unknown = set(raw) - {"id", "kind", "params", "after", "compare"}
    if unknown:
        raise JobError(f"{where} has unknown field {sorted(unknown)[0]!r}")
    sid = raw.get("id")
    if not isinstance(sid, str) or not STEP_ID.match(sid):
        raise JobError(f"{where}: 'id' must be 1-64 letters, digits, '-' or '_'")
    if sid in seen:
        raise JobError(f"{where}: duplicate step id {sid!r}")
    seen.add(sid)
    kind = raw.get("kind")
    if kind not in STEP_KINDS:
        raise JobError(f"{source}: step {sid!r} has unknown kind {kind!r} (known: {', '.join(STEP_KINDS)})")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise JobError(f"{source}: step {sid!r}: 'params' must be an object")
    after = raw.get("after", [])
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise JobError(f"{source}: step {sid!r}: 'after' must be a list of step ids")
    _check_params(sid, kind, params, source)
    compare = raw.get("compare", default_compare(kind, params))
    try:
        Comparator(compare if isinstance(compare, str) else repr(compare))
    except JobError as exc:
        raise JobError(f"{source}: step {sid!r}: {exc}") from None
    if compare == "score" and (kind not in MODEL_KINDS or "json_schema" in params):
        raise JobError(f"{source}: step {sid!r}: compare 'score' is for llm steps without a json_schema: "
                       "verifiers check that every token was the model's top choice (greedy) or the seeded "
                       "draw (sampled)")
    return Step(sid, kind, dict(params), list(dict.fromkeys(after)), compare)


MAX_SCORED = 4096  # tokens a verifier is asked to score
MIN_TEMPERATURE = 0.01  # the lowest temperature a sampled step may ask for
# a seed is at most 64 bits, as OpenAI's: a stranger's 4,300-digit seed made each token's noise (a SHA-256 of
# its decimal digits, mesh.steps.sampling) cost 269 µs instead of 0.2, and a 200-token claim took 2.5 times
# as long to score (this project's second attack round of 2026-12-06)
MAX_SEED = 1 << 63


def valid_ids(ids: object) -> bool:
    """Token ids a generator returns for verifiers to score."""
    return isinstance(ids, list) and 0 < len(ids) <= MAX_SCORED and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids)


def check_request(kind: str, params: dict) -> None:
    """Validate the resolved params of a step a peer asks this node to run (raises JobError). Besides
    the step kinds, `score`: verify a claimed llm output (its text and token ids) by scoring it."""
    if kind == "score":
        if not isinstance(params.get("claim"), str) or not valid_ids(params.get("token_ids")):
            raise JobError("a score request needs the claimed text and its token ids (1-4096 integers)")
        _check_params("request", "llm", {k: v for k, v in params.items() if k not in ("claim", "token_ids")},
                      "peer", resolved=True)
        return
    if kind not in STEP_KINDS:
        raise JobError(f"unknown kind {kind!r}")
    if kind == "python" and not isinstance(params.get("inputs", {}), dict):
        raise JobError("python inputs must be an object")
    _check_params("request", kind, params, "peer", resolved=True)


def _check_params(sid: str, kind: str, params: dict, source: str, resolved: bool = False) -> None:
    where = f"{source}: step {sid!r}"
    allowed = set(PARAMS[kind])
    if resolved and kind == "python":
        allowed = allowed | {"inputs"}
    unknown = set(params) - allowed
    if unknown:
        raise JobError(f"{where}: unknown {kind} parameter {sorted(unknown)[0]!r} (known: {', '.join(sorted(allowed))})")
    required = REQUIRED[kind][0]
    if not isinstance(params.get(required), str) or not params[required].strip():
        raise JobError(f"{where}: {kind} step needs a non-empty string parameter {required!r}")
    if kind == "scrape":
        _check_scrape(where, params, resolved)
    if kind == "python" and not resolved and REF.search(params["code"]):
        ref = REF.search(params["code"]).group(1)
        raise JobError(f"{where}: python code cannot contain {{{ref}.output}} (an earlier output pasted into "
                       f"code could rewrite it): read it as inputs[{ref!r}] and list {ref!r} in 'after'")
    if kind == "ask-model" and "model" not in params:
        raise JobError(f"{where}: an ask-model step names its model (a name this node registered, or a SHA-256)")
    if kind in MODEL_KINDS:
        _check_model_params(where, params, resolved)


def _check_model_params(where: str, params: dict, resolved: bool) -> None:
    """llm and ask-model parameters. A json_schema is checked here for shape only: whether llama.cpp can
    build a grammar from it is mesh.steps.grammar's question (the core does not import llama_cpp)."""
    mt = params.get("max_tokens", 64)
    if not isinstance(mt, int) or isinstance(mt, bool) or not 1 <= mt <= 2048:
        raise JobError(f"{where}: max_tokens must be an integer from 1 to 2048")
    seed = params.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not -MAX_SEED <= seed < MAX_SEED:
        raise JobError(f"{where}: seed must be an integer of 64 bits (from -2**63 to 2**63 - 1)")
    model = params.get("model", "default")
    pattern = r"[0-9a-f]{64}" if resolved else r"[0-9a-f]{64}|[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
    if model != "default" and not (isinstance(model, str) and re.fullmatch(pattern, model)):
        raise JobError(f"{where}: model must be 'default', a model's SHA-256 (64 lowercase hex digits)"
                       + ("" if resolved else " or the name of a model registered on the submitting node"))
    temperature = params.get("temperature", 0)
    if (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
            or not (temperature == 0 or MIN_TEMPERATURE <= temperature <= 2)):
        # (a temperature of 1e-320 divides logits into infinities, and a scored claim's gaps into NaN)
        raise JobError(f"{where}: temperature must be 0 (greedy, answers compared exactly) or a number from "
                       f"{MIN_TEMPERATURE} to 2")
    if "json_schema" in params:
        schema_error = _check_schema(params["json_schema"])
        if schema_error:
            raise JobError(f"{where}: json_schema: {schema_error}")
    stop = params.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop) or len(stop) > 8:
        raise JobError(f"{where}: stop must be a list of at most 8 non-empty strings")


def _check_scrape(where: str, params: dict, resolved: bool) -> None:
    url = params["url"]
    if resolved or not REF.search(url):  # a URL made from an earlier output is checked once it is known
        if not re.match(r"^https?://[^\s/?#]+", url) or len(url) > 4096:
            raise JobError(f"{where}: url must be an http:// or https:// URL, got {url[:100]!r}")
    selectors = params.get("selectors", {})
    if not isinstance(selectors, dict) or len(selectors) > 32 or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() and len(v) <= 500 for k, v in selectors.items()):
        raise JobError(f"{where}: selectors must map at most 32 names to CSS selectors")
    if not isinstance(params.get("wait_for", ""), str):
        raise JobError(f"{where}: wait_for must be a CSS selector")
    for flag in ("links", "tables"):
        if not isinstance(params.get(flag, False), bool):
            raise JobError(f"{where}: {flag} must be true or false")
    mc = params.get("max_chars", 20000)
    if not isinstance(mc, int) or isinstance(mc, bool) or not 1 <= mc <= 200_000:
        raise JobError(f"{where}: max_chars must be an integer from 1 to 200000")


MAX_SCHEMA_BYTES = 16_384
MAX_SCHEMA_DEPTH = 32  # nested objects and lists; deeper is no schema a person writes, only a recursion bomb


# Counts a grammar repeats its rule for (llama.cpp's converter writes out every repetition): "minItems":
# 40,000,000 in 60 bytes took a node's converter 1.4 GB and its event loop 2.6 s
MAX_SCHEMA_COUNT = 1_000
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties", "minContains",
           "maxContains")


# A `pattern` is a regular expression the converter writes out as grammar, every counted repetition in full
# ("^[a-z]{100000000}$", 40 bytes, took it 2 GB): its atoms once those are written out, at most this many
MAX_PATTERN_SIZE = 4_096


def pattern_size(pattern: str, limit: int = MAX_PATTERN_SIZE) -> int:
    """An upper bound on the atoms llama.cpp's converter writes for a regular expression: a character, a
    class or an escape is one; a group is what it holds (its alternatives added); `{n}`, `{n,}` and
    `{n,m}` repeat what they follow max(n, m) times, nested ones multiplying. Counting stops just past
    `limit`, so a pattern of 16 KiB costs a walk of it and no more."""
    frames = [[0, 0]]  # per open group: [its size so far, the size of its last atom]
    i, n = 0, len(pattern)
    while i < n:
        c, frame = pattern[i], frames[-1]
        if c == "(":
            frames.append([0, 0])
            i += 1
            continue
        if c == ")" and len(frames) > 1:
            inner = max(frames.pop()[0], 1)
            frames[-1][0] += inner
            frames[-1][1] = inner
            i += 1
            continue
        if c == "{":
            end = pattern.find("}", i)
            spec = pattern[i + 1:end] if end > 0 else ""
            low, comma, high = spec.partition(",")
            # isdecimal: what int() reads (and llama.cpp's converter with it, '٣' too); str.isdigit also takes
            # '²', which int() refuses: a pattern "a{²}" raised ValueError out of a peer's step request
            if low.isdecimal() and (not high or high.isdecimal()) and len(low) <= 9 and len(high) <= 9:
                times = max(int(low), int(high) if high else int(low) + bool(comma))
                frame[0] += frame[1] * (times - 1)
                frame[1] *= times
                i = end + 1
                if frame[0] > limit:
                    return frame[0]
                continue
            if low.isdecimal() and (not high or high.isdecimal()):  # a count of ten digits or more
                return limit + 1
        if c == "\\":
            i += 2
        elif c == "[":
            i = _class_end(pattern, i) + 1
        else:
            i += 1
        if c not in "*+?|^$":
            frame[0] += 1
            frame[1] = 1
        if frame[0] > limit:
            return frame[0]
    while len(frames) > 1:
        inner = max(frames.pop()[0], 1)
        frames[-1][0] += inner
    return frames[0][0]


def _class_end(pattern: str, i: int) -> int:
    """Where the character class opened at `i` closes (a `]` first, or escaped, is part of it)."""
    j = i + 2 if pattern[i + 1:i + 2] in ("]", "^") else i + 1
    j += pattern[j:j + 1] == "]"
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j


def _quantifier(pattern: str, i: int) -> tuple[str, int]:
    """The quantifier at `i`, as "*" (unbounded, may be empty), "+", "?" (may be empty) or "{" (a count of
    at least one), and where it ends; ("", i) when there is none."""
    c = pattern[i]
    if c in "*+?":
        return c, i + 1
    if c == "{":
        close = pattern.find("}", i)
        low, comma, high = pattern[i + 1:close].partition(",") if close > 0 else ("", "", "")
        if low.isdecimal() and (not high or high.isdecimal()):
            return ("*" if comma and not high else "?" if int(low) == 0 else "{"), close + 1
    return "", i


def nested_repeat(pattern: str) -> bool:
    """Whether a regular expression repeats without bound (`*`, `+`, `{n,}`) a group that can begin with a
    repetition or match nothing: `([a-z]*|[a-z]*)*`, `(a+)+`, `(a?)*`. Such a group can split the same text
    between its copies in ways that multiply, and llama.cpp's grammar sampler follows every one: 40
    alternatives (317 bytes, within every size limit) kept a worker's model runner on one token for good,
    past the step's timeout (found by this project's attack round on llm steps, 2026-12-06). A group that
    begins with a fixed atom splits one way only: `( [a-z]+)*` and `(\\d+\\.){3}` pass."""
    frames = [[False, True]]  # per open group: [it can begin with a repetition or be empty, at a branch's start]
    last_risky = last_first = False  # the atom just read: a group of that kind; the first of its branch
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        quantifier, end = _quantifier(pattern, i)
        if quantifier:
            if quantifier in "*+" and last_risky:
                return True
            if last_first and quantifier in "*+?":  # the branch begins with a repetition, or can be empty
                frames[-1][0] = True
            i = end + (pattern[end:end + 1] == "?")  # (lazy)
            continue
        if c in "^$":
            i += 1
            continue
        if c == "|":
            frames[-1][0] |= frames[-1][1]  # an empty branch
            frames[-1][1] = True
            last_risky = last_first = False
            i += 1
            continue
        if c == "(":
            frames.append([False, True])
            i += 1 + (pattern[i + 1:i + 3] == "?:") * 2
            continue
        if c == ")" and len(frames) > 1:
            risky, empty = frames.pop()
            last_risky = risky or empty
        else:
            last_risky = False
            if c == "\\":
                i += 1
            elif c == "[":
                i = _class_end(pattern, i)
        last_first = frames[-1][1]
        frames[-1][1] = False
        if last_risky and last_first:
            frames[-1][0] = True
        i += 1
    return False


def _check_schema(schema: Any) -> str:
    """'' when a json_schema has the shape of one (an object, at most 16 KiB, at most 32 levels deep,
    its counts at most MAX_SCHEMA_COUNT, its patterns at most MAX_PATTERN_SIZE written out); otherwise why
    not. The depth is measured first and without recursion, so a deeply nested value costs neither the
    encoder nor llama.cpp's converter a RecursionError."""
    if not isinstance(schema, dict):
        return "must be a JSON schema object of at most 16 KiB"
    if _depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        return f"must nest at most {MAX_SCHEMA_DEPTH} levels deep"
    if len(canonical(schema)) > MAX_SCHEMA_BYTES:
        return "must be a JSON schema object of at most 16 KiB"
    for obj in _objects(schema):
        for key in _COUNTS:
            n = obj.get(key)
            if n is not None and not (type(n) is int and 0 <= n <= MAX_SCHEMA_COUNT):
                return f"{key} must be a whole number from 0 to {MAX_SCHEMA_COUNT}"
        pattern = obj.get("pattern")
        if isinstance(pattern, str) and pattern_size(pattern) > MAX_PATTERN_SIZE:
            return (f"pattern {pattern[:60]!r} repeats too much: written out as grammar it would be over "
                    f"{MAX_PATTERN_SIZE:,} characters and classes (each {{n}} repeats what it follows n times)")
        if isinstance(pattern, str) and nested_repeat(pattern):
            return (f"pattern {pattern[:60]!r} repeats a repetition (like (a*)*): the grammar would try every "
                    f"way of splitting the text between them; write it with one repetition")
    return ""


def _objects(value: Any) -> list[dict]:
    """Every dict in a value of checked depth."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of dicts and lists (a scalar is 0), counted up to just over `limit`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            break
        stack.extend((c, level + 1) for c in children)
    return deepest


def default_compare(kind: str, params: dict) -> str:
    """How replicas of a step are compared when the job does not say: scraped pages and sampled llm
    output (temperature > 0) as normalised text, everything else exactly. Sampled replicas draw with one
    seed (`sampling_seed`), so honest ones agree token for token; word-bag similarity, which found "the
    bridge is safe" and "the bridge is not safe" 0.8 alike, is used only where a job asks for it."""
    if kind == "scrape" or (kind in MODEL_KINDS and params.get("temperature", 0)):
        return "text"
    return "exact"


def sampling_seed(job_id: str, step_id: str) -> int:
    """The seed every replica of a sampled llm step draws with when the job gives none: one per job and
    step (a job's replicas agree; two jobs do not share their randomness), 31 bits for llama.cpp."""
    return int.from_bytes(hashlib.sha256(f"{job_id}/{step_id}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def resolve_models(job: Job, resolve: Any) -> None:
    """Replace model names in the job's llm and ask-model steps by SHA-256s (`resolve`: name → sha,
    raising JobError), so the job names models the way peers advertise them."""
    for step in job.steps:
        if step.kind in MODEL_KINDS and "model" in step.params:
            step.params["model"] = resolve(step.params["model"])


# A step's params once earlier outputs are in them, as canonical JSON: its request must fit one frame
# (DEFAULT_FRAME_CAP, less room for the envelope's own fields). Unbounded, 2,500 copies of a 400 KB output
# in one URL took the submitting node 4.7 GB, and a request over the frame cap had the worker drop the
# link and penalise the submitter for it.
MAX_PARAMS_BYTES = DEFAULT_FRAME_CAP - (16 << 10)


# Chat-control markup a model's tokenizer reads as its special tokens (ChatML/SmolLM `<|im_end|>`, Gemma's
# `<start_of_turn>`, `<bos>`, Llama's `<s>`): in an earlier output rendered into a model's prompt, a word joiner
# (U+2060) goes after its `<`, so a scraped page cannot end a turn and open one as "system" (found by this
# project's red team, 2026-12-06). The job's own prompt keeps its markup: its author wrote it.
_CONTROL = re.compile(r"<(?=\||/?(?:start_of_turn|end_of_turn|bos|eos|pad|unk|mask|s)>)")
WORD_JOINER = "\u2060"


def disarmed(text: str) -> str:
    """`text` with every chat-control tag broken by a word joiner after its `<` (see _CONTROL)."""
    return _CONTROL.sub("<" + WORD_JOINER, text)


def render(value: Any, outputs: dict[str, Any], model: bool = False) -> Any:
    """Replace `{step.output}` in every string of `value` with that step's output (strings verbatim,
    anything else as canonical JSON; into a model's prompt, `model`, with chat-control tags disarmed).
    Raises JobError, before building anything, when the result would be over MAX_PARAMS_BYTES."""
    texts = {k: v if isinstance(v, str) else canonical(v).decode() for k, v in outputs.items()}
    if model:
        texts = {k: disarmed(v) for k, v in texts.items()}
    size = sum(len(s) + sum(len(texts[m.group(1)]) - len(m.group()) for m in REF.finditer(s)) for s in _strings(value))
    if size > MAX_PARAMS_BYTES:
        raise JobError(f"its parameters would be {size:,} characters with the earlier outputs in them; "
                       f"a step's are at most {MAX_PARAMS_BYTES:,}")
    return _render(value, texts)


def params_problem(params: Any) -> str:
    """'' when a step's params (rendered, or a python step's with its inputs) fit one request, and a
    json_schema the earlier outputs were rendered into is still one (a pattern "^[{a.output}]$" passed
    the job's checks and became a grammar bomb once step a's output was in it)."""
    size = len(canonical(params))
    if size > MAX_PARAMS_BYTES:
        return f"its parameters with the earlier outputs in them are {size:,} bytes; a step's are at most {MAX_PARAMS_BYTES:,}"
    if isinstance(params, dict) and "json_schema" in params:
        why = _check_schema(params["json_schema"])
        if why:
            return f"its json_schema, with the earlier outputs in it, is refused: {why}"
    return ""


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return [s for v in items for s in _strings(v)]


def _render(value: Any, texts: dict[str, str]) -> Any:
    if isinstance(value, str):
        return REF.sub(lambda m: texts[m.group(1)], value)
    if isinstance(value, list):
        return [_render(v, texts) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, texts) for k, v in value.items()}
    return value
