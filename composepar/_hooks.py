"""Patches that coordinate the application's own pools (installed by the launcher).

    multiprocessing.pool.Pool (and ThreadPool)   apply_async, map/starmap (_map_async),
                                                 imap, imap_unordered
    concurrent.futures Thread/ProcessPoolExecutor submit (map goes through submit)
        -> the callable is wrapped in composepar.Task: it runs inside a
           TaskScope in the worker, holding a lease for its threads

    ApplyResult.wait, IMapIterator.next, Future.result/exception,
    concurrent.futures.wait, Pool.join, Executor.shutdown
        -> the waiting thread is idle: its lease is given back for the wait

    loky's ProcessPoolExecutor.submit (joblib's default backend, and loky
    itself), patched when that module is imported
        -> as the stdlib executors

Pools that libraries create through these classes (joblib's threading
backend, Dask's threaded and multiprocessing schedulers) are covered too.
Under ``--static`` no lease is taken: each task of a pool of P workers gets
``capacity // P`` threads, like Intel's smp module.
"""

import concurrent.futures
import concurrent.futures.process
import concurrent.futures.thread
import functools
import importlib.abc
import multiprocessing.pool
import os
import sys

from . import _config, _demand, _task
from ._task import Task, idle

__all__ = ["install", "installed", "wrap_task", "submit_to_pool", "submit_to_executor",
           "map_on_executor", "unpatched"]

_originals = {}  # (owner, attribute name) -> the original attribute, once installed
_static = False  # --static: fixed split instead of leases


def installed():
    return bool(_originals)


def _static_threads(workers):
    if not _static:
        return None
    capacity = _config.resolve_capacity() or os.cpu_count() or 1
    return max(1, capacity // max(1, workers or 1))


def wrap_task(func, workers=None, threads=None, domain=None):
    """``func`` as a Task for a pool of ``workers``, run in ``domain``'s budget."""
    return Task.wrap(func, threads=threads, static_threads=_static_threads(workers), domain=domain)


def submit_to_pool(pool, original, func, args, kwargs, new_tasks=None, threads=None):
    """Queues `func` on a multiprocessing Pool or ThreadPool through `original`,
    as a Task, with the pool's demand published first."""
    workers = pool._processes
    if _static:
        return original(pool, wrap_task(func, workers, threads), *args, **kwargs)
    arbiter = _task.get_arbiter()
    task = wrap_task(func, workers, threads, arbiter.domain)
    estimate = _demand.before_submit(arbiter, pool, workers, new_tasks)
    try:
        _task.suspend_current()
        _task.wake_refresher()
        return original(pool, task, *args, **kwargs)
    finally:
        _demand.after_submit(arbiter, pool, estimate)


def submit_to_executor(executor, original, fn, args, kwargs):
    """Submits `fn` to a concurrent.futures executor through `original`, as a Task."""
    workers = executor._max_workers
    if _static:
        return original(executor, wrap_task(fn, workers), *args, **kwargs)
    arbiter = _task.get_arbiter()
    task = wrap_task(fn, workers, domain=arbiter.domain)
    estimate = _demand.before_submit(arbiter, executor, workers, new_tasks=1, executor=True)
    try:
        _task.suspend_current()
        _task.wake_refresher()
        future = original(executor, task, *args, **kwargs)
    except BaseException:
        _demand.after_submit(arbiter, executor, estimate)
        raise
    _demand.after_submit(arbiter, executor, estimate, future)
    return future


def unpatched(owner, name):
    """The stdlib's own `owner.name`, whether or not the hooks are installed."""
    return _originals.get((owner, name), getattr(owner, name))


def map_on_executor(executor, original, fn, iterables, kwargs):
    """Executor.map submits its tasks one by one: announce the batch first, so
    the first task does not start while its siblings look absent."""
    if _static:
        return original(executor, fn, *iterables, **kwargs)
    arbiter = _task.get_arbiter()
    estimate = _demand.before_submit(arbiter, executor, executor._max_workers, executor=True)
    try:
        return original(executor, fn, *iterables, **kwargs)  # submits them all before returning
    finally:
        _demand.after_submit(arbiter, executor, estimate)


def _executor_map(original):
    @functools.wraps(original)
    def patched(self, fn, *iterables, **kwargs):
        return map_on_executor(self, original, fn, iterables, kwargs)

    return patched


def _patch(owner, name, make):
    original = getattr(owner, name)
    _originals[(owner, name)] = original
    setattr(owner, name, make(original))


def _pool_submit(new_tasks):
    """A patch of a Pool method whose first argument is the function to run."""

    def make(original):
        @functools.wraps(original)
        def patched(self, func, *args, **kwargs):
            return submit_to_pool(self, original, func, args, kwargs, new_tasks)

        return patched

    return make


def _executor_submit(original):
    @functools.wraps(original)
    def patched(self, fn, /, *args, **kwargs):
        return submit_to_executor(self, original, fn, args, kwargs)

    return patched


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


# loky's executor does not derive from the stdlib's: patch it where it lives.
_LOKY_MODULES = ("joblib.externals.loky.process_executor", "loky.process_executor")


def _patch_loky(module):
    executor = getattr(module, "ProcessPoolExecutor", None)
    if executor is not None and (executor, "submit") not in _originals:
        _patch(executor, "submit", _executor_submit)
        _patch(executor, "map", _executor_map)


class _LoadedThenPatched(importlib.abc.Loader):
    """Runs the real loader, then patches the module it made."""

    def __init__(self, loader):
        self._loader = loader  # the loader the import system found

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _patch_loky(module)


class _PatchLokyOnImport(importlib.abc.MetaPathFinder):
    """Finds loky's process_executor with the other finders and patches it once loaded."""

    def find_spec(self, name, path, target=None):
        if name not in _LOKY_MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _LoadedThenPatched(spec.loader)
                return spec
        return None


_loky_finder = _PatchLokyOnImport()


def install(static=False):
    """Patches the pools and waits of this process. Idempotent."""
    global _static
    _static = static
    if _originals:
        return
    pool = multiprocessing.pool
    _patch(pool.Pool, "apply_async", _pool_submit(new_tasks=1))
    for name in ("_map_async", "imap", "imap_unordered"):
        _patch(pool.Pool, name, _pool_submit(new_tasks=None))
    for executor in (concurrent.futures.ThreadPoolExecutor, concurrent.futures.ProcessPoolExecutor):
        _patch(executor, "submit", _executor_submit)
        _patch(executor, "map", _executor_map)
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
    for name in _LOKY_MODULES:
        if name in sys.modules:
            _patch_loky(sys.modules[name])
    sys.meta_path.insert(0, _loky_finder)
