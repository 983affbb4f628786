"""Setting the thread count of every native pool loaded in this process.

BLAS and OpenMP runtimes are found and driven through threadpoolctl: its
controllers are made again only when the loaded libraries that may be pools
changed since the last look ("Scan cost" below). numba is driven once its threading
layer has started, oneTBB (``global_control``) when libtbb is loaded.

Two kinds of pools::

    per thread   OpenMP (libgomp, libiomp, libomp: the calling thread's
                 nthreads ICV), OpenBLAS built with OpenMP, numba
                 -> set in the thread that runs the task, to its budget
    per process  OpenBLAS with pthreads, BLIS, FlexiBLAS, MKL (threadpoolctl
                 drives MKL's global setter), TBB
                 -> one value for all threads of the process: the smallest
                    budget of the tasks running in it, so no task's calls
                    run more threads than it was granted

torch needs nothing of its own: its intra-op pool is an OpenMP team (the
libgomp its wheel bundles, found by threadpoolctl) sized by the calling
thread's ICV.

The program's own settings are ceilings (never undone)::

    program value   what the pool held when composepar last found it
                    unchanged by composepar: its value at load (from
                    *_NUM_THREADS, so an engine's OMP_NUM_THREADS=1 counts),
                    or the program's own last call (threadpool_limits,
                    omp_set_num_threads, numba.set_num_threads, ...)
    applied         what composepar set and has not put back; None while
                    the pool holds the program's value

    apply(budget):  current != applied  ->  the program changed it: it is
                                            the new program value
                    set min(budget, program value)
    restore():      current == applied  ->  put the program value back
                    (if the program changed it meanwhile, its value stays)

threadpoolctl 3.8 lets one "controlling thread" set a pthreads OpenBLAS
and ignores every other thread (OpenBLASController, "Thread pool size can
only be set by a single thread"). composepar never takes that role: it sets
OpenBLAS through the library's own setter, and only while no thread of the
program holds it, under threadpoolctl's own lock, so a program thread
cannot claim the pool between composepar's read and its write.

composepar never starts a runtime the program has not started: numba's
pool is set only once numba launched it (and then at once, from the launch,
in the launching thread). A pthreads OpenBLAS stops its helper
threads at every fork, in both processes, and starts them again at the next
threaded call or the next call to its setter, whatever the count set. So a
forked pool worker that inherited 2 threads and gets a budget of 1 would
restart a helper just to be told to use none, and the helper spins on a
core (OPENBLAS_THREAD_TIMEOUT: the launcher's 24 is ~8 ms) that a
balanced pool's sibling needs: most of what a balanced fork pool lost to
plain python (bench omp_pool2, eig_processes). So a fork that starts a pool
worker (in a pool_worker_forks() block, opened by the launcher's hooks)
first sets such a pool to one thread, the floor of any budget: the worker
inherits 1, and only a task whose budget is larger calls the setter, which
it then needs. When the process's last block ends, after_worker_forks()
(set by _task) gives the parent its budget back: at the follower's next
round if a task runs, at the resume of a waiting one, at once (the
program's values) if no scope is open. A worker
keeps its per-process pools between tasks (_task) so that a restart
happens once.

Scan cost. A scan runs at a task start or a follower round after any
library was loaded, and an import-heavy program loads hundreds (every
Python extension module is one: dask's import loads ~80). So a scan first
reads the loaded objects' names from the dynamic loader (one pass, no
file: /proc/self/maps took ~8 ms to read in a process holding large
arrays) and asks threadpoolctl again only if the libraries that may be
pools changed; a Python extension module costs a set comparison.

Start-up cost. Importing threadpoolctl (with the dataclasses and typing it
imports) takes ~11-17 ms, and ctypes ~3 ms: every launched program would
pay them at its first line. So threadpoolctl is imported only once a
loaded library could be a pool it knows; ctypes only to drive TBB. A
process that forks imports threadpoolctl once, before its first fork: a
forked pool worker that loads a pool (a kernel in its initializer, a lazy
import in its first task) then finds it ready instead of each worker
importing it on its own core at the start of its first task (~10 ms each).
"""

import os
import sys
import threading

from ._native import _arbiter as _native

__all__ = ["NativePools", "native_pools"]

# Pools whose threadpoolctl setter acts on the calling thread only.
_PER_THREAD_APIS = {"openmp"}
# The region hooks redirect GOT slots: written for these targets' relocations (regions.cpp).
# COMPOSEPAR_NO_REGION_HOOKS=1 turns them off (the launcher rejects other values than 0 and 1).
REGION_HOOKS = os.uname().machine in ("x86_64", "aarch64") and os.environ.get("COMPOSEPAR_NO_REGION_HOOKS") != "1"

# File name prefixes of the libraries threadpoolctl's controllers look for
# (its filename_prefixes: OpenBLAS, SciPy's OpenBLAS, BLIS, FlexiBLAS, MKL,
# and the OpenMP runtimes). Only a filter: a name matching one of them means
# "ask threadpoolctl", which has the last word.
_POOL_LIBRARY_PREFIXES = ("libopenblas", "libscipy_openblas", "libblas", "libblis", "libflexiblas", "libmkl_rt",
                          "libgomp", "libiomp", "libomp", "libtbb.so")


class _Setting:
    """What composepar did to one pool, for one thread (per-thread pools) or the process."""

    __slots__ = ("program", "applied")

    def __init__(self):
        self.program = None  # the program's own count: composepar's ceiling for the pool
        self.applied = None  # what composepar set and has not put back; None: the pool holds the program's value


class _Pool:
    """A native pool and how to read and set it. Subclasses give get/set."""

    __slots__ = ("key", "name", "per_thread")

    # A pthreads OpenBLAS: fork stops its helper threads, and the first call
    # to its setter in either process starts them again (see the module doc).
    restarts_after_fork = False
    # A GNU OpenMP runtime whose callers' parallel regions go through the
    # region hooks (_native/regions.hpp): it follows a task's budget at every
    # region, mid-task, not only at the task's start.
    follows_by_region = False

    def get(self):
        """The pool's count now (the calling thread's, per thread), or None if not started."""
        raise NotImplementedError

    def set(self, n):
        raise NotImplementedError

    def program_holds(self):
        """A context manager; entered, its value is True while the program holds the pool
        (composepar must neither read nor write it then)."""
        return _NOT_HELD

    def apply(self, setting, budget):
        """Sets the pool to min(budget, the program's value); see the module doc."""
        with self.program_holds() as held:
            if held:
                return  # `applied` is kept: what the program puts back at its end is ours
            current = self.get()
            if current is None:
                return
            if setting.applied is None or current != setting.applied:
                setting.program = current  # its load-time value, or the program's own last call
            target = max(1, min(budget, setting.program))
            if target != current:
                self.set(target)
                current = self.get()  # as the library clamped it, so that it is not taken for the program's
            setting.applied = current

    def restore(self, setting):
        """Puts the program's value back, unless the program changed the pool since."""
        if setting.applied is None:
            return
        with self.program_holds() as held:
            if held:
                return
            if setting.program != setting.applied and self.get() == setting.applied:
                self.set(setting.program)
            setting.applied = None


class _NotHeld:
    def __enter__(self):
        return False

    def __exit__(self, *exc_info):
        return None


_NOT_HELD = _NotHeld()


class _LibraryPool(_Pool):
    """One loaded library that threadpoolctl controls."""

    __slots__ = ("_controller", "_set", "_held", "restarts_after_fork", "follows_by_region", "runtime")

    def __init__(self, controller):
        self._controller = controller  # threadpoolctl.LibController
        self.key = (controller.internal_api, controller.filepath)
        self.name = f"{controller.internal_api} ({controller.filepath})"
        threading_layer = getattr(controller, "threading_layer", None)
        self.per_thread = controller.internal_api in _PER_THREAD_APIS or (
            controller.internal_api == "openblas" and threading_layer == "openmp")
        # threadpoolctl >= 3.8: OpenBLAS with pthreads has a controlling
        # thread; its set_num_threads is a no-op in every other thread, so
        # composepar calls the library's setter itself (_real_set_num_threads)
        # and leaves the controlling thread to the program.
        self._held = _NOT_HELD  # program_holds()'s context manager
        self._set = controller.set_num_threads
        if not self.per_thread and controller.internal_api == "openblas":
            real_set = getattr(controller, "_real_set_num_threads", None)
            state = getattr(type(controller), "_SHARED_STATE", None)
            if real_set is not None and state is not None:
                self._set = real_set
                self._held = _OpenBLASControl(state)
        self.restarts_after_fork = not self.per_thread and controller.internal_api == "openblas"
        # threadpoolctl names OpenMP runtimes by file name prefix (a kernel
        # called libomp_*.so passes for LLVM's libomp); what counts is the
        # runtime its omp_* calls reach: one ICV per thread and runtime,
        # whatever the number of files that reach it (see _rescan).
        self.runtime = (os.path.realpath(_native.openmp_runtime(controller.filepath) or controller.filepath)
                        if controller.internal_api == "openmp" else None)
        self.follows_by_region = (REGION_HOOKS and self.runtime is not None
                                  and "libgomp" in os.path.basename(self.runtime))

    def get(self):
        return self._controller.get_num_threads()

    def set(self, n):
        self._set(n)

    def program_holds(self):
        return self._held


class _OpenBLASControl:
    """threadpoolctl's OpenBLAS lock, held while composepar reads and sets the
    pool; entered, True if a live program thread controls the pool. A thread
    claims control only under this lock, so none can between our check and set."""

    __slots__ = ("_state",)

    def __init__(self, state):
        self._state = state  # threadpoolctl's OpenBLASController._SHARED_STATE

    def __enter__(self):
        self._state.lock.acquire()
        thread = self._state.controlling_thread
        return thread is not None and thread.is_alive()

    def __exit__(self, *exc_info):
        self._state.lock.release()


class _NumbaPool(_Pool):
    """numba's threading layer: numba.set_num_threads is per thread. Read and
    set only once the layer is launched: numba's get/set would launch it,
    and a launched OpenMP or TBB layer makes the process unsafe to fork."""

    __slots__ = ("_parallel",)

    def __init__(self, parallel):
        self._parallel = parallel  # numba.np.ufunc.parallel
        self.key = ("numba", "")
        self.name = "numba (threading layer)"
        self.per_thread = True
        watch_numba_launch(parallel)

    def get(self):
        if not self._parallel._is_initialized:
            return None
        return self._parallel.get_num_threads()

    def set(self, n):
        self._parallel.set_num_threads(n)  # n <= the program's value <= NUMBA_NUM_THREADS (apply)


def watch_numba_launch(parallel):
    """Patches numba's _launch_threads (its first parallel call, or a
    numba.get/set_num_threads, starts the layer) so that the pool gets the
    launching thread's budget at once, not from the next task. Idempotent."""
    original = parallel._launch_threads
    if getattr(original, "_composepar_original", None) is not None:
        return

    def launch_threads():
        started = parallel._is_initialized
        original()
        if not started and parallel._is_initialized:
            native_pools.reapply_thread()

    launch_threads._composepar_original = original
    parallel._launch_threads = launch_threads


class _TbbPool(_Pool):
    """oneTBB's global_control(max_allowed_parallelism). TBB obeys the smallest
    of all live controls, so a control of the program's own stays a ceiling;
    composepar's is destroyed when no task runs (restore)."""

    __slots__ = ()

    def __init__(self):
        self.key = ("tbb", "")
        self.name = "tbb: global_control(max_allowed_parallelism)"
        self.per_thread = False

    def apply(self, setting, budget):
        if setting.applied != budget:
            _tbb_control.limit(budget)
            setting.applied = budget

    def restore(self, setting):
        if setting.applied is not None:
            _tbb_control.release()
            setting.applied = None

    def get(self):
        return None


class _ThreadSettings(threading.local):
    def __init__(self):
        self.settings = {}  # pool key -> _Setting, for this thread's per-thread pools


class NativePools:
    """The native pools of this process, found lazily and kept up to date."""

    def __init__(self):
        self.lock = threading.RLock()  # guards the fields below and per-process settings
        self._objects_seen = -1  # loaded_objects_generation() at the last scan
        self._candidates = None  # the loaded libraries that may be pools, at the last scan (_pool_candidates)
        # (loaded_objects_generation(), _pool_candidates()) as last read from the loader: one tuple, replaced whole
        self._loaded = (-1, frozenset())
        self._pools = []  # a _Pool for each pool found
        self._process_settings = {}  # pool key -> _Setting, for per-process pools
        self._thread = _ThreadSettings()
        # Whether _pools holds a per-process / a per-thread pool (asked at
        # every task start and end: computed once per scan).
        self._any_process_pool = False
        self._any_per_thread_pool = False
        self._any_region_pool = False  # a GNU OpenMP pool follows by region (_Pool.follows_by_region)
        self._per_thread_pools_follow = True  # every per-thread pool does (vacuously true without one)
        self._numba_seen = False  # numba's pool was in sys.modules at the last scan
        # Open pool_worker_forks() blocks in this process (>= 0): while > 0,
        # the pools that restart after fork are held at one thread.
        self.fork_floor_holds = 0
        # Sets the calling thread's pools to its task's budget again, as at the
        # task's start (set by _task, which also keeps the region hooks'
        # bookkeeping straight around it); nothing outside a task.
        self.reapply_thread = lambda: None
        # Called when the process's last pool_worker_forks() block exits, to
        # give the lowered pools their budget again (set by _task: it knows
        # the scopes; with none, the program's values come back at once).
        self.after_worker_forks = self.restore_process

    def pools(self):
        """The pools found, rescanning only if a library was loaded since the last look."""
        generation = _native.loaded_objects_generation()
        numba_now = _numba_parallel() is not None
        if generation != self._objects_seen or numba_now != self._numba_seen:
            with self.lock:
                if generation != self._objects_seen or numba_now != self._numba_seen:
                    self._rescan()
        return self._pools

    def _rescan(self):
        """Finds the pools again if the loaded libraries that may be pools
        changed (most loads are a Python extension module: then nothing is
        redone), or numba's module came or went. Under self.lock."""
        generation, candidates = self._loaded_candidates()
        # Every load may bring a caller of GNU OpenMP (a kernel, an extension
        # module), not only a new runtime: redirect its regions now.
        self._redirect_regions(candidates)
        parallel = _numba_parallel()
        if candidates != self._candidates or (parallel is not None) != self._numba_seen:
            pools = _one_per_openmp_runtime([_LibraryPool(c) for c in _find_controllers(candidates)])
            if any(os.path.basename(name).startswith("libtbb.so") for name in candidates):
                pools.append(_TbbPool())
            if parallel is not None:
                pools.append(_NumbaPool(parallel))
            self._pools = pools
            self._any_process_pool = any(not pool.per_thread for pool in pools)
            self._any_per_thread_pool = any(pool.per_thread for pool in pools)
            self._any_region_pool = any(pool.follows_by_region for pool in pools)
            self._per_thread_pools_follow = all(pool.follows_by_region for pool in pools if pool.per_thread)
            self._candidates = candidates
            self._numba_seen = parallel is not None
        self._objects_seen = generation

    def has_process_pools(self):
        """True if some pool here is set per process (OpenBLAS pthreads, BLIS, MKL, TBB)."""
        self.pools()
        return self._any_process_pool

    def _loaded_candidates(self):
        """(generation, the loaded libraries that may be pools): the loader's
        names are read again only if a library was loaded since the last look."""
        loaded = self._loaded
        if _native.loaded_objects_generation() != loaded[0]:
            generation, names = _native.loaded_object_names()
            loaded = self._loaded = (generation, _pool_candidates(map(os.fsdecode, names)))
        return loaded

    def has_pool_candidates(self):
        """True if a loaded library may be a native pool (no threadpoolctl
        call: the loader's names against its prefixes). One loader call when
        nothing was loaded since the last look."""
        return bool(self._loaded_candidates()[1])

    def follows_mid_task(self):
        """True if a task's lease is worth following between its start and end:
        a per-process pool is loaded (set at every refresh), a GNU OpenMP pool
        (its regions follow the budget: region hooks), or no pool yet (the task
        may load one). False while every pool loaded is a per-thread one that
        follows at task starts only (numba, LLVM's and Intel's OpenMP)."""
        pools = self.pools()
        return not pools or self._any_process_pool or self._any_region_pool

    def library_loaded(self):
        """The program loaded a library (ctypes, an extension module: the
        launcher's hooks call this): a caller of GNU OpenMP among its objects
        gets its regions redirected before its first one, mid-task included."""
        self._redirect_regions(self._loaded_candidates()[1])

    def _redirect_regions(self, candidates):
        """Redirects the GNU OpenMP regions of the objects loaded since the
        last call (regions.hpp), if a libgomp is among the loaded `candidates`.
        O(1) when nothing was loaded since."""
        if REGION_HOOKS and any("libgomp" in os.path.basename(name) for name in candidates):
            with self.lock:  # held across fork: no child inherits the hooks' own lock taken
                _native.install_region_hooks()

    def per_thread_pools_follow(self):
        """True if every per-thread pool loaded follows the budget mid-task
        (by region), so that a task whose team was set above 1 can still be
        shrunk: the next region is smaller."""
        self.pools()
        return self._per_thread_pools_follow

    def region_ceiling(self):
        """The program's own value of the calling thread's GNU OpenMP pools
        (the smallest, as last applied in this thread); 0 if not known yet."""
        settings = self._thread.settings
        values = [settings[pool.key].program for pool in self.pools()
                  if pool.follows_by_region and pool.key in settings and settings[pool.key].program]
        return min(values) if values else 0

    def most_threads(self):
        """The most threads a task of the calling thread could run in the pools
        loaded now: the largest program value (the ceiling composepar keeps,
        see the module doc) over them; None if none is loaded, one has not
        started (it would take any budget), or the program holds one now
        (its value then is a temporary one). An int >= 1.

        Under self.lock, like every read of a pool and its setting: the
        lock is held across fork, so no thread of ours is inside
        threadpoolctl's OpenBLAS lock when a child is made, and no apply
        runs between this read of a pool and of its setting."""
        with self.lock:
            pools = self.pools()
            if not pools:
                return None
            most = 1
            for pool in pools:
                settings = self._thread.settings if pool.per_thread else self._process_settings
                with pool.program_holds() as held:
                    if held:
                        return None
                    current = pool.get()
                    setting = settings.get(pool.key)
                    if current is None:
                        return None
                    if setting is None or setting.applied is None or current != setting.applied:
                        program = current  # the program's own value
                    else:
                        program = setting.program  # composepar's value is in the pool: the program's is kept
                most = max(most, program)
            return most

    def set_thread_budget(self, threads):
        """Applies `threads` to the per-thread pools, in the calling thread.
        Returns True if there is one (it may hold at most `threads` now)."""
        pools = self.pools()
        if not self._any_per_thread_pool:
            return False
        settings = self._thread.settings
        for pool in pools:
            if pool.per_thread:
                pool.apply(_setting_of(settings, pool), threads)
        return True

    def restore_thread(self):
        """Puts the calling thread's per-thread pools back to the program's values."""
        settings = self._thread.settings
        if not settings:
            return
        for pool in self.pools():
            setting = settings.get(pool.key)
            if pool.per_thread and setting is not None:
                pool.restore(setting)

    def set_process_budget(self, threads):
        """Applies `threads` to the per-process pools. Each pool is read first
        (one library call): the program may have set it since."""
        with self.lock:
            for pool in self.pools():
                if not pool.per_thread:
                    floor = self.fork_floor_holds and pool.restarts_after_fork
                    pool.apply(_setting_of(self._process_settings, pool), 1 if floor else threads)

    def lower_before_worker_fork(self):
        """Before a pool worker is forked (pool_worker_forks): the pools that restart their threads
        after fork (a pthreads OpenBLAS) go to one thread, the floor of any
        budget, so that the worker inherits 1 and only a task whose budget is
        larger calls the setter that restarts the threads; see the module doc.
        The program's value stays the ceiling (`program`), as at any apply."""
        with self.lock:
            for pool in self.pools():
                if pool.restarts_after_fork:
                    pool.apply(_setting_of(self._process_settings, pool), 1)

    def restore_process(self):
        """Puts the per-process pools back to the program's values (no task
        runs), but for those held at one thread by an open pool_worker_forks()."""
        with self.lock:
            for pool in self.pools():
                setting = self._process_settings.get(pool.key)
                if not pool.per_thread and setting is not None:
                    if self.fork_floor_holds and pool.restarts_after_fork:
                        pool.apply(setting, 1)
                    else:
                        pool.restore(setting)

    def describe(self):
        """One line per pool found: for --verbose."""
        lines = []
        for pool in self.pools():
            kind = "per thread" if pool.per_thread else "per process"
            count = pool.get()
            lines.append(f"{pool.name}: {kind}" + (f", {count} threads" if count is not None else ""))
        return lines


def _setting_of(settings, pool):
    """`pool`'s _Setting in `settings` (a thread's or the process's), made on first use."""
    setting = settings.get(pool.key)
    if setting is None:
        setting = settings[pool.key] = _Setting()
    return setting


def _numba_parallel():
    """numba's threading-layer module, once imported (None before, and while
    another thread is still importing it: importlib marks such a module's
    spec `_initializing`, and its names are not all there yet)."""
    module = sys.modules.get("numba.np.ufunc.parallel")
    if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
        return None
    return module


def _pool_candidates(names):
    """The `names` (loaded objects' paths) that may be a pool: threadpoolctl's
    file name prefixes (its own list once imported, with any controller the
    program registered), and libtbb. A frozenset, compared between scans."""
    prefixes = _POOL_LIBRARY_PREFIXES
    threadpoolctl = sys.modules.get("threadpoolctl")
    if threadpoolctl is not None:
        prefixes = prefixes + tuple(getattr(threadpoolctl, "_ALL_PREFIXES", ()))  # private in 3.8: read only
    return frozenset(name for name in names if os.path.basename(name).startswith(prefixes))


def _one_per_openmp_runtime(pools):
    """One pool per OpenMP runtime: two files that reach the same runtime
    (threadpoolctl finds a libomp_*.so kernel beside the libgomp it links)
    share its ICV, and a second apply would read the first one's value as the
    program's. The runtime's own file is kept, else the first."""
    kept, by_runtime = [], {}
    for pool in pools:
        runtime = getattr(pool, "runtime", None)
        if runtime is None:
            kept.append(pool)
            continue
        other = by_runtime.get(runtime)
        if other is None:
            by_runtime[runtime] = pool
            kept.append(pool)
        elif os.path.realpath(pool._controller.filepath) == runtime:
            kept[kept.index(other)] = by_runtime[runtime] = pool
    return kept


def _find_controllers(candidates):
    """threadpoolctl's controllers, if any of the loaded libraries may be one
    of its pools (`candidates`, see _pool_candidates)."""
    if not any(not os.path.basename(name).startswith("libtbb.so") for name in candidates):
        return []
    import threadpoolctl

    # threadpoolctl makes a controller for each candidate path, exactly as its
    # own scan does (_make_controller_from_path: its prefixes, its library
    # checks, its cache of loaded libraries), but from the loader's names we
    # already hold: its own scan reads /proc/self/maps on Linux (~7 ms in a
    # process with SciPy loaded, before every pool's first fork). Another
    # threadpoolctl without these two methods gets its own scan.
    controller_type = threadpoolctl.ThreadpoolController
    if not (hasattr(controller_type, "_from_controllers") and hasattr(controller_type, "_make_controller_from_path")):
        return controller_type().lib_controllers
    controller = controller_type._from_controllers([])
    for path in sorted(candidates):
        controller._make_controller_from_path(path)
    return controller.lib_controllers


def _global_control_type():
    """oneTBB's d1::global_control (oneTBB 2021+), passed to r1::create/destroy."""
    import ctypes

    class _GlobalControl(ctypes.Structure):
        _fields_ = [("value", ctypes.c_size_t), ("reserved", ctypes.c_ssize_t), ("parameter", ctypes.c_int)]

    return _GlobalControl


_MAX_ALLOWED_PARALLELISM = 0  # d1::global_control::max_allowed_parallelism
_TBB_CREATE = "_ZN3tbb6detail2r16createERNS0_2d114global_controlE"
_TBB_DESTROY = "_ZN3tbb6detail2r17destroyERNS0_2d114global_controlE"


class _TbbControl:
    """oneTBB's global_control(max_allowed_parallelism), through libtbb's exported r1 entry points.

    TBB keeps a pointer to the control object until destroy(), so the live
    one is held here; a change creates the new control, then destroys the old.
    """

    def __init__(self):
        self.library = None  # ctypes.CDLL of the loaded libtbb, False if unusable
        self.control_type = None  # the global_control structure, made with the library
        self.current = None  # the live control_type instance, or None

    def limit(self, threads):
        if self.library is None:
            self.library = _load_tbb()
            self.control_type = _global_control_type() if self.library else None
        if not self.library:
            return
        import ctypes

        control = self.control_type(threads, 0, _MAX_ALLOWED_PARALLELISM)
        getattr(self.library, _TBB_CREATE)(ctypes.byref(control))
        previous, self.current = self.current, control
        if previous is not None:
            getattr(self.library, _TBB_DESTROY)(ctypes.byref(previous))

    def release(self):
        """Destroys composepar's control: TBB follows the program's own controls alone."""
        previous, self.current = self.current, None
        if previous is not None and self.library:
            import ctypes

            getattr(self.library, _TBB_DESTROY)(ctypes.byref(previous))


def _load_tbb():
    import ctypes

    paths = [name for name in native_pools._loaded_candidates()[1] if os.path.basename(name).startswith("libtbb.so")]
    for path in paths:
        try:
            library = ctypes.CDLL(path)
            getattr(library, _TBB_CREATE)
            getattr(library, _TBB_DESTROY)
            return library
        except (OSError, AttributeError):
            continue
    return False


_tbb_control = _TbbControl()


native_pools = NativePools()  # the process's one instance


class _Forking(threading.local):
    depth = 0  # open pool_worker_forks() blocks of this thread


_forking = _Forking()


class pool_worker_forks:
    """Context manager around code that forks pool workers (a fork Pool's
    constructor, a fork executor's submit, a worker's Process.start under
    fork): each fork the calling thread makes starts a worker with the pools
    that restart after fork at one thread (module doc), and until the last
    block of the process exits those pools stay at one in this process too,
    whatever thread applies a budget (the follower would otherwise raise
    them, and restart their threads, between two forks of one pool). At the
    last exit, after_worker_forks() gives them their budget back."""

    __slots__ = ("_pid",)

    def __enter__(self):
        self._pid = os.getpid()
        _forking.depth += 1
        with native_pools.lock:
            native_pools.fork_floor_holds += 1
        return self

    def __exit__(self, *exc_info):
        if os.getpid() != self._pid:
            return  # a fork child leaving the block: its counts were reset at the fork
        _forking.depth -= 1
        with native_pools.lock:
            native_pools.fork_floor_holds -= 1
            last = native_pools.fork_floor_holds == 0
        if last:
            try:
                native_pools.after_worker_forks()
            except Exception as error:  # noqa: BLE001 - the workers are started: the pool must not fail for it
                _warn_once(f"composepar: could not give the native pools their budget back after forking "
                           f"pool workers ({type(error).__name__}: {error}); they follow it from the next task")


_warned = set()  # messages of _warn_once already shown in this process


def _warn_once(message):
    if message not in _warned:
        _warned.add(message)
        import warnings

        warnings.warn(message, RuntimeWarning, stacklevel=2)


def _before_fork():
    """Runs before every os.fork() of this process (before the lock handler
    below: the interpreter takes its own fork locks after all handlers).
    Only a fork that starts a pool worker (in a pool_worker_forks() block)
    does anything: threadpoolctl is imported once, before the first such
    fork (module doc, "Start-up cost"), a plain import; then the pools that
    restart after fork go to one thread."""
    if not _forking.depth:
        return  # a plain fork costs what it costs in plain python
    if "threadpoolctl" not in sys.modules:
        try:
            import threadpoolctl  # noqa: F401
        except ImportError:  # an install without it: the scan says so where it needs it
            pass
    try:
        native_pools.lower_before_worker_fork()
    except Exception as error:  # noqa: BLE001 - never fail the program's fork for it; say so once
        _warn_once(f"composepar: could not lower the native pools before forking a pool worker "
                   f"({type(error).__name__}: {error}); the worker may restart threads it does not use")


def _new_lock_in_child():
    native_pools.lock = threading.RLock()
    # The forking thread's blocks never exit in the child (a worker leaves
    # through os._exit): a worker's pools follow its own budgets.
    native_pools.fork_floor_holds = 0
    _forking.depth = 0


# Held across fork, so a child never inherits it locked by a thread (the
# follower) that does not exist there. Looked up at each fork (lambdas): a
# fork child replaces the lock, and its own forks must take the new one.
os.register_at_fork(before=lambda: native_pools.lock.acquire(), after_in_parent=lambda: native_pools.lock.release(),
                    after_in_child=_new_lock_in_child)
# Registered last, so it runs first (before-fork handlers run in reverse
# order): the import does not hold native_pools.lock (the lowering takes it
# as any apply does).
os.register_at_fork(before=_before_fork)
