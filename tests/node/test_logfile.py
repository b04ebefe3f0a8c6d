"""The node's logs (mesh.node.logfile): in node.jsonl every line is one JSON object with the record's extra
fields and its traceback; node.log escapes a message's control characters; both rotate at their cap
keeping a few."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import pytest

from mesh.node.logfile import BACKUPS, LOG_DIR, LOG_FILE, MAX_BYTES, TEXT_FILE, json_handler, text_handler

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def logger():
    log = logging.getLogger("mesh.test.logfile")
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()


def test_each_line_is_one_json_object_with_extra_fields(tmp_path, logger):
    logger.addHandler(json_handler(tmp_path))
    logger.info("peer %s up", "abc", extra={"peer": "abc", "addr": ("127.0.0.1", 1)})
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logger.exception("it broke")
    lines = (tmp_path / LOG_DIR / LOG_FILE).read_text().splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert first["message"] == "peer abc up" and first["level"] == "INFO"
    assert first["logger"] == "mesh.test.logfile" and first["peer"] == "abc" and first["addr"] == ["127.0.0.1", 1]
    assert first["time"].endswith("Z")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]


def test_the_file_rotates_at_its_cap_keeping_a_few(tmp_path, logger):
    logger.addHandler(json_handler(tmp_path, max_bytes=2000, backups=2))
    for i in range(200):
        logger.info("line %d %s", i, "x" * 50)
    folder = tmp_path / LOG_DIR
    names = sorted(p.name for p in folder.iterdir())
    assert names == [LOG_FILE, f"{LOG_FILE}.1", f"{LOG_FILE}.2"]
    for path in folder.iterdir():
        assert path.stat().st_size <= 2000
        for line in path.read_text().splitlines():
            json.loads(line)
    last = json.loads((folder / LOG_FILE).read_text().splitlines()[-1])
    assert last["message"].startswith("line 199 ")


def test_node_log_is_rotated_at_its_cap():
    """The handler the node logs through (mesh.node.logfile.text_handler) keeps node.log under MAX_BYTES
    and BACKUPS old files; a node written to for months fills no disk."""
    with tempfile.TemporaryDirectory() as tmp:
        handler = text_handler(Path(tmp), max_bytes=10_000, backups=2)
        logger = logging.getLogger("test-rotation")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            for i in range(2_000):
                logger.warning("line %d %s", i, "x" * 50)
        finally:
            logger.removeHandler(handler)
            handler.close()
        files = sorted(p.name for p in Path(tmp).iterdir())
        assert files == [TEXT_FILE, f"{TEXT_FILE}.1", f"{TEXT_FILE}.2"], files
        assert all((Path(tmp) / f).stat().st_size <= 10_100 for f in files)
    assert MAX_BYTES * (BACKUPS + 1) <= 64 << 20


def test_node_log_escapes_a_messages_newlines_and_escapes_but_not_its_own_traceback():
    with tempfile.TemporaryDirectory() as tmp:
        handler = text_handler(Path(tmp))
        log = logging.getLogger("test-safe-text")
        log.addHandler(handler)
        log.propagate = False
        try:
            log.warning("peer up at %s", "evil\n2099-01-01 FORGED\x1b[2J\u202e")
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("failed: %s", "a\rb")
        finally:
            log.removeHandler(handler)
            handler.close()
        text = (Path(tmp) / TEXT_FILE).read_text()
    assert "evil\\x0a2099-01-01 FORGED\\x1b[2J\\u202e" in text and "a\\x0db" in text
    assert "\x1b" not in text and not [ln for ln in text.splitlines() if ln.startswith("2099")]
    assert "Traceback (most recent call last):\n" in text and "ValueError: boom" in text
