"""Text for the user's terminal. Much of what the CLI prints came from peers (a worker's error, a step's
output, a page's title): a control character in it would be obeyed by the terminal (ESC sequences set the
window title, clear the screen, rewrite earlier lines, or on some terminals answer back as typed input),
so every one is shown as an escape instead; newlines and tabs stay."""

from __future__ import annotations

from mesh.controls import escape_controls


def printable(text: str) -> str:
    """`text` with control characters (C0 but newline and tab, DEL, C1, and the bidi overrides that make
    text read in another order than it is) written as \\xNN or \\uNNNN."""
    return escape_controls(text)
