"""The environment a launched program starts with: native pool sizes and wait policies.

OpenMP, BLAS, numexpr and numba read these variables once, when the library
is loaded, so the launcher sets them before the program (or anything it
imports) can load one; the launcher itself loads no BLAS.

Thread counts are set only where the budget is below the CPUs of the
affinity mask (``-n`` smaller than them, or a cgroup quota): there they keep
pools the hooks do not reach within the budget. Elsewhere they are left
unset: OpenBLAS, OpenMP, MKL and numba size their pools by the affinity
mask, so their own default is then at most the budget, and
engines that set these variables in their workers only where they are unset
(Dask's nanny ``pre-spawn-environ``, joblib/loky's ``cpus // n_jobs``, Ray's
``OMP_NUM_THREADS``) keep their own limits, which composepar then treats as
the program's ceilings (_threadpools). Exporting the capacity there made
each Dask worker's tasks run 2 BLAS threads where plain python runs 1.

Wait policies make idle runtime threads sleep soon instead of spinning for
a while (200 ms by default for Intel's OpenMP): a spinning thread burns a core
the budget has already handed to someone else. MKL_DYNAMIC=FALSE stops MKL
from quietly using fewer threads than it is told (at most the physical cores).

A variable the user already set (non-empty) is kept as it is.
"""

import os

from ._cpus import affinity_cpus

__all__ = ["THREAD_COUNT_VARIABLES", "WAIT_POLICY_VARIABLES", "set_thread_environment"]

THREAD_COUNT_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)

WAIT_POLICY_VARIABLES = {
    "KMP_BLOCKTIME": "0",  # Intel/LLVM OpenMP: sleep as soon as idle
    # GNU OpenMP: spin ~10,000 rounds (tens of microseconds), then sleep. Not
    # OMP_WAIT_POLICY=PASSIVE: with the budget already keeping the thread
    # counts at the cores, sleeping at once only adds a wake-up to every
    # parallel region (a lone process with 20,000 short regions ran 2.4x
    # slower with it, bench/run.py's omp_one_busy), while a short spin still
    # frees the core soon after a budget shrinks.
    "GOMP_SPINCOUNT": "10000",
    "MKL_DYNAMIC": "FALSE",  # MKL: use the thread count it is given
    # OpenBLAS (pthreads): an idle helper thread spins 2**N cycles before it
    # sleeps; the default N=28 is ~0.1 s. Setting a pool's count in a forked
    # child (what every task start does) re-creates OpenBLAS's helpers there,
    # and each then spun ~0.1 s on a core the budget had given to another
    # task: +11% on a balanced Pool(2) of eigh(256) against the static split
    # (bench/profile_balanced.py). 2**24 cycles (a few ms) keeps the spin
    # between back-to-back calls of one task (no loss on a lone eigh loop).
    "OPENBLAS_THREAD_TIMEOUT": "24",
}


def set_thread_environment(threads, environ=None, runtime_default=None):
    """Sets the variables above in `environ` (default os.environ) where they
    are unset or empty: the thread counts to `threads` (the most one process
    of the budget may run) only if that is below `runtime_default` (default
    the CPUs of the affinity mask, what the runtimes size their pools by),
    the wait policies always. Returns {name: value} of those it set."""
    environ = os.environ if environ is None else environ
    if runtime_default is None:
        runtime_default = len(affinity_cpus())
    wanted = dict.fromkeys(THREAD_COUNT_VARIABLES, str(threads)) if threads < runtime_default else {}
    wanted.update(WAIT_POLICY_VARIABLES)
    set_now = {}
    for name, value in wanted.items():
        if not environ.get(name):
            environ[name] = value
            set_now[name] = value
    return set_now
