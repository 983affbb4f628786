"""What every workload shares: the mode's knobs, read from the environment.

The runner (bench/run.py) starts each run in a fresh process and says how
through these variables; a workload reads them only here:

    BENCH_MODE              the mode's name (default, static-env, threadpoolctl, ...)
    BENCH_CORES             the cores the suite was told to use (--cores)
    BENCH_THREADPOOLCTL     threadpoolctl mode only: the limit each pool worker sets
    BENCH_JOBLIB_INNER      joblib-inner mode only: joblib's inner_max_num_threads
                            (read by _joblib.py)
    BENCH_DOMAIN            composepar modes: the domain, for workloads that
                            launch their own programs (independent)

The tbb, tbb-ipc and omp-passive modes need nothing from a workload that runs in
the runner's child: the child is started under `python -m tbb [--ipc]`, or with
OMP_WAIT_POLICY=passive in its environment.
"""

import os

import numpy as np


def mode():
    return os.environ.get("BENCH_MODE", "default")


def cores():
    return int(os.environ.get("BENCH_CORES") or os.cpu_count())


def threadpoolctl_limit():
    """The threadpoolctl mode's per-worker thread limit; None in the other modes."""
    limit = os.environ.get("BENCH_THREADPOOLCTL")
    return int(limit) if limit else None


def worker_initializer():
    """Pool initializer: the threadpoolctl mode's per-worker limit, nothing otherwise.

    It limits the libraries loaded when it runs: a worker that loads one later
    (a ctypes kernel) must load it before calling this.
    """
    limit = threadpoolctl_limit()
    if limit:
        import threadpoolctl

        # Not a context manager: the limit stays for the worker's life.
        threadpoolctl.threadpool_limits(limit)


_limited_in_this_process = False  # limit_once_in_process() has run in this process


def limit_once_in_process():
    """worker_initializer() for process pools that take none (loky), called by each task.

    Only the first call in a process applies the limit; the later ones cost a
    global's read. (Thread pools need no such thing: OpenBLAS's count is per
    process, so their workloads call worker_initializer() once before the pool.)
    """
    global _limited_in_this_process
    if not _limited_in_this_process:
        worker_initializer()
        _limited_in_this_process = True


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
