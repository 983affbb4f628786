"""An unchanged program for test_launched_pools.py: numba prange inside pool tasks.

    python -m composepar -n 4 numba_pool.py

Prints one JSON line: per task, numba's thread count inside it and the budget composepar set.
"""

import json
import multiprocessing

import numba


@numba.njit(parallel=True, cache=False)
def total(n):
    s = 0.0
    for i in numba.prange(n):
        s += i
    return s


def task(_):
    from composepar import _task  # reading the budget only; the program itself never imports composepar

    total(100_000)
    return numba.get_num_threads(), _task.current_budget()


if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(task, range(6), chunksize=1)
        lone = pool.apply(task, (0,))
    print(json.dumps({"results": results, "lone": lone}))
