"""Nested parallelism, unchanged: a process pool whose tasks call NumPy's LAPACK.

Each of the pool's workers gets an OpenBLAS that starts one thread per core,
so a Pool(C) on C cores runs C x C busy threads. Run it plainly and under
composepar to compare:

    python examples/nested_eigh.py
    python -m composepar examples/nested_eigh.py
"""

import argparse
import multiprocessing
import os
import time

import numpy as np


def task(seed, size):
    a = np.random.default_rng(seed).random((size, size))
    return float(np.linalg.eigh(a + a.T)[0][0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="matrices to decompose (default 200)")
    parser.add_argument("--size", type=int, default=256, help="matrix order (default 256)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="pool size (default: CPUs)")
    args = parser.parse_args()
    start = time.perf_counter()
    with multiprocessing.Pool(args.workers) as pool:
        pool.starmap(task, [(seed, args.size) for seed in range(args.tasks)])
    print(f"{args.tasks} x eigh({args.size}) on Pool({args.workers}): {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
