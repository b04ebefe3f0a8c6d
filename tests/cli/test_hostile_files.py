"""Files the CLI is pointed at, or finds in a home, that are not what they should be: each gives one line
and exit code 2 (1 for a damaged ledger: it does not verify), never a traceback, a hang or all of the
machine's memory. Found by this project's attack round on the CLI (2026-12-06): a job file linked to
/dev/zero took 5.3 GB in 6 s, a FIFO hung `mesh submit`, other bytes than UTF-8 were a traceback, `mesh
init` on a full disk left a 0-byte node.key no later init replaced, and `mesh ledger verify` on a cut
ledger printed a traceback."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.store import Ledger

from ..conftest import ROOT, run_cli

pytestmark = pytest.mark.timeout(120)


def one_line(res: subprocess.CompletedProcess, code: int, says: str) -> None:
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and says in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.fixture
def home(tmp_path: Path) -> Path:
    assert run_cli("init", "--home", str(tmp_path / "h")).returncode == 0
    return tmp_path / "h"


@pytest.mark.mesh  # 5 s on its own: out of the fast suite (`-m "not mesh"`), in the full one
def test_a_job_file_that_is_a_device_a_fifo_or_not_utf8_is_refused_in_one_line(tmp_path: Path, home: Path):
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    one_line(run_cli("submit", str(tmp_path / "zero.json"), "--home", str(home), timeout=30), 2, "not a regular file")
    os.mkfifo(tmp_path / "fifo.json")
    one_line(run_cli("submit", str(tmp_path / "fifo.json"), "--home", str(home), timeout=30), 2, "not a regular file")
    (tmp_path / "latin.json").write_bytes(b'\xff\xfe{"steps": []}')
    one_line(run_cli("submit", str(tmp_path / "latin.json"), "--home", str(home)), 2, "not UTF-8")
    (tmp_path / "big.json").write_text('{"steps": [], "name": "' + "x" * (5 << 20) + '"}')
    one_line(run_cli("submit", str(tmp_path / "big.json"), "--home", str(home)), 2, "is over")
    one_line(run_cli("ledger", "verify-receipts", str(tmp_path / "zero.json"), timeout=30), 2, "not a regular file")
    (tmp_path / "deep.json").write_text("[" * 100_000)  # (refused unparsed: no export packs lists so densely)
    one_line(run_cli("ledger", "verify-receipts", str(tmp_path / "deep.json")), 2, "packs more JSON values")
    (tmp_path / "deep.json").write_text(("[" + " " * 63) * 100_000)  # as deep, spaced as an export could be
    one_line(run_cli("ledger", "verify-receipts", str(tmp_path / "deep.json")), 2, "is not JSON")


def test_a_node_key_or_token_that_is_not_text_is_refused_in_one_line(home: Path):
    key = home / "node.key"
    seed = key.read_bytes()
    key.unlink()
    key.symlink_to("/dev/zero")
    one_line(run_cli("ledger", "balance", "--home", str(home), timeout=30), 2, "not a regular file")
    key.unlink()
    key.write_bytes(b"\xff" + seed[1:])
    key.chmod(0o600)
    one_line(run_cli("ledger", "balance", "--home", str(home)), 2, "not UTF-8")
    key.unlink()
    key.write_bytes(seed)
    key.chmod(0o600)
    (home / "api-token").write_text("abc\ndef")  # (every API call sends it as a header)
    one_line(run_cli("init", "--home", str(home)), 2, "control characters")
    (home / "api-token").write_bytes(b"\xffabc")
    one_line(run_cli("init", "--home", str(home)), 2, "not UTF-8")


def test_timeouts_must_be_a_positive_number_of_seconds(tmp_path: Path, home: Path):
    for bad in ("-5", "nan", "0"):
        res = run_cli("submit", "examples/python-job.json", "--home", str(home), "--wait", "--timeout", bad)
        assert res.returncode == 2 and "must be more than 0" in res.stderr and "Traceback" not in res.stderr


def test_a_damaged_ledger_does_not_verify_and_its_views_say_so_in_one_line(home: Path):
    Ledger(home / "ledger.db").close()
    with open(home / "ledger.db", "r+b") as f:  # the header kept, the rest cut off
        f.truncate(4096)
    res = run_cli("ledger", "verify", "--home", str(home))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stdout.startswith("ledger does NOT verify: the database is damaged"), res.stdout
    one_line(run_cli("ledger", "balance", "--home", str(home)), 1, "cannot be read")
    one_line(run_cli("ledger", "explain", "99999999999999999999999", "--home", str(home)), 2, "no entry")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root)")
def test_init_on_a_full_disk_leaves_no_empty_key_and_works_once_there_is_room(tmp_path: Path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        (disk / "h").mkdir()
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:  # every block taken
            f.write(b"\0" * (1 << 20))
        one_line(run_cli("init", "--home", str(disk / "h")), 2, "cannot write the node key")
        assert not (disk / "h" / "node.key").exists()
        (disk / "filler").unlink()
        res = run_cli("init", "--home", str(disk / "h"))
        assert res.returncode == 0, res.stderr
        assert len((disk / "h" / "node.key").read_text().strip()) == 64
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_saved_report_that_is_not_a_job_report_is_an_error_not_a_traceback(tmp_path: Path):
    """`mesh job` on a report file holding `[1, 2]` raised TypeError (the node handed the list on)."""
    from types import SimpleNamespace

    from mesh.http.api import saved_report
    from mesh.http.common import ApiError

    (tmp_path / "abc123.json").write_text("[1, 2]")
    with pytest.raises(ApiError, match="is not a job report"):
        saved_report(SimpleNamespace(jobs_dir=tmp_path), "abc123")
    (tmp_path / "abc123.json").write_text('{"status": "done", "job_id": "abc123", "steps": {}}')
    assert saved_report(SimpleNamespace(jobs_dir=tmp_path), "abc123")["status"] == "done"


@pytest.mark.mesh  # over a second on its own: out of the fast suite (`-m "not mesh"`), in the full one
def test_a_model_that_is_no_file_a_limit_below_one_and_a_key_given_twice_are_said_as_such(tmp_path: Path, home: Path):
    one_line(run_cli("models", "add", "/dev/zero", "--home", str(home)), 2, "is not a regular file")
    res = run_cli("ledger", "history", "--home", str(home), "--limit", "-1")
    assert res.returncode == 2 and "must be from 1 to" in res.stderr
    (tmp_path / "twice.json").write_text('{"steps": [{"id": "a", "kind": "python", "params": {"code": "x"}}], '
                                         '"steps": []}')
    one_line(run_cli("submit", str(tmp_path / "twice.json"), "--home", str(home)), 2, "appears twice")


def test_a_reader_that_goes_away_and_a_home_that_cannot_be_made_are_said_plainly(tmp_path: Path, home: Path):
    """`mesh models list | head` whose reader left printed "mesh: [Errno 32] Broken pipe"; a home under a
    file printed "mesh: [Errno 20] Not a directory: '…'" (attack round, 2026-12-06)."""
    proc = subprocess.Popen([sys.executable, "-m", "mesh", "models", "list", "--home", str(home)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()  # the reader leaves before the first line
    try:
        err = proc.stderr.read().decode()
        assert proc.wait(60) == 141, err  # as a shell reports a program whose reader left (128 + SIGPIPE)
    finally:
        proc.kill()
    assert err == "", err
    (tmp_path / "plain").write_text("")
    res = run_cli("init", "--home", str(tmp_path / "plain" / "h"), timeout=30)
    one_line(res, 1, f"{tmp_path / 'plain' / 'h'}: Not a directory")
    assert "Errno" not in res.stderr, res.stderr


def test_a_node_json_left_by_a_node_that_ended_sends_the_token_to_nobody(tmp_path: Path, home: Path):
    """Found by this project's red team (2026-12-06): after a node was killed, its node.json stayed, and
    `mesh status` sent the API token to whatever listened on the old port since, then printed a traceback at
    its answer. Now the CLI talks to a home's node only while that node holds the home's lock, and an answer
    that is not JSON is one line."""
    import json
    import socket
    import threading

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(4)
    port = squatter.getsockname()[1]
    heard: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = squatter.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                heard.append(conn.recv(65536))
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\nnot json")

    threading.Thread(target=serve, daemon=True).start()
    try:
        (home / "node.json").write_text(json.dumps({"node": "ab" * 32, "pid": 1, "api": f"http://127.0.0.1:{port}",
                                                   "listen": "127.0.0.1:1"}))
        one_line(run_cli("status", "--home", str(home), timeout=30), 2, "no node is running in")
        assert heard == [], heard  # not a byte, let alone the token
        res = run_cli("status", "--api", f"http://127.0.0.1:{port}", env={"MESH_API_TOKEN": "x"}, timeout=30)
        one_line(res, 2, "answered something other than JSON")
    finally:
        squatter.close()
