"""A job id as the API's /jobs/{id} routes take it: the full id or any unique prefix of at least
mesh.core.jobid.MIN_PREFIX hex digits, looked up among the jobs the node holds in memory and the reports
saved in its jobs/ directory. A bad, unknown or ambiguous prefix is a 4xx whose error is one line."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from mesh.core.jobid import FULL, ambiguous, prefix_problem, short
from mesh.http.common import ApiError
from mesh.http.facade import NodeFacade

SCAN_MAX = 100_000  # directory entries looked at for one prefix: a home's jobs/ is the owner's, but bounded


def saved_ids(jobs_dir: Path, prefix: str) -> list[str]:
    """Ids of the saved reports whose names start with `prefix`."""
    out: list[str] = []
    try:
        with os.scandir(jobs_dir) as entries:
            for i, entry in enumerate(entries):
                if i >= SCAN_MAX:
                    break
                stem, dot, ext = entry.name.partition(".")
                if ext == "json" and dot and stem.startswith(prefix):
                    out.append(stem)
    except OSError:
        return []
    return out


async def resolve(node: NodeFacade, text: str) -> str:
    """The full id `text` names; ApiError 400 (not an id, too short, ambiguous) or 404 (no such job)."""
    prefix = text.lower()
    problem = prefix_problem(prefix)
    if problem:
        raise ApiError(400, problem)
    held = node.jobs()
    if prefix in held or (len(prefix) == FULL and (node.jobs_dir / f"{prefix}.json").is_file()):
        return prefix  # (a whole id: no directory to scan)
    matches = {j for j in held if j.startswith(prefix)}
    matches.update(await asyncio.to_thread(saved_ids, node.jobs_dir, prefix))
    if not matches:
        raise ApiError(404, f"no job {short(prefix) if len(prefix) > 8 else prefix} on this node "
                            "(`mesh jobs` lists the jobs submitted from it)")
    if len(matches) > 1:
        raise ApiError(400, ambiguous(prefix, sorted(matches)))
    return matches.pop()
