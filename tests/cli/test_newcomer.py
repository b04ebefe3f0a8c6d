"""What a newcomer meets in the first minutes: `mesh` alone, `mesh --version`, help for every option (and no
--home where it does nothing), a wrong token that says where the right one is, `mesh up`'s `try:` line
working from any directory, and a node that says why it stopped."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mesh import __version__
from mesh.cli.local import LocalNode
from mesh.cli.main import build_parser

from ..conftest import ROOT, run_cli, stop_session

pytestmark = pytest.mark.timeout(120)

NO_HOME = {"up", "demo", "simulate", "replay"}  # commands that neither read nor write a node home


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_mesh_alone_prints_its_help_on_stdout():
    res = run_cli()
    assert res.returncode in (0, 2), res
    assert res.stdout.startswith("usage: mesh"), res.stdout
    assert "submit" in res.stdout and "Traceback" not in res.stderr


def test_mesh_version():
    res = run_cli("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith(f"mesh {__version__}"), res.stdout


def test_every_option_and_argument_has_help():
    missing = [f"mesh {name} {action.option_strings[0] if action.option_strings else action.dest}"
               for name, sub in subcommands(build_parser()).items() for action in sub._actions
               if not isinstance(action, argparse._HelpAction) and not action.help]
    assert not missing, f"without help: {', '.join(missing)}"


def test_no_home_option_where_it_does_nothing():
    has_home = {name for name, sub in subcommands(build_parser()).items()
                if any("--home" in a.option_strings for a in sub._actions)}
    assert not has_home & NO_HOME, has_home & NO_HOME
    assert {"node", "init", "status", "submit", "ledger", "models"} <= has_home


@pytest.mark.mesh
def test_a_wrong_token_names_the_token_file(tmp_path: Path):
    node = LocalNode(tmp_path / "n", ["--no-model"])
    try:
        node.start([])
        node.wait_started(60)
        res = run_cli("status", "--api", node.api, env={"MESH_API_TOKEN": "wrong"})
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "--home" in res.stderr and "HOME/api-token" in res.stderr, res.stderr
    finally:
        node.stop()


@pytest.mark.mesh
def test_the_try_line_of_mesh_up_works_from_another_directory(tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "mesh", "up", "--nodes", "2", "--dir", "rel", "--no-model"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        line = ""
        while not line.startswith("try: "):
            line = proc.stdout.readline()
            assert line, "mesh up ended before its try: line"
        cmd = shlex.split(line.removeprefix("try: ").partition(" (")[0])
        assert cmd[0] == "mesh"
        res = subprocess.run([sys.executable, "-m", "mesh", *cmd[1:], "--json"], cwd=elsewhere, text=True,
                             capture_output=True, timeout=90, stdin=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))})
        assert res.returncode == 0, res.stderr  # (--no-model: the example without an llm step)
        assert json.loads(res.stdout)["steps"]["describe"]["output"].startswith("the list has 8 numbers"), res.stdout
    finally:
        stop_session(proc)


@pytest.mark.mesh
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_node_says_which_signal_stopped_it(tmp_path: Path, sig: signal.Signals):
    node = LocalNode(tmp_path / "n", ["--no-model"])
    try:
        node.start([])
        node.wait_started(60)
        os.kill(node.proc.pid, sig)  # the node alone: its actors stop with it
        node.proc.wait(60)
        assert node.proc.returncode == 0
        assert node.last_log() == f"stopped: signal {sig.name.removeprefix('SIG')}", node.last_log()
    finally:
        node.stop()


@pytest.mark.mesh
def test_ctrl_c_at_a_terminal_stops_the_node_without_a_traceback(tmp_path: Path):
    """A terminal's Ctrl-C reaches the whole process group: each of Thespian's processes printed a
    KeyboardInterrupt traceback under the node's own "stopped: signal INT" (found by this project's attack
    round on restarts). They leave Ctrl-C to the node now, which stops them."""
    node = LocalNode(tmp_path / "n", ["--no-model"])
    try:
        node.start([])
        node.wait_started(60)
        os.killpg(node.proc.pid, signal.SIGINT)  # (the node leads its own process group, as at a terminal)
        node.proc.wait(60)
        assert node.proc.returncode == 0
    finally:
        node.stop()
    out = (tmp_path / "n" / "stdout.log").read_text()
    assert "stopped: signal INT" in out and "Traceback" not in out and "KeyboardInterrupt" not in out, out[-2000:]


@pytest.mark.mesh
@pytest.mark.llm
def test_llama_cpps_own_log_stays_out_of_the_nodes_output(tmp_path: Path):
    """A node loading the default model printed llama.cpp's "llama_kv_cache_iswa: using full-size SWA
    cache" between its own lines; llama.cpp's log goes to the log files now."""
    node = LocalNode(tmp_path / "n")  # the default model (and the instruct one, when installed)
    try:
        node.start([])
        node.wait_started(120)
        os.kill(node.proc.pid, signal.SIGTERM)
        node.proc.wait(60)
    finally:
        node.stop()
    out = (tmp_path / "n" / "stdout.log").read_text()
    assert "ready: peer port" in out and "warning:" not in out, out  # the model was loaded
    assert not [line for line in out.splitlines() if "llama" in line], out
