"""Setting the thread count of every native pool loaded in this process.

BLAS and OpenMP runtimes are found and driven through threadpoolctl: one
cached ``ThreadpoolController``, rescanned only when the number of loaded
shared objects changed (a dlopen since the last look). numba, torch and
oneTBB (through tbb4py's ``global_control``) are driven when loaded.

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
"""

import sys
import threading

import threadpoolctl

from ._native import _arbiter as _native

__all__ = ["NativePools", "native_pools"]

_PER_THREAD_APIS = {"openmp", "mkl"}


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
        self._objects_seen = -1  # loaded_object_count() at the last scan
        self._libraries = []  # _LibraryPool for each BLAS/OpenMP library found
        self._process_threads = None  # the per-process value last applied
        self._has_tbb = False  # libtbb among the loaded objects at the last scan

    def libraries(self):
        """The pools found, rescanning only if a library was loaded since the last look."""
        count = _native.loaded_object_count()
        if count != self._objects_seen:
            with self.lock:
                if count != self._objects_seen:
                    self._libraries = [_LibraryPool(c) for c in threadpoolctl.ThreadpoolController().lib_controllers]
                    self._has_tbb = any("libtbb" in name for name in _loaded_library_names())
                    self._objects_seen = count
                    self._process_threads = None  # new libraries: apply again
        return self._libraries

    def has_per_thread_pools(self):
        return any(library.per_thread for library in self.libraries()) or "numba" in sys.modules

    def set_thread_budget(self, threads):
        """Applies `threads` to the per-thread pools, in the calling thread."""
        for library in self.libraries():
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
                _tbb_limit(threads)
            self._process_threads = threads

    def snapshot(self):
        """The thread counts of every pool now, for restore()."""
        with self.lock:
            return [(library, library.get()) for library in self.libraries()], self._process_threads

    def restore(self, saved):
        """Puts the pools back as snapshot() found them."""
        values, process_threads = saved
        with self.lock:
            for library, threads in values:
                if threads is not None:
                    library.set(threads)
            self._process_threads = process_threads

    def describe(self):
        """One line per pool found: for --verbose."""
        lines = [f"{lib.name}: {'per thread' if lib.per_thread else 'per process'}, {lib.get()} threads"
                 for lib in self.libraries()]
        for module in ("numba", "torch"):
            if module in sys.modules:
                lines.append(f"{module}: loaded")
        if _tbb_control.module:
            lines.append("tbb: global_control")
        return lines


class _TbbControl:
    """oneTBB's global_control(max_allowed_parallelism), through tbb4py when libtbb is loaded."""

    module = None  # the tbb module once imported; False if it cannot be
    current = None  # the live global_control object, replaced on each change


_tbb_control = _TbbControl()


def _tbb_limit(threads):
    if _tbb_control.module is None:
        try:
            import tbb  # tbb4py, shipped by the `tbb` wheel
        except ImportError:
            tbb = None
        _tbb_control.module = tbb if hasattr(tbb, "global_control") else False
    if not _tbb_control.module:
        return
    tbb = _tbb_control.module
    new = tbb.global_control(tbb.global_control.max_allowed_parallelism, threads)
    _tbb_control.current = new  # the previous control is dropped: the new limit stands


def _loaded_library_names():
    try:
        with open("/proc/self/maps") as maps:
            return {line.rsplit(None, 1)[-1] for line in maps if ".so" in line}
    except OSError:
        return set()


native_pools = NativePools()  # the process's one instance
