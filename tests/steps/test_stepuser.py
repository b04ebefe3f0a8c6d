"""mesh.steps.stepuser: a node started as root gets a uid of its own for untrusted work, chosen once per home."""

from __future__ import annotations

import json
import os

import pytest

from mesh.errors import ConfigError
from mesh.steps import stepuser
from mesh.steps.stepuser import FILE, FIRST_UID, SPAN, StepUser, step_user


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(stepuser, "running_as_root", lambda: True)


def test_a_normal_user_has_nothing_to_drop(tmp_path, monkeypatch):
    monkeypatch.setattr(stepuser, "running_as_root", lambda: False)
    assert step_user(tmp_path, "ab" * 32) is None
    assert not (tmp_path / FILE).exists()


def test_root_gets_a_stable_uid_of_its_own_per_home(tmp_path, as_root):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = step_user(tmp_path / "a", "ab" * 32)
    assert first is not None and FIRST_UID <= first.uid < FIRST_UID + SPAN and first.gid == first.uid
    assert step_user(tmp_path / "a", "cd" * 32) == first  # kept in the home, whatever the id
    assert json.loads((tmp_path / "a" / FILE).read_text()) == {"uid": first.uid, "gid": first.gid}
    assert step_user(tmp_path / "b", "cd" * 32) != first


def test_a_uid_that_belongs_to_an_account_is_skipped(tmp_path, as_root, monkeypatch):
    taken = set()
    real = stepuser._taken
    monkeypatch.setattr(stepuser, "_taken", lambda uid: uid in taken or real(uid))
    expected = step_user(tmp_path, "ef" * 32)
    (tmp_path / FILE).unlink()
    taken.add(expected.uid)
    assert step_user(tmp_path, "ef" * 32).uid == expected.uid + 1 or expected.uid == FIRST_UID + SPAN - 1


def test_a_damaged_file_is_one_clear_error(tmp_path, as_root):
    (tmp_path / FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="damaged"):
        step_user(tmp_path, "ab" * 32)
    (tmp_path / FILE).write_text(json.dumps({"uid": 0, "gid": 0}))
    with pytest.raises(ConfigError, match="root"):
        step_user(tmp_path, "ab" * 32)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_demote_leaves_no_way_back(tmp_path):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: demote, then try to regain root
        os.close(r)
        StepUser(65534, 65534).demote()
        try:
            os.setuid(0)
            regained = b"yes"
        except PermissionError:
            regained = b"no"
        os.write(w, regained + b" %d %d %d" % (*os.getresuid(),))
        os._exit(0)
    os.close(w)
    out = os.read(r, 100).decode()
    os.waitpid(pid, 0)
    assert out == "no 65534 65534 65534"
