"""composepar's exceptions. Each subclasses the stdlib one a caller would expect."""

from concurrent.futures.process import BrokenProcessPool

__all__ = ["ArbiterError", "BrokenPoolError", "CapacityMismatchError", "WouldBlock"]


class ArbiterError(RuntimeError):
    """The arbiter's segment cannot be used: foreign, corrupt, from another
    release, unsafe permissions, or its lock is unrecoverable. The message
    names the file and how to remove it."""


class CapacityMismatchError(ArbiterError, ValueError):
    """A capacity was asked for that differs from the existing segment's."""


class WouldBlock(Exception):
    """Raised by ``*_nowait`` calls when the request cannot be granted at once."""


class BrokenPoolError(BrokenProcessPool):
    """A worker of a composepar.Pool died (killed by a signal, or exited
    abruptly) while the pool was running: the task it ran is lost, so every
    pending result fails with this error instead of waiting forever."""


class SegmentRetiredError(ArbiterError):
    """(internal) `cleanup` removed the segment after this handle attached; attach again."""
