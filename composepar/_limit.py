"""``composepar.limit``: cap the native parallelism of a block, borrowing from the arbiter."""

import functools
import threading

from . import _config, _task

__all__ = ["limit"]


class limit:
    """Caps native thread pools (BLAS, OpenMP, ...) inside the block to ``n`` threads.

    ``n=None`` means "my fair share": as many as the arbiter grants. The
    threads are borrowed from the arbiter: outside any task, the block holds
    a lease asking for ``n - 1`` extras, so on a busy machine it gets fewer.
    Nestable (an inner limit never exceeds the outer one) and per thread;
    the previous pool settings are restored on exit, exceptions included.
    Usable as a decorator::

        with composepar.limit(2):
            np.linalg.eigh(a)       # at most 2 BLAS threads, fewer if the machine is busy

        @composepar.limit(1)
        def task(x): ...
    """

    __slots__ = ("n", "_local")

    def __init__(self, n=None):
        if n is not None:
            _config.check_positive_int(n, "n")
        self.n = n  # the cap, or None for the fair share
        # Per thread: the scope each active entry opened (or None), innermost
        # last (one instance may be entered by several threads).
        self._local = threading.local()

    def _frames(self):
        frames = getattr(self._local, "frames", None)
        if frames is None:
            frames = self._local.frames = []
        return frames

    def __enter__(self):
        caps = _task.thread_caps()
        scope = _task.current_scope()
        if self.n is not None:
            caps.append(min(self.n, caps[-1]) if caps else self.n)
        opened = unpinned = None
        try:
            if scope is None:
                extra = None if self.n is None else self.n - 1
                opened = _task.TaskScope(extra_wanted=extra)
                opened.__enter__()
            else:
                if self.n is None or self.n > 1:
                    # The block's code may use the budget itself, not only the
                    # native pools: a pinned task asks its share again.
                    unpinned = scope.unpin()
                scope.cap = min(caps) if caps else None
                _task.apply(scope)
        except BaseException:
            if self.n is not None and caps:
                caps.pop()
            raise
        self._frames().append((opened, unpinned))
        return self

    def __exit__(self, *exc_info):
        opened, unpinned = self._frames().pop()
        caps = _task.thread_caps()
        if self.n is not None and caps:
            caps.pop()
        if opened is not None:
            opened.__exit__(*exc_info)  # puts the pools back to the program's values
            return
        scope = _task.current_scope()
        if scope is not None:
            if unpinned is not None:
                scope.repin(unpinned)
            scope.cap = min(caps) if caps else None
            _task.apply(scope)

    @property
    def threads(self):
        """The budget inside the block now (None outside it)."""
        return _task.current_budget()

    def __call__(self, func):
        @functools.wraps(func)
        def limited(*args, **kwargs):
            with limit(self.n):
                return func(*args, **kwargs)

        return limited

    def __repr__(self):
        return f"composepar.limit({self.n!r})"
