"""llama.cpp's own log lines go to Python logging (a log file, never the terminal), not to stderr: a
node's output is for its operator, and `Llama(verbose=False)` does not silence them all: llama-cpp-python
filters by ggml's old level numbers, so this build's warnings (level 3, which it takes for an error) reach
stderr, Gemma 3's "llama_kv_cache_iswa: using full-size SWA cache" at every model load."""

from __future__ import annotations

import ctypes
import logging

WARN, ERROR = 3, 4  # enum ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
_installed: object = None  # the ctypes callback, kept referenced for as long as llama.cpp may call it


def quiet_llama() -> None:
    """Route llama.cpp's log to the `llama.cpp` logger (warnings and errors at INFO, the rest dropped),
    once per process; call before the first model or grammar is built."""
    global _installed
    if _installed is not None:
        return
    import llama_cpp

    log = logging.getLogger("llama.cpp")

    @llama_cpp.llama_log_callback
    def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level in (WARN, ERROR):
            log.info("%s", text.decode("utf-8", "replace").rstrip())

    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))
    _installed = forward
