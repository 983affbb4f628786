"""(6) Emulating a big machine: Pool(2) eigh tasks whose OpenBLAS was told to run 4 x C threads.

On 2 cores that is 8 threads per worker: 8 busy threads per core, as a Pool(2)
on a 64-core box whose libraries start 256 each. The count is forced by
threadpoolctl in the pool initializer, *after* the mode's own setting (a library
that sets its thread count when it is loaded in the worker): the static modes'
environment and the threadpoolctl mode's limit are overridden, while composepar
sets the budget again at every task start and must win.
"""

import multiprocessing

import threadpoolctl

from . import _common

NAME = "emulated_big"
DESCRIPTION = "Pool(2), inner threads forced to {forced_threads}: eigh of {tasks} {size}x{size} matrices"
LAUNCHES_OWN_PROGRAMS = False
FORCED_THREADS_PER_CORE = 4


# Small on purpose: with 16 spinning OpenBLAS threads on 2 cores an eigh(400)
# takes about 6 s instead of 15 ms (each of its many BLAS calls pays a round of
# the scheduler), so the oversubscribed modes bound the suite's length.
def params(cores, quick):
    forced = FORCED_THREADS_PER_CORE * cores
    if quick:
        return {"workers": 2, "tasks": 2 * cores, "size": 100, "forced_threads": forced}
    return {"workers": 2, "tasks": 4 * cores, "size": 200, "forced_threads": forced}


def _initializer(forced_threads):
    _common.worker_initializer()
    threadpoolctl.threadpool_limits(forced_threads)  # "the library was told 8"


def tasks(p):
    return [(_common.eigh_check, (seed, p["size"])) for seed in range(p["tasks"])]


def run(p):
    with multiprocessing.Pool(p["workers"], initializer=_initializer, initargs=(p["forced_threads"],)) as pool:
        results = pool.starmap(_common.eigh_check, [(seed, p["size"]) for seed in range(p["tasks"])])
    _common.verify_traces(results, NAME)
