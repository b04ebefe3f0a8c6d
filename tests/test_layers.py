"""The house's rules, enforced: `lint-imports` checks the contracts in .importlinter (layers, a core
without I/O, a simulator that drives the core and nothing of the node), and ruff's complexity rule keeps
functions short enough to read. Both fail the suite, not just a linter run someone may forget."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.timeout(120)


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def test_import_contracts_hold():
    res = subprocess.run([tool("lint-imports")], cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout, res.stdout[-4000:]


def test_no_function_is_too_complex():
    res = subprocess.run([tool("ruff"), "check", "--select", "C901", "."], cwd=ROOT, capture_output=True, text=True,
                         timeout=100)
    assert res.returncode == 0, res.stdout[-4000:]
