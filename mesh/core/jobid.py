"""Job ids as people type them: one short form printed everywhere (the full id stays in JSON), and any
unique prefix of at least MIN_PREFIX hex digits accepted wherever an id is taken."""

from __future__ import annotations

import re

SHORT = 8  # hex digits `mesh submit`, `mesh jobs`, progress lines and errors print
MIN_PREFIX = 4  # fewer would match too many jobs to be worth typing
FULL = 64  # no id is longer (the node's are 20 hex digits; a prefix longer than this is no id)
SHOWN = 3  # candidates an ambiguous prefix's error names
_HEX = re.compile(r"[0-9a-f]+")


def short(job_id: str) -> str:
    return job_id[:SHORT]


def prefix_problem(text: str) -> str:
    """Why `text` cannot name a job ('' when it can be looked up)."""
    if not _HEX.fullmatch(text) or len(text) > FULL:
        return f"{text[:FULL]!r} is not a job id: job ids are hex digits (as `mesh jobs` lists them)"
    if len(text) < MIN_PREFIX:
        return f"job id {text!r} is too short: give at least {MIN_PREFIX} of its hex digits"
    return ""


def ambiguous(prefix: str, matches: list[str]) -> str:
    """The one-line error for a prefix several jobs share, naming a few of them."""
    names = ", ".join(short(m) if len(prefix) < SHORT else m[:len(prefix) + 4] for m in sorted(matches)[:SHOWN])
    more = f" and {len(matches) - SHOWN} more" if len(matches) > SHOWN else ""
    return f"job id {prefix!r} is ambiguous: {len(matches)} jobs start with it ({names}{more}); give more digits"
