"""What an owner types, or writes in a home's files, that the CLI took with a traceback (this project's
second attack round of 2026-12-06): each is now one line on stderr and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledger.store import Ledger

from ..conftest import run_cli
from .test_hostile_files import one_line

pytestmark = pytest.mark.timeout(120)

SUPERSCRIPT_TWO = "\u00b2"  # a digit to str.isdigit(), not to int()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    assert run_cli("init", "--home", str(tmp_path / "h")).returncode == 0
    return tmp_path / "h"


@pytest.mark.mesh  # 2 s on its own: out of the fast suite (`-m "not mesh"`), in the full one
def test_superscript_digits_in_an_entry_a_port_or_a_pattern_are_one_line(tmp_path: Path, home: Path):
    Ledger(home / "ledger.db").close()
    one_line(run_cli("ledger", "explain", SUPERSCRIPT_TWO, "--home", str(home)), 2, "ENTRY is an entry number")
    one_line(run_cli("node", "--home", str(home), "--listen", f"127.0.0.1:{SUPERSCRIPT_TWO}", "--no-model"), 2,
             "--listen must be HOST:PORT")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"name": "sup", "steps": [{"id": "a", "kind": "llm", "params": {
        "prompt": "x", "json_schema": {"type": "string", "pattern": f"^a{{{SUPERSCRIPT_TWO}}}$"}}}]}))
    one_line(run_cli("submit", str(job), "--home", str(home)), 2, "json_schema")


@pytest.mark.mesh  # 2 s on its own: out of the fast suite (`-m "not mesh"`), in the full one
def test_a_size_of_hundreds_of_digits_is_one_line_on_the_command_line_and_in_node_toml(tmp_path: Path, home: Path):
    """309 digits make a float's infinity: int() of it raised OverflowError, which argparse does not catch."""
    huge = "9" * 400
    for flag in ("--max-memory", "--fetch-models", "--relay-budget"):  # (argparse's usage, then its one line)
        res = run_cli("node", "--home", str(home), "--no-model", flag, huge + "GB")
        assert res.returncode == 2 and "Traceback" not in res.stderr, (flag, res.stderr[-2000:])
        assert "at most 1 EiB" in res.stderr.strip().splitlines()[-1], (flag, res.stderr[-2000:])
    (home / "node.toml").write_text(f'max_memory = "{huge}"\n')
    one_line(run_cli("node", "--home", str(home), "--no-model"), 2, "node.toml: max_memory")
