"""What the journal costs the submitter: the same seeded run of the submission core (jobs submitted,
placed, answered, settled, batches written) with no sink (baseline) and with every input journaled
to HOME/journal.db (mesh.node.journal), in the same process; then how fast a restart replays it.

    python -m bench.journal_bench [--jobs 400] [--workers 20] [--json]

journaled_vs_memory = core inputs/s journaled ÷ inputs/s in memory (1.0: the journal costs nothing).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from mesh.core.dag import parse_job
from mesh.core.effects import Record, Send
from mesh.core.policy import Candidate
from mesh.core.submission import Config, Submission
from mesh.node.journal import Journal
from mesh.wire.canonical import digest

JOB = parse_job({"redundancy": 3, "timeout": 30, "steps": [
    {"id": f"s{i}", "kind": "python", "after": [f"s{i - 1}"] if i else [], "params": {"code": f"output = {i}"}}
    for i in range(4)]})


def run(sub: Submission, jobs: int, workers: int, seed: int) -> int:
    """Submit `jobs` jobs, tick them, answer every request honestly, report every batch written: the
    number of core inputs fed."""
    rng = random.Random(seed)
    pool = {"python": [Candidate(f"w{i:03d}", 0.5, f"10.0.{i}") for i in range(workers)]}
    now, inputs = 0.0, 0
    for j in range(jobs):
        sub.submit(f"job{j:05d}", JOB, rng.getrandbits(64))
        inputs += 1
    pending = [f"job{j:05d}" for j in range(jobs)]
    while pending:
        now += 0.01
        job = pending.pop(0)
        effects = sub.tick(job, pool, now)
        inputs += 1
        while effects:
            more = []
            for eff in effects:
                if isinstance(eff, Send):
                    out = int(eff.step[1:])
                    more += sub.on_result(eff.node, eff.job, eff.step, True, digest(out), out, {"cpu_s": 0.01}, "", now)
                    inputs += 1
                elif isinstance(eff, Record):
                    sub.on_recorded(eff.id, True)
                    inputs += 1
            effects = [e for e in more if isinstance(e, Send | Record)]
        if not sub.jobs[job].run.finished:
            pending.append(job)
    return inputs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--workers", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    config = Config(7)

    t0 = time.perf_counter()
    inputs = run(Submission(config), args.jobs, args.workers, 1)
    memory_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp))
        journal.start_epoch(config)
        t0 = time.perf_counter()
        journaled = run(Submission(config, sink=lambda e: journal.append(e, 0.0)), args.jobs, args.workers, 1)
        journal_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        journal.close()
        t0 = time.perf_counter()
        replayed = Journal(Path(tmp)).replayed()
        again = Submission(replayed.config)
        for entry in replayed.entries:
            again.apply(entry)
        replay_s = time.perf_counter() - t0
    assert journaled == inputs == len(replayed.entries)
    out = {"inputs": inputs, "memory_inputs_per_s": round(inputs / memory_s), "journaled_inputs_per_s":
           round(inputs / journal_s), "journaled_vs_memory": round(memory_s / journal_s, 3),
           "replay_inputs_per_s": round(inputs / replay_s), "journal_bytes_per_input": round(size / inputs)}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
