"""Confinement of the process that runs llama.cpp (mesh.steps.model_worker) once its model is loaded.
Strangers choose its prompts, its claims to score and (with --fetch-models) its GGUF files: a memory bug
in llama.cpp would run their code in it. Confined, such code

- is not root: a node started as root drops to its step user (no groups, real/effective/saved ids), the
  uid python steps run as; the node keeps its home 0700, so the key, ledger and journal are unreadable;
- gains nothing by exec: no_new_privs is set, and execve/execveat fail;
- is limited by Landlock (where the kernel has it): no file may be opened but the model (read only), no
  TCP bind or connect, no signal to a process outside the domain (its owner's python steps run as the
  same uid), no abstract unix socket; on an ordinary user's node this is what keeps the home unreadable;
- loses the kernel's escape-prone calls (seccomp.DENIED: mounts, namespaces, ptrace, BPF, keyrings, …),
  and every socket: the worker talks to its model runner actor over the pipes it was started with, never
  over Thespian's TCP, whose ports unpickle whatever arrives (a socket there would run code in the root
  NodeActor); signals only to itself.

Threads: the uid drop reaches every thread (glibc's setresuid signals each to change), seccomp is loaded
with TSYNC (which also sets no_new_privs on each), but Landlock binds the calling thread and those it
starts later only (no thread sync before ABI 8). So `confine` runs before llama.cpp starts its threads (the
worker loads with OPENBLAS_NUM_THREADS=1, and a load starts none); a process already running a second
thread gets no Landlock domain, and says so in its notes (a build whose backend starts threads at load).
Linux (x86_64 and arm64 syscall numbers) only; elsewhere ConfinementError."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh.errors import StepFailed
from mesh.steps.seccomp import base_filter
from mesh.steps.stepuser import StepUser

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
# landlock_create_ruleset, landlock_add_rule, landlock_restrict_self: the same numbers on x86_64 and arm64
SYS_LANDLOCK = (444, 445, 446)
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
READ_FILE = 1 << 2
FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}  # all rights each ABI knows
NET_TCP = 0b11  # LANDLOCK_ACCESS_NET_BIND_TCP | _CONNECT_TCP (ABI 4)
SCOPES = 0b11  # LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | _SIGNAL (ABI 6)
EXTRA_DENIED = ("execve", "execveat", "socket", "socketpair", "tkill", "pidfd_open", "pidfd_send_signal")


class ConfinementError(StepFailed):
    """The process could not be confined: it must not go on to serve strangers."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # (packed in the kernel's header: 12 bytes)
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass
class Confined:
    """What held: `landlock` is the ABI used (0: not available), `notes` what could not apply and why."""

    uid: int
    landlock: int = 0
    notes: list[str] = field(default_factory=list)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _prctl(libc: ctypes.CDLL, option: int, arg: int) -> None:
    if libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise ConfinementError(f"prctl({option}) failed: {os.strerror(err)}")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none (not built, or off at boot)."""
    if sys.platform != "linux":
        return 0
    abi = _libc().syscall(ctypes.c_long(SYS_LANDLOCK[0]), None, ctypes.c_size_t(0),
                          ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return max(0, int(abi))


def _landlock(libc: ctypes.CDLL, abi: int, readable: list[int]) -> None:
    """Restrict this thread (and what it starts) to reading the files open on `readable`."""
    fs = FS_BY_ABI[max(a for a in FS_BY_ABI if a <= abi)]
    attr = _RulesetAttr(fs, NET_TCP if abi >= 4 else 0, SCOPES if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)  # what this ABI reads
    ruleset = libc.syscall(ctypes.c_long(SYS_LANDLOCK[0]), ctypes.byref(attr), ctypes.c_size_t(size),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        raise ConfinementError(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for fd in readable:
            rule = _PathBeneath(READ_FILE, fd)
            if libc.syscall(ctypes.c_long(SYS_LANDLOCK[1]), ctypes.c_int(ruleset),
                            ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                raise ConfinementError(f"landlock_add_rule: {os.strerror(ctypes.get_errno())}")
        if libc.syscall(ctypes.c_long(SYS_LANDLOCK[2]), ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise ConfinementError(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)


def _seccomp() -> Any:
    """The filter, built (not loaded) while libseccomp can still be read: seccomp.DENIED and EXTRA_DENIED
    fail with EPERM; signals reach this process only; clone() with a namespace flag is refused and clone3
    answers ENOSYS (as in python steps). TSYNC: loaded on every thread."""
    sc, flt = base_filter(EXTRA_DENIED, ConfinementError)
    me, deny = os.getpid(), sc.ERRNO(errno.EPERM)
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        flt.add_rule(deny, name, sc.Arg(0, sc.NE, me))  # (kill(0, …) is the process group: refused too)
    flt.set_attr(sc.Attr.CTL_TSYNC, 1)
    return flt


def threads() -> int:
    """Threads of this process."""
    return len(os.listdir("/proc/self/task"))


def confine(user: StepUser | None, readable: Sequence[int] = ()) -> Confined:
    """Confine this process for good (see the module's docstring): drop to `user` (given when the node
    runs as root), no_new_privs, Landlock allowing reads of the files open on the descriptors `readable`,
    then seccomp. Raises ConfinementError when any part that must hold cannot; Landlock missing from the
    kernel is reported in `notes` instead."""
    if sys.platform != "linux":
        raise ConfinementError(f"cannot confine the model process on {sys.platform}")
    running = threads()  # (counted before anything changes: /proc may be closed to this process after)
    libc = _libc()
    flt = _seccomp()
    ppid = os.getppid()
    done = Confined(os.getuid())
    if user is not None:
        try:
            user.demote()
        except OSError as exc:
            raise ConfinementError(f"cannot drop to the step user {user.uid}: {exc}") from None
        if 0 in os.getresuid() + os.getresgid():
            raise ConfinementError("still root after dropping to the step user")
        done.uid = user.uid
        _prctl(libc, PR_SET_PDEATHSIG, 9)  # (a change of uid clears it: set again)
        if os.getppid() != ppid:  # the parent died in between: nobody will read this process's answers
            os._exit(1)
    elif os.geteuid() == 0:
        raise ConfinementError("a root process must be given a step user to drop to")
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
    abi = landlock_abi()
    if abi and running == 1:
        _landlock(libc, abi, list(readable))
        done.landlock = abi
    else:
        why = (f"{running} threads were running before it (one would stay outside its domain)" if abi else
               "this kernel has no Landlock")
        done.notes.append(f"no Landlock: {why}; the model process is confined by " + ("its uid, " if user else "")
                          + "no_new_privs and seccomp only" + ("" if user else ", and can read what the node's user can"))
    try:
        flt.load()
    except (OSError, RuntimeError) as exc:
        raise ConfinementError(f"cannot load the seccomp filter: {exc}") from None
    return done
