"""The parent runs OpenBLAS (its threads start), then forks a Pool whose tasks run OpenBLAS too."""

import multiprocessing

import numpy as np

from _probe import blas_threads, report, symmetric


def task(seed):
    observed, total = [], 0.0
    for step in range(3):
        total += np.linalg.eigh(symmetric(160, seed * 100 + step))[0].sum()
        observed.append(blas_threads())
    return total, max(observed)


if __name__ == "__main__":
    before = sum(np.linalg.eigh(symmetric(300, seed))[0].sum() for seed in range(2))
    report("blas_parent", blas_threads())
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(task, range(4), chunksize=1)
    after = np.linalg.eigh(symmetric(300, 7))[0].sum()
    print(f"eigenvalue sums {before:.6g} {sum(total for total, _ in results):.6g} {after:.6g}")
    report("blas_forked_tasks", (threads for _, threads in results))
