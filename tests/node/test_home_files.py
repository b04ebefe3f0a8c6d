"""A node home's token file and lock, in-process (the real processes: test_home_lock.py, cli/test_readme.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mesh.cli.client import Client
from mesh.errors import ConfigError
from mesh.node.home import LOCK_FILE, TOKEN_FILE, ensure_token, lock_home, read_token

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
