"""Starting a node's Thespian actor system safely. Thespian's TCP transport unpickles whatever reaches
its ports and binds them to 0.0.0.0 by default; `loopback_only()` rebinds every listener to 127.0.0.1
before the system starts, and forked actors inherit it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

_patched = False


def loopback_only() -> None:
    """Make every Thespian listener (admin and actors) bind 127.0.0.1 instead of all interfaces."""
    global _patched
    if _patched:
        return
    from thespian.system.transport.IPBase import IPActorAddress

    def bind_args(self: IPActorAddress) -> tuple:
        host, *rest = self.bindname
        return ((("127.0.0.1" if host in ("", "0.0.0.0", None) else host), *rest),)

    IPActorAddress.bindArgs = property(bind_args)
    _patched = True


def start(admin_port: int, log_file: Path):
    """Start a private multiprocTCPBase system for one node, loopback only, logging to `log_file`."""
    loopback_only()
    os.environ["THESPLOG_FILE"] = str(log_file)
    os.environ.setdefault("THESPLOG_THRESHOLD", "WARNING")
    os.environ["THESPIAN_BASE_IPADDR"] = "127.0.0.1"
    from thespian.actors import ActorSystem

    logcfg = {
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_file), "formatter": "plain",
                              "level": logging.INFO}},
        "root": {"handlers": ["file"], "level": logging.INFO},
    }
    return ActorSystem("multiprocTCPBase", {"Admin Port": admin_port}, logDefs=logcfg, transientUnique=True)
