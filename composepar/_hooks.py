"""Patches that coordinate the application's own pools (installed by the launcher).

    multiprocessing.pool.Pool (and ThreadPool)   apply_async, map/starmap (_map_async),
                                                 imap, imap_unordered
    concurrent.futures Thread/ProcessPoolExecutor submit (map goes through submit)
        -> the callable is wrapped in composepar.Task: it runs inside a
           TaskScope in the worker, holding a lease for its threads

    ApplyResult.wait, IMapIterator.next, Future.result/exception,
    concurrent.futures.wait, Pool.join, Executor.shutdown
        -> the waiting thread is idle: its lease is given back for the wait

Pools that libraries create through these classes (joblib's threading
backend, Dask's threaded and multiprocessing schedulers) are covered too.
Under ``--static`` no lease is taken: each task of a pool of P workers gets
``capacity // P`` threads, like Intel's smp module.
"""

import concurrent.futures
import concurrent.futures.process
import concurrent.futures.thread
import functools
import multiprocessing.pool
import os

from . import _config
from ._task import Task, idle

__all__ = ["install", "uninstall", "installed", "wrap_task"]

_originals = {}  # (owner, attribute name) -> the original attribute, while installed
_static = False  # --static: fixed split instead of leases


def installed():
    return bool(_originals)


def _static_threads(workers):
    if not _static:
        return None
    capacity = _config.resolve_capacity() or os.cpu_count() or 1
    return max(1, capacity // max(1, workers or 1))


def wrap_task(func, workers=None, threads=None):
    """``func`` as a Task for a pool of ``workers``."""
    return Task.wrap(func, threads=threads, static_threads=_static_threads(workers))


def _patch(owner, name, make):
    original = getattr(owner, name)
    _originals[(owner, name)] = original
    setattr(owner, name, make(original))


def _wrapping_func(position):
    """A patch that wraps the argument at `position` (after self) in a Task."""

    def make(original):
        @functools.wraps(original)
        def patched(self, *args, **kwargs):
            workers = getattr(self, "_processes", None) or getattr(self, "_max_workers", None)
            if len(args) > position:
                args = args[:position] + (wrap_task(args[position], workers),) + args[position + 1:]
            elif "func" in kwargs:
                kwargs["func"] = wrap_task(kwargs["func"], workers)
            return original(self, *args, **kwargs)

        return patched

    return make


def _idle_while(skip_if_ready=None):
    """A patch that gives the caller's lease back while the original waits."""

    def make(original):
        @functools.wraps(original)
        def patched(self, *args, **kwargs):
            if skip_if_ready is not None and skip_if_ready(self):
                return original(self, *args, **kwargs)
            with idle():
                return original(self, *args, **kwargs)

        return patched

    return make


def _idle_function(original):
    @functools.wraps(original)
    def patched(*args, **kwargs):
        with idle():
            return original(*args, **kwargs)

    return patched


def install(static=False):
    """Patches the pools and waits of this process. Idempotent."""
    global _static
    _static = static
    if _originals:
        return
    pool = multiprocessing.pool
    for name in ("apply_async", "_map_async", "imap", "imap_unordered"):
        _patch(pool.Pool, name, _wrapping_func(0))
    for executor in (concurrent.futures.ThreadPoolExecutor, concurrent.futures.ProcessPoolExecutor):
        _patch(executor, "submit", _wrapping_func(0))
        _patch(executor, "shutdown", _idle_while())
    _patch(pool.ApplyResult, "wait", _idle_while(lambda result: result.ready()))
    _patch(pool.IMapIterator, "next", _idle_while())
    pool.IMapIterator.__next__ = pool.IMapIterator.next
    _patch(pool.Pool, "join", _idle_while())
    future = concurrent.futures.Future
    _patch(future, "result", _idle_while(lambda f: f.done()))
    _patch(future, "exception", _idle_while(lambda f: f.done()))
    _patch(concurrent.futures, "wait", _idle_function)
    concurrent.futures._base.wait = concurrent.futures.wait


def uninstall():
    """Puts every patched attribute back (for tests)."""
    for (owner, name), original in _originals.items():
        setattr(owner, name, original)
    multiprocessing.pool.IMapIterator.__next__ = multiprocessing.pool.IMapIterator.next
    concurrent.futures._base.wait = concurrent.futures.wait
    _originals.clear()
