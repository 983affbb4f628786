"""The parent imports numba and never runs a parallel function; forked pool workers run a prange kernel.

The threading layer comes from NUMBA_THREADING_LAYER (the tests run `omp` and `tbb`). Inside the
region, each iteration records which numba thread ran it and numba's thread count there.
"""

import concurrent.futures
import multiprocessing

import numba
import numpy as np


@numba.njit(parallel=True)
def team(ids, sizes, sums):
    for i in numba.prange(ids.size):
        ids[i] = numba.get_thread_id()
        sizes[i] = numba.get_num_threads()
        for k in range(2_000):
            sums[i] += (i * k) % 7


def task(n):
    ids, sizes, sums = np.empty(n, np.int64), np.empty(n, np.int64), np.zeros(n)
    team(ids, sizes, sums)
    return len(set(ids.tolist())), int(sizes.max()), int(sums.sum()), numba.threading_layer()


def summary(how, results):
    print(f"{how}: sums {[total for _, _, total, _ in results]}, layers {sorted({r[3] for r in results})}")
    # Which threads ran iterations depends on scheduling (TBB steals work): not compared between runs,
    # only checked against the team size numba reported inside the same region.
    within = all(distinct <= size for distinct, size, _, _ in results)
    print(f"{how}: threads that ran iterations within the region's team size: {within}")
    print(f"THREADS {how}_num_threads_in_region {max(r[1] for r in results)}")


if __name__ == "__main__":
    fork = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=fork) as executor:
        summary("executor", list(executor.map(task, [4000, 4001, 4002])))
    with fork.Pool(2, maxtasksperchild=1) as pool:
        summary("pool", pool.map(task, [4000, 4001, 4002], chunksize=1))
