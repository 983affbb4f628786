"""The suite's workloads, one module each, in the order the runner runs them.

Each module exposes:
    NAME, DESCRIPTION            the key and a line formatted with the params
    LAUNCHES_OWN_PROGRAMS        True when run() starts its own programs (then the
                                 runner starts it with plain python and the
                                 workload applies the mode to each program)
    params(cores, quick) -> dict sizes scaled by --cores; "workers" = outer parallelism
    tasks(params) -> [(fn, args)] the tasks, for the physical limit (each run alone, 1 thread)
    run(params) -> None          runs the workload once in this process; raises if a result is wrong
"""

from . import eig_processes, eig_threads, emulated_big, independent, long_tail

WORKLOADS = {module.NAME: module for module in (eig_threads, eig_processes, long_tail, emulated_big, independent)}
