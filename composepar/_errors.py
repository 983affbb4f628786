"""composepar's exceptions. Each subclasses the stdlib one a caller would expect.

BrokenPoolError lives in _broken: its base class, BrokenProcessPool, is in
concurrent.futures.process, whose import (multiprocessing, sockets, pickle)
would cost every launched program ~25 ms at start.
"""

__all__ = ["ArbiterError", "CapacityMismatchError", "WouldBlock"]


class ArbiterError(RuntimeError):
    """The arbiter's segment cannot be used: foreign, corrupt, from another
    release, unsafe permissions, or its lock is unrecoverable. The message
    names the file and how to remove it."""


class CapacityMismatchError(ArbiterError, ValueError):
    """A capacity was asked for that differs from the existing segment's."""


class WouldBlock(Exception):
    """Raised by ``*_nowait`` calls when the request cannot be granted at once."""


class SegmentRetiredError(ArbiterError):
    """(internal) `cleanup` removed the segment after this handle attached; attach again."""
