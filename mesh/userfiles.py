"""Files a user names or a home holds, read as text: a regular file of a bounded size, UTF-8, or one clear
error naming it. `Path.read_text` read a job file linked to /dev/zero until the machine ran out of memory
(5.3 GB in 6 s), hung on a FIFO, and turned a file of other bytes into a traceback (found by this
project's attack round on the CLI, 2026-12-06)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mesh.errors import UserError


def open_regular(path: Path | str, what: str, error: type[UserError] = UserError) -> int:
    """A descriptor of `path` open for reading, or `error` naming it (`what`: "job file") when it cannot be
    opened or is not a regular file. Opened without blocking, so a FIFO is refused instead of waited on,
    and checked before anything reads it (/dev/zero's endless bytes filled memory; fdopen raised
    IsADirectoryError for a directory, which no caller expected)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError as exc:
        os.close(fd)
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    if not regular:
        os.close(fd)
        raise error(f"{what} {path} is not a regular file")
    return fd


def read_text(path: Path | str, what: str, limit: int, error: type[UserError] = UserError) -> str:
    """The text of `path` (`what` names it in errors: "job file"), at most `limit` bytes; `error` otherwise
    (see open_regular)."""
    with os.fdopen(open_regular(path, what, error), "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise error(f"{what} {path} is over {_size(limit)}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start} is not)") from None


def _size(n: int) -> str:
    """`n` bytes in words, never rounded down (a limit of 3.94 MiB read "over 3 MiB", and 3.6 MB passed)."""
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n >> shift} {unit}" if not n % (1 << shift) else f"{n / (1 << shift):.2f} {unit}"
    return f"{n} bytes"

