"""What a plan's python sets `output` to, read from its code (never run), against what the question asks
for: a number for "what is N% of M", anything but text for a calculation. A plan whose result cannot fit
the question is refused before it runs, instead of three workers agreeing on an absurd answer."""

from __future__ import annotations

import ast
import re

from mesh.planning.rules import computation, is_percentage

_TEXT_CALLS = {"str", "repr", "format", "chr", "hex", "bin", "oct", "ascii"}
_TEXT_METHODS = {"join", "format", "upper", "lower", "strip", "title", "capitalize", "zfill", "ljust", "rjust",
                 "center"}
_KIND_CALLS = {"bool": "bool", "list": "list", "sorted": "list", "tuple": "list", "set": "list", "dict": "dict",
               "int": "number", "float": "number", "round": "number", "abs": "number", "len": "number",
               "sum": "number"}
_SAYS = {"text": "text (a str)", "bool": "True or False", "list": "a list", "dict": "a dict", "none": "None"}
_CALC_WORDS = re.compile(r"\b(?:calculate|compute|how\s+(?:many|much)|sum|product|average|mean|square\s+root|"
                         r"factorial|power|squared|cubed)\b|\d\s*[-+*/^×÷]\s*\d", re.I)


def kind_of(node: ast.expr, names: dict[str, str]) -> str:
    """number | text | bool | list | dict | none | unknown, as far as the expression alone shows."""
    if isinstance(node, ast.Constant):
        v = node.value
        return ("none" if v is None else "bool" if isinstance(v, bool) else "text" if isinstance(v, (str, bytes))
                else "number" if isinstance(v, (int, float, complex)) else "unknown")
    if isinstance(node, ast.JoinedStr):
        return "text"
    if isinstance(node, ast.Name):
        return names.get(node.id, "unknown")
    if isinstance(node, ast.BinOp):
        left, right = kind_of(node.left, names), kind_of(node.right, names)
        if "text" in (left, right) and isinstance(node.op, (ast.Add, ast.Mult)) or \
                left == "text" and isinstance(node.op, ast.Mod):
            return "text"
        return "number" if left == right == "number" else "unknown"
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name):
            return "text" if node.func.id in _TEXT_CALLS else _KIND_CALLS.get(node.func.id, "unknown")
        if isinstance(node.func, ast.Attribute) and node.func.attr in _TEXT_METHODS:
            return "text"
        return "unknown"
    if isinstance(node, (ast.List, ast.ListComp, ast.Tuple, ast.Set, ast.SetComp, ast.GeneratorExp)):
        return "list"
    if isinstance(node, (ast.Dict, ast.DictComp)):
        return "dict"
    if isinstance(node, ast.Compare) or isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return "bool"
    if isinstance(node, ast.IfExp):
        body, orelse = kind_of(node.body, names), kind_of(node.orelse, names)
        return body if body == orelse else "unknown"
    return "unknown"


def output_kind(tree: ast.Module) -> str:
    """The kind of every value the code gives `output`, when they all agree and each is known; else
    "unknown". Names set at the top level before are followed ("r = str(x); output = r")."""
    names: dict[str, str] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            names[stmt.targets[0].id] = kind_of(stmt.value, names)
    kinds = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.AugAssign, ast.AnnAssign)) and isinstance(node.target, ast.Name) \
                and node.target.id == "output":
            return "unknown"
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == "output":
                    kinds.add(kind_of(node.value, {**names, "output": "unknown"}))
                elif isinstance(target, ast.Tuple) and any(isinstance(t, ast.Name) and t.id == "output"
                                                           for t in target.elts):
                    kinds.add("unknown")
    return kinds.pop() if len(kinds) == 1 else "unknown"


def misfit(query: str, sid: str, tree: ast.Module) -> str:
    """Why the output of a python step that computes from nothing earlier cannot answer `query`; '' when
    it can (or when its code does not show)."""
    kind = output_kind(tree)
    if is_percentage(query):
        if kind in _SAYS:
            return f"step {sid!r} sets output to {_SAYS[kind]}, but the question asks for a percentage (a number)"
    elif computation(query) or (_CALC_WORDS.search(query) and re.search(r"\d", query)):
        if kind in ("text", "none"):
            return f"step {sid!r} sets output to {_SAYS[kind]}, but the question asks for a calculation"
    return ""
