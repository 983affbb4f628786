"""What every workload shares: the mode's knobs, read from the environment.

The runner (bench/run.py) starts each run in a fresh process and says how
through these variables; a workload reads them only here:

    BENCH_MODE              the mode's name (default, static-env, threadpoolctl, ...)
    BENCH_CORES             the cores the suite was told to use (--cores)
    BENCH_THREADPOOLCTL     threadpoolctl mode only: the limit each pool worker sets
    BENCH_DOMAIN            composepar modes: the domain, for workloads that
                            launch their own programs (independent)
"""

import os

import numpy as np


def mode():
    return os.environ.get("BENCH_MODE", "default")


def cores():
    return int(os.environ.get("BENCH_CORES") or os.cpu_count())


def worker_initializer():
    """Pool initializer: the threadpoolctl mode's per-worker limit, nothing otherwise."""
    limit = os.environ.get("BENCH_THREADPOOLCTL")
    if limit:
        import threadpoolctl

        # Not a context manager: the limit stays for the worker's life.
        threadpoolctl.threadpool_limits(int(limit))


def random_matrix(seed, size, symmetric=False):
    a = np.random.default_rng(seed).random((size, size))
    return a + a.T if symmetric else a


def eig_check(seed, size):
    """eig of a random matrix; returns (sum of eigenvalues, trace) for the caller to compare."""
    a = random_matrix(seed, size)
    w = np.linalg.eig(a)[0]
    return complex(w.sum()), float(np.trace(a))


def eigh_check(seed, size):
    """eigh of a random symmetric matrix; returns (sum of eigenvalues, trace)."""
    a = random_matrix(seed, size, symmetric=True)
    w = np.linalg.eigh(a)[0]
    return float(w.sum()), float(np.trace(a))


def verify_traces(results, what):
    """Raises AssertionError unless every eigenvalue sum matches its matrix's trace."""
    bad = [i for i, (total, trace) in enumerate(results)
           if abs(total.imag if isinstance(total, complex) else 0.0) > 1e-6 * max(1.0, abs(trace))
           or not np.isclose(total.real if isinstance(total, complex) else total, trace, rtol=1e-8, atol=1e-8)]
    if bad:
        raise AssertionError(f"{what}: {len(bad)} of {len(results)} results wrong (first: task {bad[0]})")
