"""What a step's output may be to leave the process that made it: nested at most MAX_OUTPUT_DEPTH deep.
The actors hand outputs to the node pickled (Thespian), and pickling 500 levels of lists ran out of
recursion: the message was dropped as poison and the worker answered nothing until the step's timeout
and 15 s more. No output a person reads or a step computes nests that deep."""

from __future__ import annotations

from typing import Any

MAX_OUTPUT_DEPTH = 100


def too_deep(value: Any, limit: int = MAX_OUTPUT_DEPTH) -> bool:
    """Whether `value` (decoded JSON) nests lists and objects more than `limit` deep; without recursion."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (list, dict)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (v.values() if isinstance(v, dict) else v))
    return False


def depth_error(value: Any) -> str:
    """'' when `value` may leave its process; otherwise why not, for the step's error."""
    return f"your output is nested deeper than {MAX_OUTPUT_DEPTH} levels" if too_deep(value) else ""
