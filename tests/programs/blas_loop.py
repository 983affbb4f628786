"""A plain loop of eigh in the main thread (run under `taskset -c 0` by the tests)."""

import os

import numpy as np

from _probe import blas_threads, report, symmetric

if __name__ == "__main__":
    observed, total = [], 0.0
    for seed in range(30):
        total += np.linalg.eigh(symmetric(160, seed))[0].sum()
        observed.append(blas_threads())
    print(f"eigenvalue sum {total:.6g}")
    print(f"cpus {len(os.sched_getaffinity(0))}")
    report("blas", observed)
