"""joblib nested Parallel: loky processes, each running a threading Parallel of eigh tasks."""

import numpy as np
from joblib import Parallel, delayed

from _probe import blas_threads, report, symmetric


def inner(seed):
    total = sum(np.linalg.eigh(symmetric(160, seed * 10 + step))[0].sum() for step in range(3))
    return total, blas_threads()


def outer(seed):
    return Parallel(n_jobs=2, prefer="threads")(delayed(inner)(seed * 10 + i) for i in range(2))


if __name__ == "__main__":
    results = [r for batch in Parallel(n_jobs=2)(delayed(outer)(seed) for seed in range(4)) for r in batch]
    print(f"eigenvalue sum {sum(total for total, _ in results):.6g}")
    report("blas_in_inner_task", (threads for _, threads in results))
