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


_sealed_in: int | None = None  # the pid whose start made the frames' key (a fork server's child makes its own)
MAC = 32  # bytes of each HMAC-SHA256 (two before each frame's pickle: its length's and its own)


class ForgedFrame(ValueError):
    """A frame on a Thespian port without this node's HMAC: dropped before it is unpickled."""


def sealed_frames() -> None:
    """Make every Thespian frame carry an HMAC-SHA256 under a key made here, at the node's start, and
    refuse a frame without it before unpickling it. Thespian's TCP transport unpickles whatever reaches
    its ports, and loopback keeps out other machines, not other users of this one: a local user's pickle
    sent to a root node's admin and actor ports ran as root (this project's red team, 2026-12-07). The key
    is in the memory of this process and of the admin and actors it forks, nowhere else (the sandbox,
    Chromium and the model process are exec'd, not forked, and run as the step user).

    A frame is `LENGTH>` then a tag of that length, a tag of the pickle, and the pickle. The length's tag
    is checked in the frame's first bytes: the pickle's tag can be checked only once all of it is in, and
    a local user who announced 4 GB had each actor hold whatever it sent until then."""
    global _sealed_in
    if _sealed_in == os.getpid():
        return
    import hashlib
    import hmac
    import pickle

    from thespian.system.transport import TCPTransport as tcp
    from thespian.system.transport.streamBuffer import (
        ReceiveBuffer,
        ackDataErrPacket,
        ackPacket,
        toSendBuffer,
    )

    key = os.urandom(32)

    def length_tag(size: int) -> bytes:
        return hmac.new(key, b"frame length %d" % size, hashlib.sha256).digest()

    class Sealed:
        @staticmethod
        def dumps(obj: object) -> bytes:
            data = pickle.dumps(obj)
            return length_tag(2 * MAC + len(data)) + hmac.new(key, data, hashlib.sha256).digest() + data

        @staticmethod
        def loads(frame: bytes) -> object:
            tag, data = frame[MAC:2 * MAC], frame[2 * MAC:]
            if not hmac.compare_digest(tag, hmac.new(key, data, hashlib.sha256).digest()):
                raise ForgedFrame(f"a frame of {len(frame)} bytes without this node's key: not unpickled")
            return pickle.loads(data)

    class SealedBuffer(ReceiveBuffer):
        """Thespian's reader of one frame, which drops the frame (and Thespian its connection) as soon as
        the length it announced turns out not to be sealed by this node's key."""

        checked = False

        def addMore(self, buf: bytes) -> None:
            super().addMore(buf)
            if self.checked or self._size is None or (len(self._buf) < MAC and self._size >= MAC):
                return
            if not hmac.compare_digest(bytes(self._buf[:MAC]), length_tag(self._size)):
                raise ForgedFrame(f"a frame announcing {self._size} bytes without this node's key: dropped")
            self.checked = True

    tcp.serializer = Sealed  # (read at each use: every buffer made from now on seals and checks)
    tcp.ReceiveBuffer = SealedBuffer  # (the name TCPTransport makes each frame's and each ACK's reader by)
    tcp.ackMsg = toSendBuffer(ackPacket, Sealed.dumps)
    tcp.ackDataErrMsg = toSendBuffer(ackDataErrPacket, Sealed.dumps)
    _sealed_in = os.getpid()


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
    sealed_frames()
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
