"""Comparators: when do two replicas' outputs count as the same answer? Each maps an output to a class
key; the quorum counts keys. `exact` (python, greedy llm): the canonical digest. `text` (scraping): text
normalised (Unicode NFKC, case-folded, whitespace collapsed) before hashing. `numeric:TOL`: same shape,
strings equal, numbers within TOL (relative to their size, absolute below 1) — not transitive, so an
output joins the first earlier answer it is close to. `similar:T` (sampled llm text): word-bag
similarity (Jaccard over normalised words) at least T, joined the same way."""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

from mesh.errors import JobError
from mesh.wire.canonical import canonical, digest

_SPACE = re.compile(r"\s+")


def normalise(value: Any) -> Any:
    if isinstance(value, str):
        return _SPACE.sub(" ", unicodedata.normalize("NFKC", value).casefold()).strip()
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, dict):
        return {normalise(k): normalise(v) for k, v in value.items()}
    return value


def close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):  # True is not 1
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    return a == b


def similar(a: Any, b: Any, threshold: float) -> bool:
    """Jaccard similarity of the normalised words of two outputs (as canonical text) ≥ threshold."""
    def words(v: Any) -> set[str]:
        return set(str(normalise(v if isinstance(v, str) else canonical(v).decode())).split())
    wa, wb = words(a), words(b)
    if not wa and not wb:
        return True
    return len(wa & wb) / len(wa | wb) >= threshold


class Comparator:
    def __init__(self, spec: str = "exact"):
        self.spec = spec
        self.kind, _, arg = spec.partition(":")
        if self.kind not in ("exact", "text", "numeric", "similar", "score") or (
                self.kind in ("exact", "text", "score") and arg):
            raise JobError(f"compare must be 'exact', 'text', 'numeric:TOLERANCE', 'similar:THRESHOLD' or 'score' "
                           f"(llm: one generates, the others verify by scoring), got {spec!r}")
        self.tol = 0.0
        if self.kind in ("numeric", "similar"):
            what = "tolerance" if self.kind == "numeric" else "threshold"
            try:
                self.tol = float(arg)
            except ValueError:
                raise JobError(f"compare {spec!r}: the {what} must be a number") from None
            if not (0 <= self.tol < 1 if self.kind == "numeric" else 0 < self.tol <= 1):
                raise JobError(f"compare {spec!r}: the {what} must be in "
                               + ("[0, 1)" if self.kind == "numeric" else "(0, 1]"))
        self._seen: list[tuple[str, Any]] = []  # numeric: (key, first output of that class)

    @property
    def strict(self) -> bool:
        """Whether two different answers are two different claims (exact, or text up to whitespace and
        case): a wrong answer is then evidence, a check can replay the step, and colluders show by agreeing
        on one. Under a tolerance or a similarity an honest worker may differ and still be right."""
        return self.kind in ("exact", "text")

    def key(self, output: Any) -> str:
        """The class key of an output; equal keys count as agreeing."""
        if self.kind in ("exact", "score"):
            return digest(output)
        if self.kind == "text":
            return digest(normalise(output))
        same = close if self.kind == "numeric" else similar
        for key, rep in self._seen:
            if same(output, rep, self.tol):
                return key
        key = digest(output)
        self._seen.append((key, output))
        return key
