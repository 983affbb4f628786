"""joblib's Parallel on the loky backend, run as the mode says.

    default, static-env, tbb, composepar   Parallel(n_jobs) under parallel_config(backend="loky")
    joblib-inner     the same with inner_max_num_threads = BENCH_JOBLIB_INNER (max(1, C // P))
    threadpoolctl    each task first applies the limit, once per worker process

Left alone, loky sets OMP/OPENBLAS/MKL_NUM_THREADS = cpu_count() // n_jobs in
the workers it starts, unless the parent's environment sets them: that is part
of what users get, so the workloads keep it (under composepar the launcher has
set them to the capacity, and its hooks lower them per task).
"""

import os

import joblib

from . import _common


def joblib_inner_threads():
    """The joblib-inner mode's inner_max_num_threads; None in the other modes."""
    threads = os.environ.get("BENCH_JOBLIB_INNER")
    return int(threads) if threads else None


def _call(fn, args):
    _common.limit_once_in_process()
    return fn(*args)


def run_parallel(calls, n_jobs):
    """Runs the (fn, args) pairs with Parallel(n_jobs) on loky; returns their results in order."""
    with joblib.parallel_config(backend="loky", inner_max_num_threads=joblib_inner_threads()):
        return joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(_call)(fn, args) for fn, args in calls)
