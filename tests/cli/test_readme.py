"""The README's examples, run as written against a real local mesh started the README's way (`mesh up
--nodes 4 --dir .mesh`, in a directory of its own): the OpenAI example (it crashed as written: the token
file ended in a newline, an illegal header value), the commands of "Using it" and the curl line. Only
placeholders are filled in (PORT, JOB_ID); what cannot run here is skipped by name, with the reason."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from ..conftest import ROOT, stop_session

pytestmark = [pytest.mark.mesh, pytest.mark.llm, pytest.mark.timeout(600)]

README = (ROOT / "README.md").read_text()
NOT_RUN = {  # command prefixes of "Using it" that this test does not run, and why
    "mesh node": "runs until stopped; `mesh up` runs nodes the same way",
    "mesh up": "the fixture runs it",
    "mesh cancel": "needs a running job; tests/node/test_resume.py and the API tests cancel jobs",
    "mesh simulate": "a minute of simulation; tests/simulations run it",
}
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z0-9_]*\b")


def block_after(heading: str, lang: str) -> str:
    """The first ```lang block after `heading` in the README."""
    start = README.index(heading)
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(README, start)
    assert m, f"no {lang} block after {heading!r}"
    return m.group(1)


def command_lines(block: str) -> list[str]:
    """Each command of a shell block, comment cut off; optional parts ([--json]) kept unless they hold a
    placeholder ([--limit N]); `a|b|c` alternatives made one command each."""
    out = []
    for line in block.splitlines():
        cmd = re.sub(r"\s+#.*$", "", line).strip()
        cmd = re.sub(r"\[([^\]]*)\]", lambda m: "" if PLACEHOLDER.search(m.group(1)) else m.group(1), cmd)
        words = cmd.split()
        alt = next((i for i, w in enumerate(words) if "|" in w), None)
        if alt is None:
            out.append(" ".join(words))
            continue
        out += [" ".join(words[:alt] + [choice] + words[alt + 1:]) for choice in words[alt].split("|")]
    return [c for c in out if c]


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    """`mesh up` as "Using it" gives it, in a fresh directory (with the examples beside it); stopped with
    Ctrl-C, and every node it started is killed by pid afterwards."""
    cwd = tmp_path_factory.mktemp("readme")
    (cwd / "examples").symlink_to(ROOT / "examples")
    line = next(c for c in command_lines(block_after("## Using it", "sh")) if c.startswith("mesh up "))
    proc = subprocess.Popen([sys.executable, "-m", "mesh", *shlex.split(line)[1:], "--timeout", "300"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    homes = [cwd / ".mesh" / f"node{i}" for i in range(4)]
    pids: list[int] = []
    try:
        ready = proc.stdout.readline()
        if "nodes ready" not in ready:
            proc.wait(30)
            raise AssertionError(proc.stderr.read())
        pids = [json.loads((h / "node.json").read_text())["pid"] for h in homes]
        yield cwd
    finally:
        stop_session(proc)
        for pid in pids:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


def api_port(cwd: Path) -> str:
    return json.loads((cwd / ".mesh" / "node0" / "node.json").read_text())["api"].rpartition(":")[2]


def test_the_openai_example_runs_as_written_and_prints_what_it_says(up: Path):
    code = block_after("### An OpenAI-compatible endpoint", "python").replace("PORT", api_port(up))
    res = subprocess.run([sys.executable, "-c", code], cwd=up, capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-2000:]
    printed = res.stdout.splitlines()
    said = [line.partition("# ")[2].strip() for line in code.splitlines() if line.startswith("print(")]
    assert len(printed) == len(said) == 2, (printed, said)
    assert printed[0] == said[0], printed  # the answer the README shows
    assert printed[1].startswith(said[1].removesuffix("...}").removesuffix(", ")), printed


def test_the_commands_of_using_it_run(up: Path, tmp_path: Path):
    job_id = ""
    ran = []
    for cmd in command_lines(block_after("## Using it", "sh")):
        if any(cmd.startswith(prefix) for prefix in NOT_RUN):
            continue
        if job_id:
            cmd = cmd.replace("JOB_ID", job_id)
        if PLACEHOLDER.search(cmd):
            continue  # `mesh models add PATH.gguf`, `fetch SHA256`: nothing here to fill in
        env = {**os.environ, "HOME": str(tmp_path)}  # `mesh init --home ~/.homemesh` stays in the test
        res = subprocess.run([sys.executable, "-m", "mesh", *shlex.split(cmd)[1:]], cwd=up, capture_output=True,
                             text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
        assert res.returncode == 0, f"{cmd}: exit {res.returncode}: {res.stderr[-1500:]}"
        assert "Traceback" not in res.stderr, res.stderr
        if cmd.startswith("mesh submit") and "--json" in cmd:
            job_id = json.loads(res.stdout)["job_id"]
            assert json.loads(res.stdout)["status"] == "done"
        ran.append(cmd.split()[1] + (" " + cmd.split()[2] if cmd.split()[1] in ("ledger", "models") else ""))
    assert (tmp_path / ".homemesh" / "node.key").exists()
    assert {"init", "ask", "submit", "job", "jobs", "status", "ledger balance", "ledger verify"} <= set(ran), ran


def test_the_curl_line_streams_a_jobs_events(up: Path):
    job = json.loads(subprocess.run(
        [sys.executable, "-m", "mesh", "submit", "examples/demo-job.json", "--home", ".mesh/node0", "--wait",
         "--json"], cwd=up, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL).stdout)
    line = block_after("### The HTTP API", "sh").strip()
    line = line.replace("PORT", api_port(up)).replace("JOB_ID", job["job_id"])
    res = subprocess.run(["bash", "-c", line], cwd=up, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "event: done" in res.stdout, res.stdout[-1000:]
