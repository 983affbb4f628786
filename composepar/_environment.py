"""The environment a launched program starts with: native pool sizes and wait policies.

OpenMP, BLAS, numexpr and numba read these variables once, when the library
is loaded, so the launcher sets them before the program (or anything it
imports) can load one; the launcher itself loads no BLAS.

Thread counts are set to the *capacity*, not to 1 or to a fair share. The
capacity is the most one process can ever be granted, so it is the right size
for the runtime pools: a task running alone can grow to the whole budget, and
numba, whose pool can never grow past NUMBA_NUM_THREADS, is not capped below
it. A smaller start value would cap tasks for good; a larger one (the runtimes'
own default, the core count) would let a pool the hooks do not reach run more
threads than the budget. The hooks then lower each pool to its task's budget
at run time.

Wait policies make idle runtime threads sleep soon instead of spinning for
a while (200 ms by default for Intel's OpenMP): a spinning thread burns a core
the budget has already handed to someone else. MKL_DYNAMIC=FALSE stops MKL
from quietly using fewer threads than it is told (at most the physical cores).

A variable the user already set (non-empty) is kept as it is.
"""

import os

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
}


def set_thread_environment(capacity, environ=None):
    """Sets the variables above in `environ` (default os.environ) where they
    are unset or empty. Returns {name: value} of those it set."""
    environ = os.environ if environ is None else environ
    wanted = dict.fromkeys(THREAD_COUNT_VARIABLES, str(capacity))
    wanted.update(WAIT_POLICY_VARIABLES)
    set_now = {}
    for name, value in wanted.items():
        if not environ.get(name):
            environ[name] = value
            set_now[name] = value
    return set_now
