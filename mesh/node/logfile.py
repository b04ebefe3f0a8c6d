"""The node's logs: HOME/node.log (plain text, read by people and by tests) and HOME/logs/node.jsonl (one
JSON object a line: time, level, logger, message and the record's extra fields, for a log shipper). Both
are rotated at a size cap with a few files kept, so a node left running for months, or a peer that makes
it log, does not fill its owner's disk. Much of what is logged is a stranger's (a peer's address, its
kinds, a job id): in node.log every control character of a message is written as an escape, newlines
too, so no peer can forge a line or send the operator's terminal an ESC sequence (JSON escapes them
itself). Nothing is printed."""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path

from mesh.controls import escape_controls

TEXT_FILE = "node.log"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LOG_DIR = "logs"
LOG_FILE = "node.jsonl"
MAX_BYTES = 10 << 20  # per file
BACKUPS = 5  # node.jsonl.1 … node.jsonl.5 (and node.log.1 …): 60 MiB at most each
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonLines(logging.Formatter):
    """One JSON object for one record; a value JSON cannot hold is written as its repr."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in obj:
                obj[key] = value
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=repr, ensure_ascii=False)


def json_handler(home: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> logging.Handler:
    """A rotating handler writing HOME/logs/node.jsonl (the folder made private, like the home)."""
    folder = home / LOG_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(folder / LOG_FILE, maxBytes=max_bytes, backupCount=backups,
                                                   encoding="utf-8")
    handler.setFormatter(JsonLines())
    return handler


class SafeText(logging.Formatter):
    """node.log's lines: a message's control characters and newlines escaped; a traceback (the node's
    own) stays as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord({**vars(record), "message": escape_controls(record.message, newlines=True)})
        return super().formatMessage(safe)


def text_handler(home: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> logging.Handler:
    """A rotating handler writing HOME/node.log with SafeText."""
    handler = logging.handlers.RotatingFileHandler(home / TEXT_FILE, maxBytes=max_bytes, backupCount=backups,
                                                   encoding="utf-8")
    handler.setFormatter(SafeText(TEXT_FORMAT))
    return handler
