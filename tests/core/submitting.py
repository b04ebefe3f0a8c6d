"""One submitter's core driven in memory by the tests of its recheck rules (test_blocs, test_lone_work):
each worker on a network prefix of its own, answering as a test maps it, the time passed in."""

from __future__ import annotations

from mesh.core.dag import parse_job
from mesh.core.effects import Finished, Send, Started
from mesh.core.policy import Candidate
from mesh.core.submission import Submission
from mesh.wire.canonical import digest

RIGHT, WRONG = 42, 666
FAIL = object()  # a worker `says` this: its replica fails (timeout), no answer
NAMES = ("c1", "c2", "c3", "c4", "h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8", "h9")


def job(compare: str = "exact", adaptive: int = 0):
    return parse_job({"redundancy": 3, "adaptive": adaptive,
                      "steps": [{"id": "a", "kind": "python", "params": {"code": "x"}, "compare": compare}]})


def pool(*names: str, streaks: dict[str, int] | None = None) -> dict[str, list[Candidate]]:
    """Each worker on a network prefix of its own, the same one whichever pool it is in; `streaks`: their
    runs of validated results (0 when not named)."""
    return {"python": [Candidate(n, 0.5, f"10.0.{NAMES.index(n)}", (streaks or {}).get(n, 0)) for n in names]}


def drive(sub: Submission, job_id: str, first: tuple[str, ...], rest: tuple[str, ...], says: dict, now: float,
          right: object = RIGHT, streaks: dict[str, int] | None = None, follow: bool = True) -> tuple[list, float]:
    """Run `job_id` (submitted here unless the core made it) to its end: its first placement among `first`
    only, escalations among `first` + `rest`; each worker answers as `says` maps it (`right` for anyone not
    named). `follow`: a recheck that asks for another of the same step (a second opinion, or no quorum)
    has that one driven too, alike. Every effect, and the time after."""
    if job_id not in sub.jobs:
        sub.submit(job_id, job(), 1)
    effects, names = [], first
    while True:
        ticked = sub.tick(job_id, pool(*names, streaks=streaks), now)
        effects += ticked
        if any(isinstance(e, Finished) for e in ticked):
            of = sub.jobs[job_id].recheck_of
            again = [e for e in ticked if isinstance(e, Started) and of and e.recheck_of == of and e.job != job_id]
            if not (follow and again):
                return effects, now
            job_id, names, now = again[0].job, first, now + 1.0
            continue
        sends = [e for e in ticked if isinstance(e, Send) and e.job == job_id and e.check is None]
        assert sends, "the job waits for nothing it sent"
        for s in sends:
            out = says.get(s.node, right)
            if out is FAIL:
                effects += sub.on_result(s.node, s.job, s.step, False, "", None, {}, "timeout", now + 0.5)
                continue
            effects += sub.on_result(s.node, s.job, s.step, True, digest(out), out, {}, "", now + 0.5)
        names, now = first + rest, now + 1.0
