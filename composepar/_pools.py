"""Drop-in pools: the stdlib's, with every task run inside a composepar TaskScope.

    composepar.Pool                 multiprocessing.pool.Pool
    composepar.ThreadPool           multiprocessing.pool.ThreadPool
    composepar.ProcessPoolExecutor  concurrent.futures.ProcessPoolExecutor
    composepar.ThreadPoolExecutor   concurrent.futures.ThreadPoolExecutor

Same signatures and behaviour, plus:
  * each task holds a lease while it runs, so its native pools (BLAS,
    OpenMP, ...) get its fair share of the machine and grow when others finish;
  * ``threads=N`` on the Pool methods: each task waits until N tokens can be
    had and runs with N threads (like Ray's ``num_cpus``);
  * a Pool worker killed by a signal breaks the pool: pending results raise
    BrokenPoolError (a BrokenProcessPool) instead of hanging forever.
"""

import concurrent.futures
import multiprocessing.pool
import signal
import threading
import time
import weakref

from . import _config
from ._broken import BrokenPoolError
from ._hooks import map_on_executor, submit_map_to_pool, submit_to_executor, submit_to_pool, unpatched

__all__ = ["Pool", "ThreadPool", "ProcessPoolExecutor", "ThreadPoolExecutor"]

_WATCH_SECONDS = 0.05


def _checked_threads(threads):
    return None if threads is None else _config.check_positive_int(threads, "threads")


class _TaskWrapping:
    """The Pool methods, with ``func`` run as a composepar Task (see the module doc).

    Every public method goes through apply_async, _map_async, imap or
    imap_unordered in the stdlib, so those four submit; the others only add
    the ``threads=`` keyword.
    """

    def _submit(self, original, func, args, kwargs, new_tasks, threads):
        return submit_to_pool(self, original, func, args, kwargs, new_tasks, _checked_threads(threads))

    def _submit_map(self, func, iterable, mapper, chunksize, callback, error_callback, threads):
        parent = unpatched(multiprocessing.pool.Pool, "_map_async")
        return submit_map_to_pool(self, parent, func, iterable, mapper, (chunksize, callback, error_callback), {},
                                  _checked_threads(threads))

    def apply(self, func, args=(), kwds={}, *, threads=None):  # noqa: B006 - the stdlib signature
        return self.apply_async(func, args, kwds, threads=threads).get()

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None, *, threads=None):  # noqa: B006
        parent = unpatched(multiprocessing.pool.Pool, "apply_async")
        return self._submit(parent, func, (args, kwds, callback, error_callback), {}, 1, threads)

    def map(self, func, iterable, chunksize=None, *, threads=None):
        return self.map_async(func, iterable, chunksize, threads=threads).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None, *, threads=None):
        return self._submit_map(func, iterable, multiprocessing.pool.mapstar, chunksize, callback, error_callback,
                                threads)

    def starmap(self, func, iterable, chunksize=None, *, threads=None):
        return self.starmap_async(func, iterable, chunksize, threads=threads).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None, *, threads=None):
        return self._submit_map(func, iterable, multiprocessing.pool.starmapstar, chunksize, callback,
                                error_callback, threads)

    def imap(self, func, iterable, chunksize=1, *, threads=None):
        return self._submit(unpatched(multiprocessing.pool.Pool, "imap"), func, (iterable, chunksize), {}, None, threads)

    def imap_unordered(self, func, iterable, chunksize=1, *, threads=None):
        return self._submit(unpatched(multiprocessing.pool.Pool, "imap_unordered"), func, (iterable, chunksize), {}, None, threads)


class Pool(_TaskWrapping, multiprocessing.pool.Pool):
    """``multiprocessing.pool.Pool`` coordinated through the arbiter; see the module doc."""

    def __init__(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None):
        self._workers_started = []  # every worker process ever started; the watcher reads it
        self._broken = None  # the BrokenPoolError once a worker died abruptly
        # The watcher may terminate the pool while the owner calls terminate()
        # too: the stdlib finalizer runs once, so the second caller must wait
        # for the first to finish killing the workers.
        self._terminating = threading.Lock()
        # The stdlib starts each worker through self.Process(ctx, ...), also
        # from its worker-handler thread: an instance attribute catches all.
        started = self._workers_started

        def tracked_process(ctx, *args, **kwds):
            process = ctx.Process(*args, **kwds)
            started.append(process)
            return process

        self.Process = tracked_process
        super().__init__(processes, initializer, initargs, maxtasksperchild, context)
        watcher = threading.Thread(target=_watch_workers, args=(weakref.ref(self), started),
                                   name="composepar-pool-watcher", daemon=True)
        watcher.start()

    def terminate(self):
        with self._terminating:
            super().terminate()

    def _check_running(self):
        if self._broken is not None:
            raise self._broken
        super()._check_running()

    def _break(self, worker):
        code = worker.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        self._broken = BrokenPoolError(
            f"a worker of this composepar.Pool (pid {worker.pid}) {how} while the pool was running; the task it "
            f"ran is lost, so the pending results fail and the pool is closed. Create a new pool; if workers run "
            f"out of memory, use fewer processes or maxtasksperchild")
        for result in list(self._cache.values()):
            _fail(result, self._broken)
        self.terminate()


def _fail(result, error):
    """Completes a pending ApplyResult, MapResult or IMapIterator with `error`."""
    try:
        if isinstance(result, multiprocessing.pool.IMapIterator):
            with result._cond:
                result._length = result._index + 1  # the error is the last item it yields
            result._set(result._index, (False, error))
        else:
            result._set(0, (False, error))
    except (KeyError, IndexError):
        pass  # completed by the result handler meanwhile


def _watch_workers(pool_ref, started):
    while True:
        time.sleep(_WATCH_SECONDS)
        pool = pool_ref()
        if pool is None or pool._state == multiprocessing.pool.TERMINATE:
            return
        for worker in list(started):
            code = worker.exitcode
            if code is None:
                continue
            started.remove(worker)
            if code != 0 and pool._state == multiprocessing.pool.RUN:
                pool._break(worker)
                return
        if pool._state != multiprocessing.pool.RUN and not pool._cache:
            return
        del pool


class ThreadPool(_TaskWrapping, multiprocessing.pool.ThreadPool):
    """``multiprocessing.pool.ThreadPool`` coordinated through the arbiter."""


class _ExecutorWrapping:
    """submit and map of a concurrent.futures executor, with ``fn`` run as a
    composepar Task; ``_stdlib`` is the executor class whose own methods queue it."""

    _stdlib = None  # set by each subclass

    def submit(self, fn, /, *args, **kwargs):
        return submit_to_executor(self, unpatched(self._stdlib, "submit"), fn, args, kwargs)

    def map(self, fn, *iterables, **kwargs):
        return map_on_executor(self, unpatched(self._stdlib, "map"), fn, iterables, kwargs)


class ProcessPoolExecutor(_ExecutorWrapping, concurrent.futures.ProcessPoolExecutor):
    """``concurrent.futures.ProcessPoolExecutor`` coordinated through the arbiter
    (it already raises BrokenProcessPool when a worker dies)."""

    _stdlib = concurrent.futures.ProcessPoolExecutor


class ThreadPoolExecutor(_ExecutorWrapping, concurrent.futures.ThreadPoolExecutor):
    """``concurrent.futures.ThreadPoolExecutor`` coordinated through the arbiter."""

    _stdlib = concurrent.futures.ThreadPoolExecutor
