"""(5) Balanced eig in processes with joblib: Parallel(n_jobs=C) on loky maps eig over larger matrices.

eig_processes with joblib instead of multiprocessing.Pool: the same tasks, but
loky's workers start with *_NUM_THREADS = cpu_count() // n_jobs unless the
parent set them, so "default" is already a static split here.
"""

from . import _common, _joblib

NAME = "eig_joblib"
DESCRIPTION = "joblib Parallel(n_jobs=C), loky, maps eig over {tasks} random {size}x{size} matrices"
LAUNCHES_OWN_PROGRAMS = False
EXTRA_MODES = ("joblib-inner",)


def params(cores, quick):
    if quick:
        return {"workers": cores, "tasks": 2 * cores, "size": 256}
    return {"workers": cores, "tasks": 4 * cores, "size": 448}


def tasks(p):
    return [(_common.eig_check, (seed, p["size"])) for seed in range(p["tasks"])]


def run(p):
    results = _joblib.run_parallel(tasks(p), n_jobs=p["workers"])
    _common.verify_traces(results, NAME)
