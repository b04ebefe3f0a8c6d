"""`mesh doctor` as a user runs it (a subprocess): every check present, the sandbox and Chromium pass on
this machine (root, bubblewrap and chromium installed), a broken set-up fails with what to fix and exit
1, and with a node running on the home it reads that node's peers' clocks and reachability."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ..conftest import run_cli

pytestmark = pytest.mark.timeout(300)

NAMES = ["home", "disk", "sandbox", "chromium", "model", "clock", "reachability"]


def doctor(*args: str) -> tuple[int, dict]:
    res = run_cli("doctor", *args, "--json", timeout=280)
    assert res.stdout, res.stderr
    return res.returncode, json.loads(res.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


@pytest.mark.mesh
def test_this_machine_passes_and_no_node_is_reported(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    code, report = doctor("--home", str(home))
    checks = by_name(report)
    assert [c["name"] for c in report["checks"]] == NAMES
    assert all(c["status"] in ("ok", "warn", "fail", "skip") for c in report["checks"])
    assert checks["sandbox"]["status"] == "ok" and "not root" in checks["sandbox"]["detail"]
    assert checks["chromium"]["status"] == "ok", checks["chromium"]
    assert checks["home"]["status"] == "ok"
    for name in ("clock", "reachability"):
        assert checks[name]["status"] == "skip" and checks[name]["detail"] == f"no node running on {home}"
    assert report["ok"] is (code == 0) and code in (0, 1)
    assert report["ok"] is all(c["status"] != "fail" for c in report["checks"])


@pytest.mark.mesh
def test_a_missing_browser_and_a_home_that_is_a_file_fail_with_fixes(tmp_path: Path):
    home = tmp_path / "not-a-dir"
    home.write_text("")
    code, report = doctor("--home", str(home), "--browser", str(tmp_path / "no-such-chromium"))
    checks = by_name(report)
    assert code == 1 and report["ok"] is False
    assert checks["chromium"]["status"] == "fail" and "apt-get install chromium" in checks["chromium"]["fix"]
    assert checks["home"]["status"] == "fail" and "not a directory" in checks["home"]["detail"]
    assert checks["home"]["fix"]
    human = run_cli("doctor", "--home", str(home), "--browser", str(tmp_path / "no-such-chromium"), timeout=280)
    assert human.returncode == 1 and "fail  chromium" in human.stdout and "fix: install Chromium" in human.stdout
    assert "Traceback" not in human.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
@pytest.mark.mesh
def test_a_nearly_full_disk_fails(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        code, report = doctor("--home", str(mnt))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    disk = by_name(report)["disk"]
    assert code == 1 and disk["status"] == "fail" and "full disk" in disk["fix"]


@pytest.mark.mesh
def test_with_a_node_running_it_checks_clocks_and_reachability(make_mesh):
    mesh = make_mesh(2, lambda i: ["--no-model"])
    _, report = doctor("--home", str(mesh.nodes[0].home))
    checks = by_name(report)
    assert checks["clock"]["status"] == "ok" and "median of 1" in checks["clock"]["detail"], checks["clock"]
    assert checks["reachability"]["status"] == "ok" and "1 peers up (direct 1)" in checks["reachability"]["detail"]
