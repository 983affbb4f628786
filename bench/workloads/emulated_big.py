"""(6) Emulating a big machine: Pool(2) eigh tasks whose OpenBLAS was told to run k x C threads.

Three workloads, k = 4, 16 and 32 threads per core: on 2 cores 8, 32 and 64
threads per worker, as a Pool(2) on a 64-core box whose libraries start 256,
1024 or 2048 each. The count is forced by threadpoolctl in the pool initializer,
*after* the mode's own setting (a library that sets its thread count when it is
loaded in the worker): the static modes' environment and the threadpoolctl
mode's limit are overridden, while composepar sets the budget again at every
task start and must win.

OpenBLAS clamps the count at its build's MAX_THREADS (64 in NumPy's wheels:
threadpool_limits(128) leaves threadpool_info() at 64), so the 32x workload
from 4 cores and the 16x one from 8 run 64 threads, not k x C. params()
records the count OpenBLAS keeps as "blas_threads"; the description shows it.
"""

import multiprocessing

import threadpoolctl

from . import _common

DESCRIPTION = ("Pool(2), inner threads forced to {forced_threads} (OpenBLAS keeps {blas_threads}): "
               "eigh of {tasks} {size}x{size} matrices")
LAUNCHES_OWN_PROGRAMS = False


def _openblas_threads_accepted(requested):
    """The thread count OpenBLAS keeps when told `requested` (it clamps at its MAX_THREADS)."""
    with threadpoolctl.threadpool_limits(requested, user_api="blas"):
        counts = [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
    return min(counts, default=requested)


# Tiny on purpose: each of eigh's many BLAS calls pays a round of the scheduler
# through every spinning OpenBLAS thread, so the oversubscribed modes run 10x
# to 100x slower than composepar and their runs bound the suite's length. The
# sizes put those runs at about 1.5 s on 2 cores (0.3 to 0.8 s with --quick): the
# more threads are forced, the smaller the matrices.
def _params(cores, quick, threads_per_core, size, quick_size):
    forced = threads_per_core * cores
    return {"workers": 2, "tasks": (1 if quick else 2) * cores, "size": quick_size if quick else size,
            "forced_threads": forced, "blas_threads": _openblas_threads_accepted(forced)}


def params_4x(cores, quick):
    return _params(cores, quick, 4, size=100, quick_size=64)


def params_16x(cores, quick):
    return _params(cores, quick, 16, size=56, quick_size=40)


def params_32x(cores, quick):
    return _params(cores, quick, 32, size=48, quick_size=32)


VARIANTS = {"emulated_4x_cores": params_4x, "emulated_16x_cores": params_16x, "emulated_32x_cores": params_32x}


def _initializer(forced_threads):
    _common.worker_initializer()
    threadpoolctl.threadpool_limits(forced_threads)  # "the library was told 8"


def tasks(p):
    return [(_common.eigh_check, (seed, p["size"])) for seed in range(p["tasks"])]


def run(p):
    with multiprocessing.Pool(p["workers"], initializer=_initializer, initargs=(p["forced_threads"],)) as pool:
        results = pool.starmap(_common.eigh_check, [(seed, p["size"]) for seed in range(p["tasks"])])
    _common.verify_traces(results, "emulated_big")
