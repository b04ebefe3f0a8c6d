"""Starting a node's Thespian actor system safely. Thespian's TCP transport unpickles whatever reaches
its ports and binds them to 0.0.0.0 by default; `loopback_only()` rebinds every listener to 127.0.0.1
before the system starts, and forked actors inherit it."""

from __future__ import annotations

import logging
import os
import signal
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


def die_with_parent(sig: int = 9) -> None:
    """Ask the kernel to send `sig` (default SIGKILL) to this process when its parent dies (Linux), so a
    node killed with -9 takes its actors with it instead of leaving orphans holding ports and models."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def owned_process() -> None:
    """In a Thespian process just forked: die with its parent, and leave Ctrl-C to the node. A terminal's
    Ctrl-C reaches the whole process group, and each actor printed a KeyboardInterrupt traceback while the
    node itself stopped cleanly (it stops its actors)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()


def owned_processes() -> None:
    """Keep Thespian's admin and actors inside the node's process group and tied to their parents.
    Thespian daemonizes its admin (setsid + double fork), which would orphan every actor of a node that
    dies; here the admin skips that, and every actor process dies with the one that forked it."""
    import thespian.system.multiprocCommon as mc

    if getattr(mc, "_homemesh_owned", False):
        return
    start_admin, start_child, start_logger = mc.startAdmin, mc.startChild, mc.startupASLogger

    def startAdmin(*args, **kwargs):
        real_setsid, real_fork = os.setsid, os.fork

        def fork_once() -> int:  # "if os.fork(): sys.exit(0)": pretend to be the grandchild
            os.fork = real_fork
            return 0

        os.setsid, os.fork = (lambda: None), fork_once
        owned_process()
        try:
            return start_admin(*args, **kwargs)
        finally:
            os.setsid, os.fork = real_setsid, real_fork

    def startChild(*args, **kwargs):
        owned_process()
        return start_child(*args, **kwargs)

    def startupASLogger(*args, **kwargs):
        owned_process()
        return start_logger(*args, **kwargs)

    mc.startAdmin, mc.startChild, mc.startupASLogger = startAdmin, startChild, startupASLogger
    mc._homemesh_owned = True


def start(log_file: Path, attempts: int = 5):
    """Start a private multiprocTCPBase system for one node, loopback only, logging to `log_file`. The
    admin port is picked free, but another process may take it before Thespian binds it (nodes starting
    side by side, actors binding ephemeral ports): Thespian then says the port holds no valid admin, and
    a fresh port is tried."""
    from thespian.actors import InvalidActorAddress

    for attempt in range(attempts):
        try:
            return _start(_free_port(), log_file)
        except InvalidActorAddress:
            if attempt == attempts - 1:
                raise


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(admin_port: int, log_file: Path):
    loopback_only()
    owned_processes()
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
