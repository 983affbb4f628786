"""What the programs here read of their native pools, and how they report it.

A program prints its results on stdout; a line `THREADS <what> <n>` is a thread count it observed
(test_two_ways.py compares those as launcher <= plain, the rest of stdout for equality).
"""

from threadpoolctl import threadpool_info


def blas_threads():
    """The largest thread count of the BLAS libraries loaded in this process, as they report it now."""
    return max(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")


def openmp_threads():
    """The largest thread count of the OpenMP runtimes loaded in this process (0: none loaded)."""
    return max((lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "openmp"), default=0)


def report(what, counts):
    """Prints the largest of `counts` (an int or an iterable of ints) as a THREADS line."""
    print(f"THREADS {what} {max(counts) if not isinstance(counts, int) else counts}", flush=True)


def symmetric(n, seed):
    """A reproducible symmetric n x n matrix whose eigenvalues sum to a known trace."""
    import numpy as np

    a = np.random.default_rng(seed).standard_normal((n, n))
    return a + a.T
