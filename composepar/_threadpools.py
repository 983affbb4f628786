"""Setting the thread count of every native pool loaded in this process.

BLAS and OpenMP runtimes are found and driven through threadpoolctl: one
cached ``ThreadpoolController``, rescanned only when a shared object was
loaded or unloaded since the last look. numba and torch are
driven when imported, oneTBB (``global_control``) when libtbb is loaded.

Two kinds of pools::

    per thread   OpenMP (libgomp, libiomp, libomp), MKL (thread-local setter),
                 OpenBLAS built with OpenMP, numba
                 -> set in the thread that runs the task, to its budget
    per process  OpenBLAS with pthreads, BLIS, FlexiBLAS, torch, TBB
                 -> one value for all threads of the process: the smallest
                    budget of the tasks running in it, so no task's calls
                    run more threads than it was granted

OpenBLAS reads its count at every call, so changing the per-process value
while a task runs takes effect at the task's next BLAS call.

Start-up cost. Importing threadpoolctl (with the dataclasses and typing it
imports) takes ~17 ms, and ctypes ~3 ms: every launched program would pay
them at its first line. So a scan first reads the loaded objects' names and
imports threadpoolctl only if one could be a pool it knows; ctypes is
imported only to drive TBB.
"""

import os
import sys
import threading

from ._native import _arbiter as _native

__all__ = ["NativePools", "native_pools"]

_PER_THREAD_APIS = {"openmp", "mkl"}

# File name prefixes of the libraries threadpoolctl's controllers look for
# (its filename_prefixes: OpenBLAS, SciPy's OpenBLAS, BLIS, FlexiBLAS, MKL,
# and the OpenMP runtimes). Only a filter: a name matching one of them means
# "ask threadpoolctl", which has the last word.
_POOL_LIBRARY_PREFIXES = ("libopenblas", "libscipy_openblas", "libblas", "libblis", "libflexiblas", "libmkl_rt",
                          "libgomp", "libiomp", "libomp")


class _LibraryPool:
    """One loaded library's pool and how to set it."""

    __slots__ = ("name", "per_thread", "_controller", "_set")

    def __init__(self, controller):
        self._controller = controller  # threadpoolctl.LibController
        self.name = f"{controller.internal_api} ({controller.filepath})"
        threading_layer = getattr(controller, "threading_layer", None)
        self.per_thread = controller.internal_api in _PER_THREAD_APIS or threading_layer == "openmp"
        self._set = controller.set_num_threads
        clear = getattr(type(controller), "clear_controlling_thread", None)
        if clear is not None and not self.per_thread:
            # threadpoolctl lets one Python thread own OpenBLAS's shared
            # pool; we serialise the setting ourselves (NativePools.lock).
            def set_any_thread(n, clear=clear, set_=controller.set_num_threads):
                clear(force=True)
                set_(n)

            self._set = set_any_thread

    def get(self):
        return self._controller.get_num_threads()

    def set(self, n):
        self._set(n)


class NativePools:
    """The native pools of this process, found lazily and kept up to date."""

    def __init__(self):
        self.lock = threading.RLock()  # guards the fields below and per-process settings
        self._objects_seen = -1  # loaded_objects_generation() at the last scan
        self._libraries = []  # _LibraryPool for each BLAS/OpenMP library found
        self._process_threads = None  # the per-process value last applied
        self._has_tbb = False  # libtbb among the loaded objects at the last scan
        # Whether _libraries holds a per-process / a per-thread pool (asked at
        # every task start and end: computed once per scan).
        self._any_process_library = False
        self._any_per_thread_library = False

    def libraries(self):
        """The pools found, rescanning only if a library was loaded since the last look."""
        generation = _native.loaded_objects_generation()
        if generation != self._objects_seen:
            with self.lock:
                if generation != self._objects_seen:
                    names = _loaded_library_names()
                    self._libraries = _find_pools(names)
                    self._any_process_library = any(not library.per_thread for library in self._libraries)
                    self._any_per_thread_library = any(library.per_thread for library in self._libraries)
                    self._has_tbb = any("/libtbb.so" in name for name in names)
                    self._objects_seen = generation
                    self._process_threads = None  # new libraries: apply again
        return self._libraries

    def has_process_pools(self):
        """True if some pool here is set per process (OpenBLAS pthreads, BLIS, torch, TBB)."""
        self.libraries()
        return self._any_process_library or self._has_tbb or "torch" in sys.modules

    def has_per_thread_pools(self):
        self.libraries()
        return self._any_per_thread_library or "numba" in sys.modules

    def set_thread_budget(self, threads):
        """Applies `threads` to the per-thread pools, in the calling thread."""
        libraries = self.libraries()
        if self._any_per_thread_library:
            for library in libraries:
                if library.per_thread:
                    library.set(threads)
        numba = sys.modules.get("numba")
        if numba is not None and hasattr(numba, "set_num_threads"):
            try:
                numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
            except Exception:  # noqa: BLE001 - numba not initialised its threading layer yet
                pass

    def set_process_budget(self, threads):
        """Applies `threads` to the per-process pools (no-op if unchanged)."""
        with self.lock:
            libraries = self.libraries()
            if threads == self._process_threads:
                return
            for library in libraries:
                if not library.per_thread:
                    library.set(threads)
            torch = sys.modules.get("torch")
            if torch is not None and hasattr(torch, "set_num_threads"):
                torch.set_num_threads(threads)
            if self._has_tbb:
                _tbb_control.limit(threads)
            self._process_threads = threads

    def snapshot(self, per_thread=True):
        """The thread counts of the pools now (per-process ones only if not
        `per_thread`; per-thread ones are the calling thread's), for restore()."""
        with self.lock:
            return [(library, library.get()) for library in self.libraries() if per_thread or not library.per_thread]

    def restore(self, saved):
        """Puts the pools back as snapshot() found them."""
        with self.lock:
            for library, threads in saved:
                if threads is not None:
                    library.set(threads)
            self._process_threads = None  # set behind our back: the next budget is applied anew

    def describe(self):
        """One line per pool found: for --verbose."""
        lines = [f"{lib.name}: {'per thread' if lib.per_thread else 'per process'}, {lib.get()} threads"
                 for lib in self.libraries()]
        for module in ("numba", "torch"):
            if module in sys.modules:
                lines.append(f"{module}: loaded")
        if self._has_tbb:
            lines.append("tbb: global_control(max_allowed_parallelism)")
        return lines


def _find_pools(library_names):
    """A _LibraryPool per pool threadpoolctl finds, if any of the loaded
    `library_names` may be one (see _POOL_LIBRARY_PREFIXES)."""
    if "threadpoolctl" not in sys.modules and not any(
            os.path.basename(name).startswith(_POOL_LIBRARY_PREFIXES) for name in library_names):
        return []
    import threadpoolctl

    return [_LibraryPool(c) for c in threadpoolctl.ThreadpoolController().lib_controllers]


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
        self.current = None  # the live control_type instance

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


def _load_tbb():
    import ctypes

    paths = [name for name in _loaded_library_names() if "/libtbb.so" in name]
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


def _loaded_library_names():
    try:
        with open("/proc/self/maps") as maps:
            return {line.rsplit(None, 1)[-1] for line in maps if ".so" in line}
    except OSError:
        return set()


native_pools = NativePools()  # the process's one instance


def _new_lock_in_child():
    native_pools.lock = threading.RLock()


# Held across fork, so a child never inherits it locked by a thread (the
# refresher) that does not exist there.
os.register_at_fork(before=native_pools.lock.acquire, after_in_parent=native_pools.lock.release,
                    after_in_child=_new_lock_in_child)
