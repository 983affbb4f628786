"""threadpoolctl keeps OpenBLAS single-threaded in every worker, set once by the Pool's initializer."""

import multiprocessing

import numpy as np
from threadpoolctl import threadpool_limits

from _probe import blas_threads, report, symmetric

_limits = None  # the worker's limit, kept for the worker's life


def single_threaded_blas():
    global _limits
    _limits = threadpool_limits(limits=1, user_api="blas")


def task(seed, steps):
    observed, total = [], 0.0
    for step in range(steps):
        total += np.linalg.eigh(symmetric(160, seed * 100 + step))[0].sum()
        observed.append(blas_threads())
    return total, max(observed)


if __name__ == "__main__":
    with multiprocessing.Pool(2, initializer=single_threaded_blas) as pool:
        # A short task beside a long one: the long one runs alone once the short one is done.
        results = pool.starmap(task, [(0, 2), (1, 40)], chunksize=1)
        results.append(pool.apply(task, (2, 12)))  # a lone task: the only one running
    print(f"eigenvalue sum {sum(total for total, _ in results):.6g}")
    report("blas_in_limit", (threads for _, threads in results))
