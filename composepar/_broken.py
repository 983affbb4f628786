"""The error of a composepar pool whose worker died (see _errors for why it is apart)."""

from concurrent.futures.process import BrokenProcessPool

__all__ = ["BrokenPoolError"]


class BrokenPoolError(BrokenProcessPool):
    """A worker of a composepar.Pool died before the pool was terminated: killed
    by a signal, or its process ended in the middle of its work (os._exit() or
    sys.exit() in a task or the initializer, any exit code). The task it ran,
    or the task queue's lock it held, is lost, so every pending result fails
    with this error instead of waiting forever, and the pool is terminated."""
