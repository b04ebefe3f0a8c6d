"""One small error hierarchy: local mistakes (the user's input, this node's state) are told apart from
faults of a remote peer, and each carries the data a caller needs to explain it."""

from __future__ import annotations


class MeshError(Exception):
    """Base of every error homemesh raises on purpose."""


class UserError(MeshError):
    """Bad input from the person at the keyboard: the CLI prints it as one line and exits non-zero."""


class JobError(UserError):
    """A job file that cannot run: bad JSON, a cycle, an unknown kind, a missing reference."""


class ConfigError(UserError):
    """A node home, address or option that cannot be used."""


class ModelFileError(ConfigError):
    """A model file that llama.cpp must not be given: not a well-formed GGUF file (mesh.steps.gguf says what
    is wrong and at which byte, `offset`)."""

    def __init__(self, message: str, offset: int = 0):
        super().__init__(message)
        self.offset = offset


class NodeUnreachable(UserError):
    """The node's HTTP API did not answer."""


class AuthError(UserError):
    """The API token is missing or wrong."""


class CreditError(UserError):
    """This node may not spend now: past its credit line, or its ledger cannot record payments."""


class Interrupted(MeshError):
    """The person at the keyboard stopped waiting (Ctrl-C) for something that goes on without them: the
    message says what goes on and how to get back to it; the CLI exits 130."""


class RemoteError(MeshError):
    """Something a peer sent broke the rules (as opposed to a mistake here): never trusted, counted."""


class Rejected(RemoteError):
    """An envelope or frame failed a check; `reason` is the short counter key (e.g. 'bad-signature')."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class StepFailed(MeshError):
    """A step ran and failed (sandbox error, timeout, model error); the message is shown to users."""


class LimitHit(StepFailed):
    """A step stopped by a limit it ran under (its time, its memory): the limit's terms belong in the
    message; an error of the step's own code does not."""


class LedgerError(MeshError):
    """The ledger could not be written or does not verify."""


class JournalError(MeshError):
    """The node's job journal cannot be opened, read back or written (a full or read-only disk, a damaged
    file): jobs would not survive a restart, so new ones are refused; the message says what to do."""


class NoAnswer(MeshError):
    """One of the node's own actors did not answer in time (it may be dead or overloaded): a local fault,
    raised by the bridge and caught by whoever asked (the worker, the API)."""
