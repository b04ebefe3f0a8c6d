"""Control characters in text that strangers wrote (a peer's record, a worker's error, a step's output),
shown as escapes wherever people read it: a terminal obeys them (ESC sequences set the window title,
clear the screen, rewrite earlier lines), bidi overrides make text read in another order than it is, and
a newline in one log message forges a line of its own."""

from __future__ import annotations

import re

# (and lone surrogates, which JSON's \ud800 decodes to: no UTF-8 holds them, so printing one raised)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape_controls(text: str, newlines: bool = False) -> str:
    """`text` with control characters (C0 but tab and, unless `newlines`, newline; DEL; C1; bidi
    overrides; lone surrogates) written as \\xNN or \\uNNNN."""
    return (_CONTROL_OR_NEWLINE if newlines else _CONTROL).sub(_escape, text)
