"""Text for the user's terminal. Much of what the CLI prints came from peers (a worker's error, a step's
output, a page's title): a control character in it would be obeyed by the terminal (ESC sequences set the
window title, clear the screen, rewrite earlier lines, or on some terminals answer back as typed input),
so every one is shown as an escape instead; newlines and tabs stay."""

from __future__ import annotations

import os

from mesh.controls import escape_controls


def printable(text: str) -> str:
    """`text` with control characters (C0 but newline and tab, DEL, C1, and the bidi overrides that make
    text read in another order than it is) written as \\xNN or \\uNNNN."""
    return escape_controls(text)


def os_problem(exc: OSError) -> str:
    """An error of this machine's files in the words a person reads: the path and what the system said
    ("/proc/x: No such file or directory"), not Python's "[Errno 2] ..."."""
    what = exc.strerror or str(exc) or type(exc).__name__
    # (a file descriptor's errors name it by number: fsdecode raised TypeError on the int)
    paths = [os.fsdecode(p) if isinstance(p, (str, bytes, os.PathLike)) else str(p)
             for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' → '.join(paths)}: {what}" if paths else what
