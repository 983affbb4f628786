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

    numba's _launch_threads (its threading layer starting)
        -> the pool gets the launching thread's budget at once

    Process.join, Popen.wait and communicate, a blocking multiprocessing.Queue.get,
    a multiprocessing Connection's blocking recv and its poll with a timeout
        -> the waiting thread is idle, as above (waits nest: the outermost
           gives the lease back, and takes it again)

    Process._bootstrap (a multiprocessing child, every start method)
        -> the child's main thread holds a lease while its target runs, from
           when a native pool is loaded, unless it runs a pool's worker loop
           (its tasks hold them) or a multiprocessing manager's server

    Pool.__init__, executors' submit, and multiprocessing's Process.start
    for the processes that run a pool's worker loop (Pool, ProcessPoolExecutor,
    composepar.Pool)
        -> a forked worker inherits a pthreads OpenBLAS at one thread
           (_threadpools, "A pthreads OpenBLAS stops its helper threads")

Pools that libraries create through these classes (joblib's threading
backend, Dask's threaded and multiprocessing schedulers) are covered too.
Under ``--static`` no lease is taken: each task of a pool of P workers gets
``capacity // P`` threads, like Intel's smp module.

Every module is patched when it is imported, not before (a finder on
sys.meta_path runs the real loader, then the patch): a launched program that
never uses a pool does not pay for importing multiprocessing and
concurrent.futures, about 30 ms. Modules already imported at install() are
patched at once.
"""

import functools
import os
import sys
import threading

from . import _config, _demand, _task, _threadpools
from ._task import Task, idle

__all__ = ["install", "installed", "wrap_task", "submit_to_pool", "submit_map_to_pool", "submit_to_executor",
           "map_on_executor", "unpatched"]

_originals = {}  # (owner, attribute name) -> the original attribute, once installed
_static = False  # --static: fixed split instead of leases


def installed():
    return _finder in sys.meta_path


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
    track_completions()
    estimate = _demand.before_submit(arbiter, pool, workers, new_tasks)
    try:
        _task.suspend_current()
        result = original(pool, task, *args, **kwargs)
    finally:
        _demand.after_submit(arbiter, pool, estimate)
    return result


def submit_map_to_pool(pool, original, func, iterable, mapper, args, kwargs, threads=None):
    """Pool._map_async (map, starmap and their _async forms) through `original`.

    The Task wraps the *mapper* (mapstar or starmapstar), which runs a whole
    chunk, rather than `func`: a map of N items in chunks of k takes N/k
    leases, not N, and pickles one Task per chunk. A chunk is one stretch of
    work in one worker; its lease is refreshed while it runs."""

    def map_async(pool, task, *rest, **kwargs):
        return original(pool, func, iterable, task, *rest, **kwargs)

    return submit_to_pool(pool, map_async, mapper, args, kwargs, None, threads)


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
        if _forks_workers(executor):
            with _threadpools.pool_worker_forks():  # a submit may start the workers
                future = original(executor, task, *args, **kwargs)
        else:
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


def _pool_map_async(original):
    @functools.wraps(original)
    def patched(self, func, iterable, mapper, *args, **kwargs):
        return submit_map_to_pool(self, original, func, iterable, mapper, args, kwargs)

    return patched


def _executor_submit(original):
    @functools.wraps(original)
    def patched(self, fn, /, *args, **kwargs):
        return submit_to_executor(self, original, fn, args, kwargs)

    return patched


def _idle_while(cannot_wait=None):
    """A patch that gives the caller's lease back while the original waits.
    ``cannot_wait(self, *args, **kwargs)``, called with the call's own
    arguments: True if this call returns at once (a result ready, a zero
    timeout), which then keeps the lease."""

    def make(original):
        @functools.wraps(original)
        def patched(self, *args, **kwargs):
            if cannot_wait is not None and cannot_wait(self, *args, **kwargs):
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


def _patch_multiprocessing_pool(pool):
    """multiprocessing.pool: submits and waits of Pool (ThreadPool derives from it)."""
    _patch(pool.Pool, "apply_async", _pool_submit(new_tasks=1))
    _patch(pool.Pool, "_map_async", _pool_map_async)
    for name in ("imap", "imap_unordered"):
        _patch(pool.Pool, name, _pool_submit(new_tasks=None))
    _patch(pool.ApplyResult, "wait", _idle_while(lambda result, *_, **__: result.ready()))
    _patch(pool.IMapIterator, "next", _idle_while())
    pool.IMapIterator.__next__ = pool.IMapIterator.next
    _patch(pool.Pool, "join", _idle_while())
    _patch(pool.Pool, "__init__", _pool_init)
    track_completions()


_tracking = False  # track_completions() ran: the stdlib's pool results publish as they complete
_tracking_lock = threading.Lock()


def track_completions():
    """Pool results publish the pool's demand as they complete (in the pool's
    result handler thread), and a terminated pool its zero: a demand left
    stale after the last task would cap the budget's other leases. Once per
    process, from install() or the first submit of a drop-in pool; a result
    of a pool composepar never saw publishes nothing (_demand.settled)."""
    global _tracking
    if _tracking:
        return
    import multiprocessing.pool as pool

    with _tracking_lock:
        if _tracking:
            return
        for result in (pool.ApplyResult, pool.MapResult, pool.IMapIterator, pool.IMapUnorderedIterator):
            _patch(result, "_set", _result_set)
        _patch(pool.Pool, "terminate", _pool_terminate)
        _tracking = True


def _result_set(original):
    @functools.wraps(original)
    def patched(self, *args, **kwargs):
        pool = self._pool  # the last _set of a result clears it
        original(self, *args, **kwargs)
        if pool is not None:
            _demand.settled(pool)

    return patched


def _pool_terminate(original):
    @functools.wraps(original)
    def patched(self):
        original(self)
        _demand.settled(self)  # its pending results will never run

    return patched


def _patch_futures_base(base):
    """concurrent.futures._base: Future's waits and wait(). The package binds
    its own ``wait`` from here after this module is loaded, so it gets the patch;
    as_completed is left alone (it yields futures already done)."""
    _patch(base.Future, "result", _idle_while(lambda f, *_, **__: f.done()))
    _patch(base.Future, "exception", _idle_while(lambda f, *_, **__: f.done()))
    _patch(base, "wait", _idle_function)
    package = sys.modules.get("concurrent.futures")
    if package is not None and getattr(package, "wait", None) is _originals[(base, "wait")]:
        package.wait = base.wait  # the package was loaded before install(): rebind its name too


def _patch_executor(module, name="ProcessPoolExecutor", waits=True):
    """An executor's submit and map; with ``waits``, its shutdown(wait=True) as a wait."""
    executor = getattr(module, name, None)
    if executor is None:
        return
    _patch(executor, "submit", _executor_submit)
    _patch(executor, "map", _executor_map)
    if waits:
        _patch(executor, "shutdown", _idle_while())


# The functions a pool's worker process runs: (module, qualified name).
_POOL_WORKER_LOOPS = frozenset({("multiprocessing.pool", "worker"), ("concurrent.futures.process", "_process_worker"),
                                ("composepar._pools", "_run_worker"),
                                ("joblib.externals.loky.process_executor", "_process_worker"),
                                ("loky.process_executor", "_process_worker")})


def _forks_workers(executor):
    """True if `executor` is a process executor that forks its workers."""
    context = getattr(executor, "_mp_context", None)  # ProcessPoolExecutor's (and loky's, which never forks)
    return context is not None and hasattr(context, "get_start_method") and _forks(context)


def _forks(context):
    """True if `context` (a multiprocessing context, or None: the default one)
    starts processes with fork. Asking the default context fixes its start
    method, as the process's start would a moment later."""
    method = context.get_start_method() if context is not None else sys.modules["multiprocessing"].get_start_method()
    return method == "fork"


def _target_of(process):
    """(module, qualified name) of the function a multiprocessing process runs."""
    target = getattr(process, "_target", None)
    return getattr(target, "__module__", None), getattr(target, "__qualname__", None)


def _process_start(original):
    @functools.wraps(original)
    def patched(self):
        if _target_of(self) in _POOL_WORKER_LOOPS:
            method = getattr(self, "_start_method", None)  # a context's Process class says; the default's does not
            if method == "fork" or (method is None and _forks(None)):
                with _threadpools.pool_worker_forks():
                    return original(self)
        return original(self)

    return patched


# Targets of multiprocessing children that hold no main-thread lease: a
# manager's server (it serves requests and waits), composepar's own.
_NO_MAIN_LEASE = frozenset({("multiprocessing.managers", "BaseManager._run_server")})


def _process_bootstrap(original):
    """A multiprocessing child's run (every start method): the child's main
    thread holds a lease while its target runs, from when a native pool is
    loaded (_task.enter_main_thread_with_pools), as a launched program's
    does; not in a pool's worker loop (its tasks hold leases, and between
    them it waits) nor in a manager's server. Never raises for composepar:
    the target runs whatever happens to the lease."""

    @functools.wraps(original)
    def patched(self, *args, **kwargs):
        target = _target_of(self)
        if target in _POOL_WORKER_LOOPS or target in _NO_MAIN_LEASE:
            return original(self, *args, **kwargs)
        _guarded(_task.enter_main_thread_with_pools)
        try:
            return original(self, *args, **kwargs)
        finally:
            # A fork child leaves through os._exit (no atexit): the lease is
            # closed here, so its tokens go back at once.
            _guarded(_task.exit_main_thread)

    return patched


def _guarded(call, consequence="this process's main thread runs without a lease"):
    """Runs `call`; a failure becomes one RuntimeWarning naming `consequence`, never the program's."""
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the program runs without composepar's part rather than fail
        import warnings

        warnings.warn(f"composepar: {call.__name__} failed ({type(error).__name__}: {error}); {consequence}",
                      RuntimeWarning, stacklevel=2)


def _patch_process(process):
    """multiprocessing.process: BaseProcess.start and _bootstrap (every
    context's Process derives from it), and join as a wait."""
    _patch(process.BaseProcess, "start", _process_start)
    _patch(process.BaseProcess, "_bootstrap", _process_bootstrap)
    _patch(process.BaseProcess, "join", _idle_while(
        lambda p, timeout=None: _no_wait(timeout) or p._popen is None or p._popen.poll() is not None))


def _no_wait(timeout):
    """True for a timeout that makes a wait return at once (<= 0; None waits forever)."""
    return timeout is not None and timeout <= 0


def _patch_connection(connection):
    """multiprocessing.connection: a blocking receive is a wait unless a message
    is ready (a worker fed through a Pipe, or a Queue's reader); so is a poll
    with a timeout (its default, 0, is not)."""
    for name in ("recv", "recv_bytes", "recv_bytes_into"):
        _patch(connection._ConnectionBase, name, _idle_while(lambda c, *_, **__: c.poll(0)))
    _patch(connection._ConnectionBase, "poll", _idle_while(lambda c, timeout=0.0: _no_wait(timeout)))


def _patch_queues(queues):
    """multiprocessing.queues: a worker blocked on Queue.get is idle (hand-made
    workers fed by a queue wait there between jobs); a get that cannot wait
    (block=False, timeout <= 0, an item ready) is not."""
    _patch(queues.Queue, "get", _idle_while(
        lambda q, block=True, timeout=None: not block or _no_wait(timeout) or q._poll()))


def _patch_subprocess(subprocess):
    """subprocess: a thread waiting for a child (wait, communicate, run) is idle."""
    _patch(subprocess.Popen, "wait", _idle_while(lambda p, *_, **__: p.returncode is not None))
    _patch(subprocess.Popen, "communicate", _idle_while())


def _pool_init(original):
    """A process Pool's __init__ starts all its workers: under fork, one
    pool_worker_forks() block around them all, so the parent is not raised
    between two forks. (ThreadPool's goes through here too, and forks nothing.)"""

    @functools.wraps(original)
    def patched(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None,
                **kwargs):
        if isinstance(self, sys.modules["multiprocessing.pool"].ThreadPool) or not _forks(context):
            return original(self, processes, initializer, initargs, maxtasksperchild, context, **kwargs)
        with _threadpools.pool_worker_forks():
            return original(self, processes, initializer, initargs, maxtasksperchild, context, **kwargs)

    return patched


def _after_load(original):
    """A library loader (ctypes.CDLL, the extension module loader): once it
    loaded, a caller of GNU OpenMP among the new objects has its parallel
    regions follow the budget from its first one (_threadpools.library_loaded)."""

    @functools.wraps(original)
    def patched(*args, **kwargs):
        result = original(*args, **kwargs)
        _guarded(_threadpools.native_pools.library_loaded, "the new library's OpenMP regions follow at task starts")
        return result

    return patched


def _patch_ctypes(ctypes):
    _patch(ctypes.CDLL, "__init__", _after_load)


def _patch_extension_loader():
    """Extension modules load through importlib's ExtensionFileLoader: patched at install()."""
    _patch(sys.modules["_frozen_importlib_external"].ExtensionFileLoader, "create_module", _after_load)


# module name -> its patch, applied once, when the module has been loaded.
# loky's executor does not derive from the stdlib's: it is patched where it lives.
_PATCHES = {
    "multiprocessing.process": _patch_process,
    "multiprocessing.queues": _patch_queues,
    "multiprocessing.connection": _patch_connection,
    "subprocess": _patch_subprocess,
    "multiprocessing.pool": _patch_multiprocessing_pool,
    "concurrent.futures._base": _patch_futures_base,
    "concurrent.futures.thread": functools.partial(_patch_executor, name="ThreadPoolExecutor"),
    "concurrent.futures.process": _patch_executor,
    "joblib.externals.loky.process_executor": functools.partial(_patch_executor, waits=False),
    "loky.process_executor": functools.partial(_patch_executor, waits=False),
    "numba.np.ufunc.parallel": _threadpools.watch_numba_launch,
    "ctypes": _patch_ctypes,
}
_patched_modules = set()  # names in _PATCHES whose patch has run


def _patch_module(name, module):
    if name in _patched_modules:
        return
    _patched_modules.add(name)
    _PATCHES[name](module)


class _LoadedThenPatched:
    """Runs the real loader, then patches the module it made. Anything else
    (get_source, is_package, resource readers) is the real loader's."""

    def __init__(self, loader, name):
        self._loader = loader  # the loader the import system found
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _patch_module(self._name, module)

    def __getattr__(self, attribute):
        return getattr(self._loader, attribute)


class _PatchOnImport:
    """A sys.meta_path finder: finds the modules of _PATCHES with the other
    finders and wraps their loader so that they are patched once loaded.
    (Not an importlib.abc subclass: importing importlib.abc costs ~5 ms.)"""

    def find_spec(self, name, path, target=None):
        if _task._main_pending:
            _task.main_thread_pools_maybe_loaded()  # the import before this one may have loaded a native pool
        if name not in _PATCHES or name in _patched_modules:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _LoadedThenPatched(spec.loader, name)
                return spec
        return None


_finder = _PatchOnImport()


def install(static=False):
    """Patches the pools and waits of this process, now for the modules already
    imported and at import for the others. Idempotent."""
    global _static
    _static = static
    if _finder in sys.meta_path:
        return
    sys.meta_path.insert(0, _finder)
    if _threadpools.REGION_HOOKS:
        _patch_extension_loader()
    for name in _PATCHES:
        module = sys.modules.get(name)
        if module is not None:
            _patch_module(name, module)
