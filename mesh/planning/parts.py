"""A question cut into the parts it asks for, in order, each with the kind of step that answers it: "compute
X with python, then have the model say it in words" is two parts, a computation and a request for words
about it. Rules, not a model: they are exact about what they recognise, take microseconds, and never drop
a part (the model planner once kept only the computation of that question)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mesh.planning.rules import computation

URL = re.compile(r"https?://[^\s<>\"'`{}|\\^\[\]]+")
# where one part ends and the next begins: "then", "after that", "finally", ";", and a sentence's end
_THEN = re.compile(r"(?:[,;]\s*|\s+)(?:and\s+)?(?:then|after\s+that|afterwards|finally)\b[\s,]*|;\s*", re.I)
_SENTENCE = re.compile(r"(?<=[.?!])\s+(?=[A-Z])")  # (case matters: not re.I)
# "... and explain / and have the model say ...": words asked for about what came before
_AND_WORDS = re.compile(r"\s*,?\s+and\s+(?=(?:(?:have|ask|get|let)\s+(?:the|a)\s+model\s+(?:to\s+)?)?"
                        r"(?:explain|say|describe|tell|write|summari[sz]e|comment|discuss|interpret|put)\b)", re.I)
_MODEL_ASK = re.compile(r"^(?:please\s+)?(?:(?:have|ask|get|let)\s+(?:the|a)\s+model\s+(?:to\s+)?|ask\s+the\s+model\s+"
                        r"(?:whether|if|what|why|how)\b\s*)", re.I)
_PYTHON = re.compile(r"\s*(?:\b(?:with|using|in|via)\s+python\b|\buse\s+python\s+to\b)\s*", re.I)
TWO_MODELS = re.compile(r"\b(?:two|both|2|different)\s+models\b|\bcompare\s+(?:the\s+)?models\b", re.I)


@dataclass(frozen=True)
class Part:
    text: str  # the words of this part, as the user wrote them (minus "with python", "have the model")
    kind: str  # scrape | compute | words
    code: str = ""  # compute: the Python the rules wrote
    urls: tuple[str, ...] = ()  # scrape: the pages it names


def clean_url(url: str) -> str:
    return url.rstrip(".,;:!?)")


def split(query: str) -> list[Part]:
    """The parts of `query`, in order; never empty (a query of one part is one part)."""
    pieces = [p.strip(" ,.;") for sentence in _SENTENCE.split(query) for chunk in _THEN.split(sentence)
              for p in _AND_WORDS.split(chunk)]
    parts = [_part(p) for p in pieces if re.search(r"\w", p)]  # ("What happened then?" leaves a lone "?")
    return _merge(parts) or [_part(query)]


def _part(text: str) -> Part:
    urls = tuple(dict.fromkeys(clean_url(u) for u in URL.findall(text)))
    if urls:
        return Part(text, "scrape", urls=urls)
    plain = _PYTHON.sub(" ", text).strip()
    code = computation(plain)
    if code:
        return Part(plain, "compute", code)
    return Part(_MODEL_ASK.sub("", plain).strip() or plain, "words")


def _merge(parts: list[Part]) -> list[Part]:
    """Words that only continue a page's part ("... and summarise it"), and pages named one after the
    other, stay with it: the scrape part asks for the words itself, about all its pages. Two computations
    in a row stay two."""
    out: list[Part] = []
    for p in parts:
        if out and out[-1].kind == "scrape" and p.kind in ("words", "scrape"):
            prev = out.pop()
            out.append(Part(f"{prev.text}, {p.text}", "scrape", urls=tuple(dict.fromkeys(prev.urls + p.urls))))
        else:
            out.append(p)
    return out
