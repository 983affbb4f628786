"""(2) Balanced eig in processes: Pool(C) maps np.linalg.eig over larger matrices."""

import multiprocessing

from . import _common

NAME = "eig_processes"
DESCRIPTION = "Pool(C) maps eig over {tasks} random {size}x{size} matrices"
LAUNCHES_OWN_PROGRAMS = False


def params(cores, quick):
    if quick:
        return {"workers": cores, "tasks": 4 * cores, "size": 384}
    return {"workers": cores, "tasks": 8 * cores, "size": 512}


def tasks(p):
    return [(_common.eig_check, (seed, p["size"])) for seed in range(p["tasks"])]


def run(p):
    with multiprocessing.Pool(p["workers"], initializer=_common.worker_initializer) as pool:
        results = pool.starmap(_common.eig_check, [(seed, p["size"]) for seed in range(p["tasks"])])
    _common.verify_traces(results, NAME)
