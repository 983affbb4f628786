"""The suite's workloads, in the order the runner runs them (the issue's numbering).

Each workload exposes:
    NAME, DESCRIPTION            the key and a line formatted with the params
    LAUNCHES_OWN_PROGRAMS        True when run() starts its own programs (then the
                                 runner starts it with plain python and the
                                 workload applies the mode to each program)
    params(cores, quick) -> dict sizes scaled by --cores; "workers" = outer parallelism
    tasks(params) -> [(fn, args)] the tasks, for the physical limit (each run alone, 1 thread)
    run(params) -> None          runs the workload once in this process; raises if a result is wrong
and optionally:
    EXTRA_MODES                  modes run only for the workloads that list them
                                 ("joblib-inner", "omp-passive")
    prepare(params) -> None      called once in the runner before the workload's runs
                                 (builds a C kernel); idempotent, fast when done

A module is one workload, or several listed in its VARIANTS (name -> params
function), each wrapped in a _variant.Variant.
"""

from . import (dask_qr, eig_joblib, eig_processes, eig_threads, emulated_big, independent, long_tail, numpy_dl,
               omp_regions)
from ._variant import Variant

_MODULES = (
    eig_threads,    # 1
    eig_processes,  # 2
    dask_qr,        # 3: dask_qr, dask_qr_unbalanced
    numpy_dl,       # 4
    eig_joblib,     # 5
    long_tail,      # 5
    emulated_big,   # 6: emulated_4x_cores, emulated_16x_cores, emulated_32x_cores
    omp_regions,    # 7: omp_pool2, omp_pool4, omp_one_busy
    independent,    # 8
)


def _workloads(module):
    variants = getattr(module, "VARIANTS", None)
    if variants is None:
        return [module]
    return [Variant(module, name, params) for name, params in variants.items()]


WORKLOADS = {workload.NAME: workload for module in _MODULES for workload in _workloads(module)}
