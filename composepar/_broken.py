"""The error of a composepar pool whose worker died (see _errors for why it is apart)."""

from concurrent.futures.process import BrokenProcessPool

__all__ = ["BrokenPoolError"]


class BrokenPoolError(BrokenProcessPool):
    """A worker of a composepar.Pool died (killed by a signal, or exited
    abruptly) while the pool was running: the task it ran is lost, so every
    pending result fails with this error instead of waiting forever."""
