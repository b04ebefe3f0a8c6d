"""A job says it ended only once its payments are in the ledger: the real Submitter, its ledger write held
open. (CI saw a job read `done` a few milliseconds before its paid rows were written, and a harness that
trusted it stopped the workers before their receipts could go out.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from mesh.core.dag import parse_job
from mesh.core.policy import Candidate
from mesh.node.submitter import Options, Ports, Submitter
from mesh.wire.canonical import digest
from mesh.wire.identity import Identity
from mesh.wire.messages import StepRequest, StepResult, Work, asked_digest

pytestmark = pytest.mark.timeout(30)
JOB = parse_job({"redundancy": 1, "timeout": 10, "steps": [{"id": "a", "kind": "python", "params": {"code": "x"}}]})


async def until(event: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), 10)
    except asyncio.TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def held_write(home: Path, misnamed: bool = False) -> None:
    sent, writing, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tasks: set[asyncio.Task] = set()
    requests: list[StepRequest] = []
    counted: list[str] = []

    def spawn(coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        return task

    async def send(node: str, kind: str, payload: object) -> bool:
        requests.append(payload)
        sent.set()
        return True

    async def record(entries: list, ts: int) -> bool:
        writing.set()
        await release.wait()  # the disk is slow today
        return True

    async def find(wanted: dict) -> None:
        return None

    ports = Ports("me", Identity.generate(), home, send, record,
                  lambda: {"python": [Candidate("w1", 0.5, "10.0.0")]}, spawn, counted.append,
                  lambda: 0.0, lambda: "", find)
    sub = Submitter(ports, Options(), seed=1)
    job_id = sub.submit(JOB)
    try:
        await until(sent, "the step to be sent")
        out = {"x": 1}
        (req,) = requests
        if misnamed:  # an answer naming another request than the one sent could be shown in no proof
            sub.on_result(SimpleNamespace(node="w1"), StepResult(job_id, "a", True, out, digest(out), "python",
                                                                 Work(cpu_s=0.1), asked=asked_digest("python", {})))
            await asyncio.sleep(0.05)
            assert counted == ["wrong-asked"] and sub.jobs[job_id].run.steps["a"].status == "running"
            return
        sub.on_result(SimpleNamespace(node="w1"), StepResult(job_id, "a", True, out, digest(out), "python",
                                                             Work(cpu_s=0.1), asked=asked_digest(req.kind, req.params)))
        await until(writing, "the payments' ledger write")
        await asyncio.sleep(0.05)  # every other task has its turn: none may say the job ended
        assert sub.jobs[job_id].run.status == "done"  # the core has settled it ...
        rep = sub.report(job_id)
        assert rep["status"] == "running", rep["status"]  # ... but its payments are not written yet
        assert not sub.jobs[job_id].done.is_set()
        assert not (home / "jobs" / f"{job_id}.json").exists()
        release.set()
        await until(sub.jobs[job_id].done, "the job to end")
        assert sub.report(job_id)["status"] == "done"
    finally:
        release.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_a_job_reads_done_only_once_its_payments_are_written(tmp_path: Path):
    asyncio.run(held_write(tmp_path))


def test_an_answer_naming_another_request_than_the_one_sent_is_refused(tmp_path: Path):
    asyncio.run(held_write(tmp_path, misnamed=True))
