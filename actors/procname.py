"""Names for a node's processes. Thespian forks every actor from the node, so all of them share its
command line; a name (what `top`, `ps -o comm` and bench/node_memory.py show) tells the owner which is
the ledger, a model runner or a step's sandbox keeper."""

from __future__ import annotations

import ctypes

PR_SET_NAME = 15


def name_process(name: str) -> None:
    """Set this process's name (Linux keeps 15 bytes); elsewhere, or if refused, nothing changes."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass
