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
  * a Pool worker that dies (killed by a signal, or os._exit() or sys.exit()
    in a task) breaks the pool: every pending result raises BrokenPoolError
    (a BrokenProcessPool) instead of hanging forever, and terminate() returns.

How a composepar.Pool notices a dead worker:

    worker process                       parent
    _run_worker: stdlib worker loop      watcher thread: waits on every worker's
      then finished.value = 1  -------->   sentinel + a wake-up pipe; a worker that
    (killed, or exits mid-loop:            ended with finished == 0 died: _break
     finished stays 0)                     fails every pending result, then terminate()
"""

import collections
import concurrent.futures
import multiprocessing.pool
import os
import select
import signal
import struct
import threading
import weakref
from multiprocessing.connection import wait
from multiprocessing.reduction import ForkingPickler

from . import _config
from ._broken import BrokenPoolError
from ._hooks import map_on_executor, submit_map_to_pool, submit_to_executor, submit_to_pool, unpatched

__all__ = ["Pool", "ThreadPool", "ProcessPoolExecutor", "ThreadPoolExecutor"]

_START_POLL_SECONDS = 0.05  # the watcher's poll while a worker is created but not started (no sentinel yet)
_STOP_GRACE_SECONDS = 5.0  # a worker still alive this long after SIGTERM (its task handles it) gets SIGKILL
# Once every worker is gone, a queue lock still held this long is held by a
# dead worker (the pool's own threads hold it for one small write).
_LOCK_GRACE_SECONDS = 1.0
_DRAIN_POLL_SECONDS = 0.05  # how often terminate() checks that the task handler has left while it drains

_result_readers = weakref.WeakKeyDictionary()  # a Pool's result queue -> the _ResultReader its result handler uses


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
    """``multiprocessing.pool.Pool`` coordinated through the arbiter; see the module doc.

    A worker is dead, and the pool broken, when its process ends before the
    pool is terminated in any way other than by returning from the stdlib's
    worker loop: killed by a signal, os._exit() or sys.exit() (any code, 0
    too) in a task or the initializer, a crash. The loop returns only after
    the worker has delivered the result of every task it took and let go of
    the queues' locks: when it retires after maxtasksperchild tasks, or after
    close(). Then every pending result (maps and imap iterators as a whole)
    fails with BrokenPoolError, its error_callback runs once, new submissions
    raise it, and the pool is terminated.
    """

    def __init__(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None):
        # (process, finished) of every worker ever started; `finished` is a
        # shared byte the worker sets when its loop returns. The watcher
        # removes the workers that ended.
        self._workers_started = []
        self._broken = None  # the BrokenPoolError once a worker died
        # The watcher may terminate the pool while the owner calls terminate()
        # too: the stdlib finalizer runs once, so the second caller must wait
        # for the first to finish killing the workers.
        self._terminating = threading.Lock()
        self._wakeup = _Wakeup()  # wakes the watcher: a worker was created, the pool was terminated or collected
        # The stdlib starts each worker through self.Process(ctx, ...), also
        # from its worker-handler thread: an instance attribute catches all.
        started, wakeup = self._workers_started, self._wakeup

        def tracked_process(ctx, target, args, **kwds):
            finished = ctx.RawValue("b", 0)
            process = ctx.Process(target=_run_worker, args=(target, finished, *args), **kwds)
            started.append((process, finished))
            wakeup.set()
            return process

        self.Process = tracked_process
        try:
            super().__init__(processes, initializer, initargs, maxtasksperchild, context)
        except BaseException:
            wakeup.close()
            if getattr(self, "_outqueue", None) is not None:
                _result_readers.pop(self._outqueue).close()
            raise
        watcher = threading.Thread(target=_watch_workers, args=(weakref.ref(self, lambda _: wakeup.set()), started,
                                                                 wakeup),
                                   name="composepar-pool-watcher", daemon=True)
        watcher.start()

    def terminate(self):
        with self._terminating:
            super().terminate()
        self._wakeup.set()  # the watcher returns

    def _setup_queues(self):
        super()._setup_queues()
        self._quick_get = _result_readers[self._outqueue] = _ResultReader(self._outqueue._reader)

    def _check_running(self):
        if self._broken is not None:
            raise BrokenPoolError(*self._broken.args)  # a new one each time: a raise adds to its traceback
        super()._check_running()

    def _break(self, worker):
        """`worker` died: fail every pending result with BrokenPoolError, then terminate the pool."""
        # Stopped first, the worker handler starts no replacement and reaps
        # no worker: the dead one's exit code is read here alone (two readers
        # of a forkserver worker's status pipe can get 255 instead).
        self._worker_handler._state = multiprocessing.pool.TERMINATE
        self._change_notifier.put(None)
        self._worker_handler.join()
        worker.join()
        self._broken = BrokenPoolError(_death_message(worker.pid, worker.exitcode))
        callback_errors = self._fail_pending()
        self.terminate()
        # A submission that passed _check_running before _broken was set
        # reached the cache while terminate() ran.
        callback_errors += self._fail_pending()
        if callback_errors:
            raise callback_errors[0]  # the watcher's thread reports it, as the stdlib's result handler would

    def _fail_pending(self):
        """Fails every result in the cache with the pool's BrokenPoolError; returns what error_callbacks raised."""
        callback_errors = []
        for result in list(self._cache.values()):
            try:
                _fail(result, self._broken)
            except Exception as error:  # noqa: PERF203 - one callback's error must not spare the other results
                callback_errors.append(error)
        return callback_errors

    @classmethod
    def _terminate_pool(cls, taskqueue, inqueue, outqueue, pool, change_notifier, worker_handler, task_handler,
                        result_handler, cache):
        """What Pool.terminate() does (this is its finalizer), in an order a dead worker cannot block.

        The stdlib takes the task queue's read lock before it stops the
        workers, and writes the result handler's sentinel under the result
        queue's write lock; an idle worker waits for a task holding the read
        lock, and a worker killed while it holds a lock never lets go. Here
        the workers are stopped first: from then on only this process uses
        the queues, a lock still held belongs to a dead worker, and a message
        a worker was writing when it died will never be complete, so the
        result handler is stopped through its reader and the task queue is
        drained as raw bytes.
        """
        me = threading.current_thread()
        worker_handler._state = multiprocessing.pool.TERMINATE
        task_handler._state = multiprocessing.pool.TERMINATE
        result_handler._state = multiprocessing.pool.TERMINATE
        change_notifier.put(None)
        if me is not worker_handler:
            worker_handler.join()  # no worker starts after this
        # Held while the workers are stopped, the result queue's write lock
        # keeps them from being killed in the middle of a result.
        holding = outqueue._wlock.acquire(timeout=_LOCK_GRACE_SECONDS)
        _stop_workers(pool)
        if holding:
            outqueue._wlock.release()
        else:
            _free_from_the_dead(outqueue._wlock)  # the task handler writes its last message under it
        reader = _result_readers.pop(outqueue)
        reader.stop()  # the result handler leaves at its next read, mid-message too
        if me is not result_handler:
            result_handler.join()
        if me is not task_handler:
            queues = [inqueue._reader, outqueue._reader]
            while task_handler.is_alive():  # it may be blocked writing into a full pipe
                for end in wait(queues, timeout=_DRAIN_POLL_SECONDS):
                    os.read(end.fileno(), 1 << 16)
            task_handler.join()
        reader.close()


def _run_worker(target, finished, *args):
    """A pool worker's process: the stdlib's worker loop, then `finished` set (see Pool)."""
    target(*args)
    finished.value = 1


def _stop_workers(workers):
    """SIGTERM to the live `workers` (SIGKILL to one that outlives the grace period); returns once all are gone."""
    for worker in workers:
        if worker.exitcode is None:
            worker.terminate()
    for worker in workers:
        worker.join(_STOP_GRACE_SECONDS)
        if worker.exitcode is None:
            worker.kill()
            worker.join()


def _free_from_the_dead(lock):
    """Leaves a queue `lock` free, once no worker is alive: released by the pool thread that holds
    it, or by this call if it stays held past the grace period (a dead holder never releases it)."""
    lock.acquire(timeout=_LOCK_GRACE_SECONDS)
    lock.release()


def _death_message(pid, code):
    fix = ""
    if code is None:
        how = "ended before it finished its tasks"  # (its exit status was read elsewhere first)
    elif code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
        if code == -signal.SIGKILL:
            fix = "; if it ran out of memory (the OOM killer sends SIGKILL), use fewer processes or maxtasksperchild"
    else:
        how = f"exited with code {code} before it finished its tasks"
        fix = "; a task must return or raise, not call sys.exit() or os._exit(), and the initializer must not fail"
    return (f"a worker of this composepar.Pool (pid {pid}) {how}: the task it ran, or the task queue's lock it held, "
            f"is lost, so the pending results fail and the pool is terminated. Create a new pool{fix}")


def _fail(result, error):
    """Completes a pending ApplyResult, MapResult or IMapIterator as failed with `error`, as a whole."""
    if isinstance(result, multiprocessing.pool.IMapIterator):  # IMapUnorderedIterator too
        with result._cond:
            # What it received in order is still yielded, then `error` at
            # every next(). No count can reach the length any more, so a late
            # _set or the task handler's _set_length leaves the cache alone.
            result._items = _ThenBroken(result._items, error)
            result._unsorted.clear()
            result._index = -1
            result._cond.notify_all()
        _forget(result)
        return
    if result.ready():
        return  # the result handler completed it meanwhile
    if isinstance(result, multiprocessing.pool.MapResult):
        result._number_left = 0  # a chunk that still arrives takes it below 0: it cannot complete it again
        if not result._success:
            error = result._value  # a chunk had failed: a map reports its first exception, as the stdlib does
    result._success, result._value = False, error
    _forget(result)
    try:
        if result._error_callback:
            result._error_callback(error)
    finally:
        result._event.set()


def _forget(result):
    try:
        del result._cache[result._job]  # del, not pop: the pool's cache notifies its worker handler when emptied
    except KeyError:
        pass  # completed by the result handler meanwhile
    result._pool = None


class _ThenBroken(collections.deque):
    """An IMapIterator's received items, then (False, error) at every further popleft; drops what arrives late."""

    def __init__(self, items, error):
        super().__init__(items)
        self._error = error

    def popleft(self):
        return super().popleft() if self else (False, self._error)

    def append(self, item):
        pass


class _ResultReader:
    """A result handler's get(): the result queue's Connection.recv(), except that after
    stop() it raises EOFError at the next read, in the middle of a message too (the
    rest of a result a worker was writing when it was killed never comes)."""

    def __init__(self, connection):
        self._fd = connection.fileno()
        self._stopping = _Wakeup()
        self._poll = select.poll()  # (a poll object: one syscall per read, no selector to build)
        self._poll.register(self._fd, select.POLLIN)
        self._poll.register(self._stopping.fd, select.POLLIN)

    def __call__(self):
        size, = struct.unpack("!i", self._read(4))  # Connection's framing
        if size == -1:
            size, = struct.unpack("!Q", self._read(8))
        return ForkingPickler.loads(self._read(size))

    def _read(self, size):
        chunks = []
        while size:
            if any(fd == self._stopping.fd for fd, _ in self._poll.poll()):
                raise EOFError("the pool is terminated")
            chunk = os.read(self._fd, size)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def stop(self):
        self._stopping.set()

    def close(self):
        self._stopping.close()


class _Wakeup:
    """A self-pipe the watcher waits on beside the workers' sentinels; set() never blocks."""

    def __init__(self):
        self.fd, self._write_fd = os.pipe()  # the watcher waits on (and reads) fd
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_fd, False)
        self._lock = threading.Lock()  # close() against set() from other threads
        self._closed = False

    def set(self):
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._write_fd, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups the watcher has not read yet

    def clear(self):
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self):
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.fd)
                os.close(self._write_fd)


def _terminated(pool):
    return multiprocessing.pool.TERMINATE in (pool._state, pool._worker_handler._state)


def _watch_workers(pool_ref, started, wakeup):
    """The watcher thread of a Pool: waits for its workers to end and breaks the pool when one died."""
    try:
        while True:
            pool = pool_ref()
            if pool is None or _terminated(pool):
                return
            watched, unstarted = {}, False
            for entry in list(started):
                try:
                    watched[entry[0].sentinel] = entry
                except ValueError:  # created, not started yet: no sentinel to wait on
                    unstarted = True
            if not watched and not unstarted and not pool._worker_handler.is_alive():
                return  # closed, and every worker has left: none will start
            del pool  # not kept alive while waiting
            ready = wait([wakeup.fd, *watched], timeout=_START_POLL_SECONDS if unstarted else None)
            wakeup.clear()
            ended = [watched[sentinel] for sentinel in ready if sentinel in watched]
            for entry in ended:
                started.remove(entry)
            pool = pool_ref()
            if pool is None or _terminated(pool):
                return
            for worker, finished in ended:
                if not finished.value:
                    pool._break(worker)
                    return
            del pool
    finally:
        wakeup.close()


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
