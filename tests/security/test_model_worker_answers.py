"""The model process is where a llama.cpp bug would run a stranger's code, so its ModelRunnerActor reads
its answers as a stranger's: a line that is not a JSON object, a result of another shape, a line past
MAX_LINE, or a progress report out of shape gets the worker killed and the actor told (WorkerGone, on
which it exits and the NodeActor replaces it); a step's own failure stays a failed step. A fake worker
(a python one-liner that answers whatever the test says) stands in for the real one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from actors import model_runner
from actors.model_runner import ModelWorker, WorkerGone
from mesh.errors import StepFailed

pytestmark = pytest.mark.timeout(30)

FAKE = r'''
import sys
for answer in sys.argv[1:]:
    line = sys.stdin.readline()
    if not line:
        break
    sys.stderr.write("got " + line)
    sys.stderr.flush()
    sys.stdout.write(answer + "\n")
    sys.stdout.flush()
sys.stdin.readline()
'''


def fake(*answers: str) -> ModelWorker:
    proc = subprocess.Popen([sys.executable, "-c", FAKE, *answers], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    return ModelWorker(proc)


GOOD = {"text": " Paris", "tokens": 1, "prompt_tokens": 5, "seconds": 0.1, "token_ids": [7]}


@pytest.mark.parametrize("answer", [
    "not json", "[1, 2]", "[" * 100_000,
    json.dumps({"done": {**GOOD, "text": 5}}),
    json.dumps({"done": {**GOOD, "token_ids": ["7"]}}),
    json.dumps({"done": {**GOOD, "extra": {"__class__": "x"}}}),
    json.dumps({"progress": "eight"}),
])
def test_an_answer_out_of_protocol_kills_the_worker(answer):
    worker = fake(answer)
    try:
        with pytest.raises(WorkerGone):
            worker.call("generate", {"prompt": "p"})
        assert worker.proc.wait(10) != 0  # killed
    finally:
        worker.proc.kill()
        worker.proc.wait(10)


def test_a_line_past_the_limit_kills_the_worker(monkeypatch):
    monkeypatch.setattr(model_runner, "MAX_LINE", 1000)
    worker = fake(json.dumps({"done": {**GOOD, "text": "x" * 5000}}))
    try:
        with pytest.raises(WorkerGone, match="over 1000 bytes"):
            worker.call("generate", {"prompt": "p"})
    finally:
        worker.proc.kill()
        worker.proc.wait(10)


def test_a_worker_that_exits_is_gone_and_a_failed_step_is_a_failed_step():
    worker = fake(json.dumps({"failed": "prompt too long"}))
    try:
        with pytest.raises(StepFailed, match="prompt too long"):
            worker.call("score", {"prompt": "p"})
        worker.proc.stdin.close()  # (it waits for one more line, then exits)
        with pytest.raises(WorkerGone, match="exited"):
            worker.call("score", {"prompt": "p"})
    finally:
        worker.proc.kill()
        worker.proc.wait(10)


def test_progress_is_relayed_and_a_cancel_answered_with_stop(caplog):
    worker = fake(json.dumps({"progress": [8, " Paris is"]}), json.dumps({"failed": "llm step cancelled"}))
    seen = []

    def on_progress(n: int, text: str) -> None:
        seen.append((n, text))
        raise StepFailed("llm step cancelled")

    caplog.set_level("INFO", "mesh.model_runner")
    try:
        with pytest.raises(StepFailed, match="cancelled"):
            worker.call("generate", {"prompt": "p"}, on_progress)
    finally:
        worker.proc.kill()
        worker.proc.wait(10)
    assert seen == [(8, " Paris is")]
    assert any(r.getMessage().endswith("got stop") for r in caplog.records)  # (its stderr, forwarded to the log)
