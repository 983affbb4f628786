"""threadpoolctl keeps OpenBLAS single-threaded around a loop of eigh, from the main thread."""

import numpy as np
from threadpoolctl import threadpool_limits

from _probe import blas_threads, report, symmetric

if __name__ == "__main__":
    observed, total = [], 0.0
    with threadpool_limits(limits=1, user_api="blas"):
        for seed in range(30):
            total += np.linalg.eigh(symmetric(160, seed))[0].sum()
            observed.append(blas_threads())
    print(f"eigenvalue sum {total:.6g}")
    report("blas_in_limit", observed)
