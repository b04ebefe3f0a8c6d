"""User mistakes that gave a traceback or a hang, found by this project's red team of 2026-12-07 (who had not
read the other tests) driving the real CLI: each is one line and exit 2 now (1 for a job still running)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from ..conftest import run_cli, write_job
from .test_hostile_files import one_line

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120)]  # (a CLI process each: seconds in all)


def refused_by_argparse(res, says: str) -> None:
    """argparse's refusal: its usage, then one error line naming the option."""
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert says in res.stderr.strip().splitlines()[-1], res.stderr


@pytest.fixture
def home(tmp_path: Path) -> Path:
    assert run_cli("init", "--home", str(tmp_path / "h")).returncode == 0
    return tmp_path / "h"


def test_a_tilde_user_without_a_home_is_one_line(tmp_path):
    """`~nosuchuser/h` raised RuntimeError (Path.expanduser) out of every command taking --home, --dir, --model."""
    one_line(run_cli("status", "--home", "~nosuchuser/h"), 2, "no home directory is known for '~nosuchuser'")
    one_line(run_cli("up", "--dir", "~nosuchuser/x"), 2, "no home directory is known")


def test_an_empty_job_id_or_a_huge_limit_is_one_line(home):
    one_line(run_cli("job", "", "--home", str(home)), 2, "a job id is needed")  # (was TypeError: /jobs/ lists)
    one_line(run_cli("cancel", " ", "--home", str(home)), 2, "a job id is needed")
    refused_by_argparse(run_cli("ledger", "history", "--home", str(home), "--limit", str(2**63)), "must be from 1 to")


def test_a_hand_edited_model_registry_a_fifo_for_the_work_file_or_a_file_for_a_home_is_one_line(home, tmp_path):
    for text in ('{"abc": 1}', '{"abc": {"size": "big"}}', '{"abc": {"size": 1e400}}'):
        (home / "models.json").write_text(text)
        one_line(run_cli("models", "list", "--home", str(home)), 2, "is damaged")
    (home / "models.json").unlink()
    (home / "node.work").unlink(missing_ok=True)
    os.mkfifo(home / "node.work")  # (hung every command reading the home)
    one_line(run_cli("ledger", "balance", "--home", str(home), timeout=30), 2, "is not a regular file")
    one_line(run_cli("init", "--home", os.devnull), 2, "is not a directory")


@pytest.mark.parametrize("args, says", [
    (["--sweep", "--sizes", "inf"], "finite numbers"),  # (OverflowError)
    (["--sweep", "--fractions", ""], "finite numbers"),  # (0 runs, exit 0)
    (["--steps", "50", "--set", "jobs.cost_s=inf"], "jobs.cost_s must be a finite number"),  # (ZeroDivisionError)
    (["--steps", "50", "--set", "speed.sigma=nan"], "speed.sigma must be a finite number"),
    (["--steps", "50", "--set", "policy.share_every_s=0"], "share_every_s must be > 0"),  # (ran forever)
    (["--set", "jobs.quorum=" + "[" * 2000 + "]" * 2000], "nested too deeply"),  # (RecursionError)
])
def test_a_simulation_setting_that_cannot_run_is_one_line(args, says):
    res = run_cli("simulate", "baseline", "--quiet", *args, timeout=60)
    if res.stderr.startswith("usage:"):
        refused_by_argparse(res, says)
    else:
        one_line(res, 2, says)


def test_a_scenario_or_trace_nested_deep_or_damaged_is_one_line(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("v = " + "[" * 5000 + "]" * 5000 + "\n")
    one_line(run_cli("simulate", str(deep)), 2, "nested too deeply")
    trace = tmp_path / "t.jsonl"
    assert run_cli("simulate", "baseline", "--steps", "200", "--quiet", "--trace", str(trace)).returncode == 0
    data = bytearray(trace.read_bytes())
    at = data.index(b"\n", 8192) + 5  # a byte inside a record past the first 8 KiB
    data[at] = 0xFF
    damaged = tmp_path / "bad.jsonl"
    damaged.write_bytes(bytes(data))
    res = run_cli("replay", str(damaged))
    assert res.returncode != 0 and "Traceback" not in res.stderr and "not UTF-8" in res.stdout + res.stderr, res


def status_from_a_server_answering(answer: bytes):
    """`mesh status --api` at a one-shot server on loopback that reads the request and sends `answer`."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        return run_cli("status", "--api", f"http://127.0.0.1:{port}", env={"MESH_API_TOKEN": "x"}, timeout=30)
    finally:
        server.close()
        thread.join(5)


def test_an_api_that_speaks_no_http_is_one_line(tmp_path):
    """--api pointed at a node's peer port: http.client.BadStatusLine came out as a traceback."""
    one_line(status_from_a_server_answering(b"/multistream/1.0.0\n"), 2, "did not answer as an HTTP server does")


def test_wait_ends_at_its_timeout_while_a_step_runs_quietly(make_mesh, tmp_path):
    """`submit --wait --timeout 3` on a job sleeping 45 s said "still running after 3 s" after 47 s: the
    deadline was looked at only when an event came."""
    mesh = make_mesh(2, lambda i: ["--no-model", "--no-scrape"])
    job = write_job(tmp_path / "sleepy.json", [{"id": "a", "kind": "python",
                                                "params": {"code": "import time\ntime.sleep(45)\noutput = 1"}}],
                    redundancy=1, timeout=120)
    t0 = time.monotonic()
    res = run_cli("submit", job, "--home", str(mesh.nodes[0].home), "--wait", "--timeout", "3", timeout=90)
    took = time.monotonic() - t0
    assert res.returncode == 1 and "still running after 3 s" in res.stderr, res.stderr
    assert took < 25, f"--timeout 3 ended after {took:.1f} s"
    jobs = json.loads(run_cli("jobs", "--home", str(mesh.nodes[0].home), "--json").stdout)
    assert jobs and jobs[0]["status"] == "running"  # (the job goes on; only the waiting ended)


def test_options_that_cannot_work_are_refused_before_anything_starts(home, tmp_path):
    """`demo --redundancy 0` started a whole mesh (12 s) before the node refused it; `--listen` and `--api` on
    one port were found only after the start-up ("in use", by the node itself); a bad node option passed
    through `up --` exited 1, not 2; `models list --api` listed the default home's models."""
    t0 = time.monotonic()
    one_line(run_cli("demo", "--nodes", "2", "--redundancy", "0", "--dir", str(tmp_path / "d")), 2,
             "--redundancy must be from 1 to 1")
    assert time.monotonic() - t0 < 10 and not (tmp_path / "d").exists()
    port = socket.create_server(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    one_line(run_cli("node", "--home", str(home), "--listen", f"127.0.0.1:{free}", "--api", f"127.0.0.1:{free}",
                     "--no-model", timeout=60), 2, "name the same port")
    res = run_cli("up", "--nodes", "2", "--no-model", "--dir", str(tmp_path / "u"), "--", "--credit-line", "-5",
                  timeout=90)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "credit-line" in res.stderr, res.stderr
    one_line(run_cli("models", "list", "--api", "http://127.0.0.1:1", env={"MESH_API_TOKEN": "x"}), 2,
             "give --home, not --api")


def test_a_node_named_a_model_that_is_no_gguf_file_is_refused_before_it_starts(home, tmp_path):
    """`node --model /etc/passwd` started a node that warned it would run no llm steps (`models add` refused
    the same file); the default model, missing, still only warns (tests/steps/test_models.py)."""
    (tmp_path / "fake.gguf").write_bytes(b"GGUF" + b"\xff" * 60)
    for path, says in ((os.devnull, "is not a regular file"), (str(tmp_path / "none.gguf"), "no such file"),
                       (str(tmp_path / "fake.gguf"), "not a well-formed GGUF model file")):
        t0 = time.monotonic()
        one_line(run_cli("node", "--home", str(home), "--model", path, "--listen", "127.0.0.1:0",
                         "--api", "127.0.0.1:0", timeout=60), 2, says)
        assert time.monotonic() - t0 < 20 and not (home / "node.json").exists()


@pytest.mark.parametrize("answer, says", [
    (b"[1, 2, 3]", "with a JSON list, not the object"),
    (b'{"node": "x"}', "answered without 'listen'"),
    (b'{"node": "x", "listen": "y", "kinds": [], "peers": [{"node": "p"}]}', "answered without 'last_seen'"),
])
def test_an_api_answering_json_of_another_shape_is_one_line(answer, says):
    """--api at a server answering JSON a node never sends: TypeError or KeyError came out as a traceback."""
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(answer)}\r\n\r\n"
    one_line(status_from_a_server_answering(head.encode() + answer), 2, says)
