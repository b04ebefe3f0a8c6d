"""The node's JSON-lines log (mesh.node.logfile): every line is one JSON object with the record's extra
fields and its traceback, and the file rotates at its cap keeping a few."""

from __future__ import annotations

import json
import logging

import pytest

from mesh.node.logfile import LOG_DIR, LOG_FILE, json_handler

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
