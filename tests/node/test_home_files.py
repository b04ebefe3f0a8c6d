"""A node home's token file and lock, in-process (the real processes: test_home_lock.py, cli/test_readme.py)."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import pytest

from mesh.cli.client import Client
from mesh.errors import ConfigError
from mesh.node import owner
from mesh.node.heldheads import HELD_FILE, HeldHeads
from mesh.node.home import LOCK_FILE, TOKEN_FILE, ensure_token, lock_home, read_token
from mesh.node.replaystore import ReplayStore
from mesh.steps import stepuser
from mesh.steps.registry import Registry

pytestmark = pytest.mark.timeout(30)


def test_the_token_file_holds_the_token_alone(tmp_path: Path):
    token = ensure_token(tmp_path)
    assert (tmp_path / TOKEN_FILE).read_text() == token  # read whole, it is a valid header value
    assert ensure_token(tmp_path) == token


def test_a_token_file_written_with_a_newline_is_read_stripped_and_rewritten(tmp_path: Path):
    (tmp_path / TOKEN_FILE).write_text("abc123\n")
    assert read_token(tmp_path) == "abc123"
    assert ensure_token(tmp_path) == "abc123"
    assert (tmp_path / TOKEN_FILE).read_text() == "abc123"


def test_a_token_from_the_environment_is_stripped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MESH_API_TOKEN", "  xyz\n")
    assert Client.locate(None, "http://127.0.0.1:1").token == "xyz"


def test_a_locked_home_is_refused_naming_the_holder(tmp_path: Path):
    fd = lock_home(tmp_path)  # a second open file description conflicts even in one process
    try:
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(ConfigError, match=f"^home {tmp_path} is in use by pid {os.getpid()}$"):
            lock_home(tmp_path, grace=0)
    finally:
        os.close(fd)
    os.close(lock_home(tmp_path, grace=0))  # released with its descriptor


# Home files the node reads at start (or on SIGHUP, or each heartbeat): each read bounded and of a regular
# file. Read whole, one linked to /dev/zero filled memory, and a FIFO hung the node's start; here a sparse
# file of 300 MB (old code read it whole) and a FIFO (old code waited on it forever).
BIG = 300 << 20


def sparse(path: Path, size: int = BIG) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def config_readers(home: Path) -> dict:
    return {"models.json": lambda: Registry(home).entries(), "node.toml": lambda: owner.read_file(home),
            **({stepuser.FILE: lambda: stepuser.step_user(home, "a" * 64)} if stepuser.running_as_root() else {})}


@pytest.mark.parametrize("name", ["models.json", "node.toml", stepuser.FILE])
@pytest.mark.parametrize("kind", ["huge", "fifo"])
def test_a_home_file_too_big_or_not_a_file_is_one_clear_error(tmp_path: Path, name: str, kind: str):
    readers = config_readers(tmp_path)
    if name not in readers:
        pytest.skip("the step user file is read only by a node running as root")
    if kind == "huge":
        sparse(tmp_path / name)
    else:
        os.mkfifo(tmp_path / name)
    with pytest.raises(ConfigError, match="is over (1 MiB|4 KiB|16 MiB)$|is not a regular file$") as err:
        readers[name]()
    assert str(tmp_path / name) in str(err.value)


def test_held_heads_and_replay_marks_too_big_are_not_read_whole(tmp_path: Path):
    sparse(tmp_path / HELD_FILE)
    heads = HeldHeads(tmp_path)
    assert peak_mib(heads.load) < 64 and not heads.owners
    store = ReplayStore(sparse(tmp_path / "replay.json"), 60_000)
    try:
        assert peak_mib(lambda: store.load(int(time.time() * 1000))) < 160  # (MAX_READ, 64 MiB, and its text)
    finally:
        store.close()
    fifo = ReplayStore(tmp_path / "fifo", 60_000)
    os.mkfifo(fifo.path)
    try:
        assert fifo.load(0) == {}  # not waited on (and compacted into a regular file)
    finally:
        fifo.close()
    (tmp_path / HELD_FILE).unlink()
    os.mkfifo(tmp_path / HELD_FILE)
    HeldHeads(tmp_path).load()


def test_a_pause_file_that_is_not_text_still_pauses_with_a_short_reason(tmp_path: Path):
    sparse(tmp_path / owner.PAUSED_FILE)
    assert owner.paused_reason(tmp_path) == "paused by its owner"
    (tmp_path / owner.PAUSED_FILE).unlink()
    os.mkfifo(tmp_path / owner.PAUSED_FILE)
    assert owner.paused_reason(tmp_path) == "paused by its owner"
    (tmp_path / owner.PAUSED_FILE).unlink()
    assert owner.paused_reason(tmp_path) == ""
