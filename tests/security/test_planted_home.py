"""A home (or `mesh up --dir`) someone else could have put files in is refused before anything in it is
opened (this project's red team, 2026-12-07): a local user made a root node's home first in a shared
folder, with its own node.key, api-token and step-user.json, and node.lock and stdout.log as links to a
root-only file; the root node ran with the user's key and token, truncated that file to its pid and
appended its output to it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..conftest import run_cli

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play another user's files")]
NOBODY = 65534
SECRET = "root:$6$a-hash-only-root-may-read\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A root-only file the attacker's links point at."""
    path = tmp_path / "private" / "shadow"
    path.parent.mkdir(mode=0o700)
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def planted(folder: Path, victim: Path) -> Path:
    """A node home as another user would leave it: its folder, a lock and a log linked to `victim`."""
    folder.mkdir(parents=True)
    for name in ("node.lock", "stdout.log"):
        (folder / name).symlink_to(victim)
        os.lchown(folder / name, NOBODY, NOBODY)
    os.chown(folder, NOBODY, NOBODY)
    return folder


def shared(tmp_path: Path, sticky: bool = True) -> Path:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o1777 if sticky else 0o777)
    return folder


def test_a_home_another_user_made_is_refused_and_nothing_is_written_through_it(tmp_path, victim):
    home = planted(shared(tmp_path) / "node0", victim)
    res = run_cli("node", "--home", str(home), "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0", "--no-model")
    assert res.returncode == 2 and "belongs to another user (uid 65534)" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and victim.read_text() == SECRET


def test_mesh_up_refuses_a_dir_another_user_made(tmp_path, victim):
    top = shared(tmp_path) / "mesh"
    planted(top / "node0", victim)
    os.chown(top, NOBODY, NOBODY)
    res = run_cli("up", "--nodes", "1", "--dir", str(top), "--", "--no-model", timeout=60)
    assert res.returncode == 2 and "belongs to another user" in res.stderr, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr and victim.read_text() == SECRET


def test_a_home_in_a_folder_anyone_may_rename_things_in_is_refused(tmp_path):
    """A folder writable by others and not sticky: a local user may swap the home for one of its own."""
    home = shared(tmp_path, sticky=False) / "node0"
    res = run_cli("node", "--home", str(home), "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0", "--no-model")
    assert res.returncode == 2 and "may be written by other users" in res.stderr and "chmod go-w" in res.stderr, \
        res.stderr


def test_a_link_another_user_made_in_place_of_the_home_is_refused(tmp_path):
    """/tmp/x/node0 → /etc made by a local user: a root node would have used /etc as its home (and made it 0700)."""
    target = tmp_path / "rootonly"
    target.mkdir(mode=0o755)
    link = shared(tmp_path) / "node0"
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)
    res = run_cli("node", "--home", str(link), "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0", "--no-model")
    assert res.returncode == 2 and "a link another user (uid 65534) made" in res.stderr, res.stderr
    assert target.stat().st_mode & 0o777 == 0o755 and not list(target.iterdir())
