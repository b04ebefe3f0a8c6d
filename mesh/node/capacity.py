"""Whether the mesh this node sees can run a job at its redundancy, asked before the job is accepted: a job
the core would give up at its first step (too few workers offering a step's capability) is refused at once,
with how many workers offer it and how to get more, instead of being accepted to fail later."""

from __future__ import annotations

from collections.abc import Mapping, Sized

from mesh.core.dag import Job


def what(needs: str) -> str:
    """A step's capability (Step.needs) in words."""
    if needs.startswith("llm:"):
        model = needs[4:]
        return "llm steps" + ("" if model == "default" else f" with model {model[:12]}")
    return f"{needs} steps"


def shortfall(job: Job, have: Mapping[str, Sized]) -> str:
    """'' when every step has at least the job's redundancy of workers offering its capability (`have`:
    capability → candidates, the submitter never among them); else one line saying what is missing."""
    for step in job.steps:
        n = len(have.get(step.needs, ()))
        if n >= job.redundancy:
            continue
        fix = (f"lower --redundancy to {n} or start more workers" if n else
               "check that this node is linked to its peers (`mesh status`), or start workers")
        return (f"step {step.id!r} needs {job.redundancy} workers able to run {what(step.needs)} other than the "
                f"submitter, the mesh offers {n} now: {fix} (a local mesh of {job.redundancy + 1} nodes: "
                f"`mesh up --nodes {job.redundancy + 1}`)")
    return ""
