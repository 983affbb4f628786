"""(1) Balanced eig in threads: ThreadPool(C) maps np.linalg.eig over many 256x256 matrices.

The pool takes no initializer and is used through map() only, because under
`python -m tbb` ThreadPool is tbb.pool.Pool, which has neither initializer nor
starmap. The threadpoolctl mode's limit is applied once in this process before
the pool starts: OpenBLAS's thread count is per process, shared by the threads.
"""

from multiprocessing.pool import ThreadPool

from . import _common

NAME = "eig_threads"
DESCRIPTION = "ThreadPool(C) maps eig over {tasks} random {size}x{size} matrices"
LAUNCHES_OWN_PROGRAMS = False


def params(cores, quick):
    return {"workers": cores, "tasks": (16 if quick else 48) * cores, "size": 256}


def tasks(p):
    return [(_common.eig_check, (seed, p["size"])) for seed in range(p["tasks"])]


def _eig_item(item):
    return _common.eig_check(*item)


def run(p):
    _common.worker_initializer()
    with ThreadPool(p["workers"]) as pool:
        results = pool.map(_eig_item, [(seed, p["size"]) for seed in range(p["tasks"])])
    _common.verify_traces(results, NAME)
