"""The node's structured log: HOME/logs/node.jsonl, one JSON object a line (time, level, logger,
message, and the record's extra fields), rotated at a size cap with a few files kept, so a node left
running for months does not fill its owner's disk and a log shipper can read it without a parser of its
own. It is written beside node.log (plain text, read by people and by tests); nothing is printed."""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path

LOG_DIR = "logs"
LOG_FILE = "node.jsonl"
MAX_BYTES = 10 << 20  # per file
BACKUPS = 5  # node.jsonl.1 … node.jsonl.5: 60 MiB at most in all
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
