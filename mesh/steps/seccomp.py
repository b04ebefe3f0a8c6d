"""The seccomp filter bubblewrap loads before a python step's interpreter starts: the system calls a
computation never needs, and that are the usual first move of an escape, fail with EPERM (mounts,
namespaces, ptrace and cross-process memory, kernel keyrings, BPF, perf, userfaultfd, io_uring, module
and kexec loading, clocks, reboot, …), sockets other than AF_UNIX are refused (there is no network in the
sandbox anyway; this also refuses raw and netlink sockets), and other architectures' syscall ABIs kill
the process. Built once per process with libseccomp (through pyseccomp) and handed to bwrap as BPF
bytes on a pipe (`--seccomp FD`)."""

from __future__ import annotations

import errno
import functools
import os
import socket
import tempfile
from typing import Any

from mesh.errors import StepFailed

DENIED = (
    # filesystems and namespaces: the sandbox's view is fixed once bwrap has set it up
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "name_to_handle_at", "open_by_handle_at",
    # other processes' memory and tracing
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise",
    # kernel attack surface a computation never touches
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "fanotify_init", "lookup_dcookie", "uselib", "personality",
    # the machine itself
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
    "swapoff", "acct", "quotactl", "syslog", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "iopl", "ioperm", "vhangup",
)
# clone() with a namespace flag is unshare() by another name. clone3 passes its flags in memory, which a
# seccomp filter cannot read: it answers ENOSYS, and the C library falls back to clone().
NAMESPACE_FLAGS = (0x00020000, 0x10000000, 0x20000000, 0x40000000, 0x04000000, 0x08000000, 0x02000000)
# CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWCGROUP


@functools.lru_cache(maxsize=1)
def base_filter(extra: tuple[str, ...] = (), error: type[StepFailed] = StepFailed) -> tuple[Any, Any]:
    """(pyseccomp, a filter allowing all but DENIED and `extra`, which fail with EPERM, clone() with a
    namespace flag, also EPERM, and clone3, ENOSYS): what the python sandbox's filter and the model
    process's (mesh.steps.confine) share. `error` when libseccomp cannot be loaded."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as exc:
        raise error(f"seccomp is not available (libseccomp2 and pyseccomp): {exc}") from None
    flt = sc.SyscallFilter(sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in DENIED + extra:
        try:
            flt.add_rule(deny, name)
        except (OSError, ValueError):
            continue  # a call this architecture does not have (e.g. iopl on arm64)
    for flag in NAMESPACE_FLAGS:
        flt.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    return sc, flt


def program() -> bytes:
    """The compiled BPF program (StepFailed when libseccomp cannot be loaded: no python step runs
    without it)."""
    sc, flt = base_filter()
    deny = sc.ERRNO(errno.EPERM)
    flt.add_rule(deny, "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    flt.add_rule(deny, "socketpair", sc.Arg(0, sc.NE, socket.AF_UNIX))
    with tempfile.TemporaryFile() as f:
        flt.export_bpf(f)
        f.seek(0)
        return f.read()


def pipe_fd() -> int:
    """A pipe's read end holding the program, for bwrap's `--seccomp FD` (the caller closes it once bwrap
    has started). The program is a few hundred bytes, far below a pipe's buffer."""
    data = program()
    r, w = os.pipe()
    try:
        os.write(w, data)
    finally:
        os.close(w)
    return r
